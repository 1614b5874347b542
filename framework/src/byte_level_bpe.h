// Internal: the byte-level BPE tokenizer that Hugging Face tokenizer files describe, as data
// (tokenizer_hf.cpp reads the files into it; tokenizer_bpe.cpp implements it).
#pragma once
#include "hooklens/tokenizer.h"
#include "text_util.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace hooklens::bpe {

// How a Split pre-tokenizer treats its matches (Hugging Face's SplitDelimiterBehavior).
enum class SplitBehavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

// One pre-tokenizer step: cuts one piece of text into pieces (empty pieces are dropped).
class PreTokenizerStep {
 public:
  virtual ~PreTokenizerStep() = default;
  virtual void split(std::string piece, std::vector<std::string>& out) const = 0;
};

// Split: the regex's matches (or, inverted, the text between them) are the delimiters.
std::unique_ptr<PreTokenizerStep> make_split_step(std::shared_ptr<const text::Regex> regex, SplitBehavior behavior,
                                                  bool invert);
// Digits: each digit alone (individual_digits), or runs of digits, apart from the rest.
std::unique_ptr<PreTokenizerStep> make_digits_step(bool individual_digits);
// ByteLevel: a space before a piece that does not start with one (add_prefix_space), then GPT-2's
// regex (use_regex). Its byte mapping is the BPE model's business.
std::unique_ptr<PreTokenizerStep> make_byte_level_step(bool add_prefix_space, bool use_regex);

// A token matched literally in the text before pre-tokenization (Hugging Face's AddedToken).
struct AddedToken {
  std::string content;
  std::int64_t id = -1;
  bool lstrip = false, rstrip = false, single_word = false;  // lstrip/rstrip: take the whitespace beside it
};

struct Config {
  std::vector<std::pair<std::string, std::int64_t>> vocab;  // byte-level symbol -> id
  std::vector<std::pair<std::string, std::string>> merges;  // in rank order
  bool ignore_merges = false;                               // a piece that is a vocabulary symbol is taken whole
  std::vector<AddedToken> added_tokens;
  std::vector<std::unique_ptr<PreTokenizerStep>> pre_tokenizer;  // applied in order, each to every piece
  std::vector<std::int64_t> prefix_ids, suffix_ids;              // the post-processor's, with add_special_tokens
  ChatConfig chat;
};

// Throws Error (without a file name: the caller adds it) when the ids are not exactly 0..N-1.
std::unique_ptr<Tokenizer> make_tokenizer(Config config);

}  // namespace hooklens::bpe

// A byte-level BPE trainer in GPT-2's manner, writing the vocab.json + merges.txt that hooklens'
// tokenizer (load_hf_tokenizer) reads for GPT-2. Text is cut by GPT-2's pre-tokenizer (the
// framework's gpt2_pre_tokenize: merges never cross its pieces), each piece starts as its bytes, and
// the most frequent adjacent pair is merged, again and again.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace hooklens::training {

struct BpeOptions {
  std::size_t merges = 1000;        // stop after this many merges...
  std::int64_t min_pair_count = 2;  // ...or when no pair occurs this often
};

// A trained vocabulary. Ids: 0..255 the single bytes in GPT-2's order (the printable ones first, as
// GPT-2's vocab.json has them), then each new symbol in the order its merge was learned, then the
// end-of-text token "<|endoftext|>" last (end_of_text_id == symbols.size() - 1).
struct BpeVocabulary {
  std::vector<std::string> symbols;                         // id -> byte-level symbol (GPT-2's byte map)
  std::vector<std::pair<std::string, std::string>> merges;  // in rank order, byte-level symbols
  std::int64_t end_of_text_id = -1;
};

// Learns merges from `documents` (valid UTF-8; the end-of-text marker is never part of them: it is
// a special token, see join_documents). Each step merges the pair occurring most often (counted over
// all pieces); ties go to the pair whose left symbol, then right symbol, has the smallest bytes, so
// the result depends only on the text. A merge whose result already is a symbol (a+bc after ab+c)
// adds a rule but no new id. Deterministic; throws UsageError for text that is not valid UTF-8.
BpeVocabulary train_bpe(const std::vector<std::string>& documents, const BpeOptions& options = {});

// Writes `dir`/vocab.json (symbol -> id, in id order) and `dir`/merges.txt ("#version: 0.2", then
// one "left right" line per merge), creating `dir`. Throws hooklens::Error when it cannot write.
void write_gpt2_tokenizer(const BpeVocabulary& vocabulary, const std::filesystem::path& dir);

}  // namespace hooklens::training

// Tokenizers: text to ids and ids back to display strings.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hooklens {

// What a Hugging Face tokenizer_config.json says about chat prompts.
struct ChatConfig {
  std::string chat_template;                          // Jinja source; empty when there is none
  std::map<std::string, std::string> special_tokens;  // "bos_token" -> "<|startoftext|>", ... (the template's variables)
  std::string missing_reason;                         // when chat_template is empty: why, for error messages
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // What Hugging Face's tokenizer(text, add_special_tokens=...)["input_ids"] gives: with
  // add_special_tokens the post-processor's tokens (e.g. a BOS) are added around the text;
  // without them (as apply_chat_template encodes, its template writing its own) they are not.
  virtual std::vector<std::int64_t> encode(std::string_view text, bool add_special_tokens) const = 0;
  std::vector<std::int64_t> encode(std::string_view text) const { return encode(text, true); }
  // The decoded text of one token: its bytes as UTF-8, each maximal ill-formed subpart replaced
  // by one U+FFFD (Python's bytes.decode('utf-8', errors='replace')). Throws UsageError for an
  // id outside the vocabulary.
  virtual std::string token_string(std::int64_t id) const = 0;
  // The decoded text of a sequence (bytes joined first, then decoded as above).
  virtual std::string decode(const std::vector<std::int64_t>& ids) const = 0;
  virtual std::int64_t vocab_size() const = 0;
  virtual std::optional<std::int64_t> token_id(std::string_view token) const = 0;
  // The chat template and special token texts that came with the tokenizer (none by default).
  virtual const ChatConfig& chat_config() const;
};

// GPT-2 byte-level BPE with special (added) tokens that are matched literally before
// pre-tokenisation, as Hugging Face's tokenizers do.
struct Gpt2BpeSpec {
  std::map<std::string, std::int64_t> vocab;                 // byte-level symbol -> id
  std::vector<std::pair<std::string, std::string>> merges;   // in rank order
  std::map<std::string, std::int64_t> special_tokens;        // literal text -> id
};
std::unique_ptr<Tokenizer> make_gpt2_bpe_tokenizer(Gpt2BpeSpec spec);

// Reads a Hugging Face tokenizer from a model directory: `tokenizer.json` if present (byte-level
// BPE with the pre-tokenizers, post-processors and added tokens that modern models ship; see
// docs/tokenizers.md), else `vocab.json` + `merges.txt`; plus `tokenizer_config.json` (added
// tokens, chat template) when present. Throws Error naming the file on anything malformed or
// unsupported, and when the directory has neither.
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::filesystem::path& model_dir);

// Reads llama2.c's tokenizer.bin of any vocabulary size (SentencePiece-style pieces with merge
// scores; bytes fall back to <0xNN> pieces where the vocabulary has them). encode adds BOS (id 1)
// and a leading space as llama2.c does. Throws Error naming the file.
std::unique_ptr<Tokenizer> read_llama2c_tokenizer(const std::filesystem::path& file);

// GPT-2's bytes-to-unicode map: the printable symbol (UTF-8) that stands for `byte` in vocab files.
std::string gpt2_byte_symbol(unsigned char byte);

// GPT-2's pre-tokenization (its split regex, no prefix space): the pieces of `text` that BPE merges
// never cross, as raw bytes, in order; they concatenate to `text`. Throws UsageError when `text`
// is not valid UTF-8. (What a BPE trainer counts pairs within.)
std::vector<std::string> gpt2_pre_tokenize(std::string_view text);

// Python's bytes.decode('utf-8', errors='replace').
std::string utf8_decode_replace(std::string_view bytes);

}  // namespace hooklens

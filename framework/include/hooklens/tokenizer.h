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

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<std::int64_t> encode(std::string_view text) const = 0;
  // The decoded text of one token: its bytes as UTF-8, each maximal ill-formed subpart replaced
  // by one U+FFFD (Python's bytes.decode('utf-8', errors='replace')). Throws UsageError for an
  // id outside the vocabulary.
  virtual std::string token_string(std::int64_t id) const = 0;
  // The decoded text of a sequence (bytes joined first, then decoded as above).
  virtual std::string decode(const std::vector<std::int64_t>& ids) const = 0;
  virtual std::int64_t vocab_size() const = 0;
  virtual std::optional<std::int64_t> token_id(std::string_view token) const = 0;
};

// GPT-2 byte-level BPE with special (added) tokens that are matched literally before
// pre-tokenisation, as Hugging Face's tokenizers do.
struct Gpt2BpeSpec {
  std::map<std::string, std::int64_t> vocab;                 // byte-level symbol -> id
  std::vector<std::pair<std::string, std::string>> merges;   // in rank order
  std::map<std::string, std::int64_t> special_tokens;        // literal text -> id
};
std::unique_ptr<Tokenizer> make_gpt2_bpe_tokenizer(Gpt2BpeSpec spec);

// Reads a Hugging Face tokenizer from a model directory: `tokenizer.json` (byte-level BPE) if
// present, else `vocab.json` + `merges.txt`. Throws Error naming the file on anything malformed,
// and when the directory has neither.
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::filesystem::path& model_dir);

// Reads llama2.c's tokenizer.bin (SentencePiece-style pieces with merge scores and <0xNN> byte
// fallback; encode adds BOS and a leading space as llama2.c does). Throws Error naming the file.
std::unique_ptr<Tokenizer> read_llama2c_tokenizer(const std::filesystem::path& file);

// GPT-2's bytes-to-unicode map: the printable symbol (UTF-8) that stands for `byte` in vocab files.
std::string gpt2_byte_symbol(unsigned char byte);

// Python's bytes.decode('utf-8', errors='replace').
std::string utf8_decode_replace(std::string_view bytes);

}  // namespace hooklens

// llama2.c's tokenizer.bin (karpathy/llama2.c): int32 max_token_length, then per token a float32
// merge score, an int32 byte length and the bytes. Files are assumed little-endian, like the host.
#include <hooklens/error.h>
#include <hooklens/tokenizer.h>

#include <fmt/format.h>

#include <array>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <unordered_map>

namespace hooklens {
namespace {

std::int32_t read_i32(const unsigned char* p) {
  std::int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

class Llama2cTokenizer final : public Tokenizer {
 public:
  Llama2cTokenizer(std::string file, std::vector<std::string> pieces, std::vector<float> scores)
      : file_(std::move(file)), pieces_(std::move(pieces)), scores_(std::move(scores)) {
    for (size_t i = 0; i < pieces_.size(); ++i) ids_.emplace(pieces_[i], std::int64_t(i));  // first id wins
    // Byte fallback only where the vocabulary has the byte's piece; a small custom vocabulary
    // may have none (llama2.c itself assumes <0xNN> is id NN + 3, true of Llama 2's 32000 only).
    byte_ids_.fill(-1);
    for (int b = 0; b < 256; ++b)
      if (auto it = ids_.find(fmt::format("<0x{:02X}>", b)); it != ids_.end()) byte_ids_[size_t(b)] = it->second;
  }

  // As llama2.c's encode(bos=add_special_tokens, eos=0): BOS, a dummy-prefix " ", each UTF-8
  // code point as a token or its bytes as <0xNN> tokens, then merges of the highest-scoring
  // adjacent pair.
  std::vector<std::int64_t> encode(std::string_view text, bool add_special_tokens) const override {
    std::vector<std::int64_t> ids;
    if (add_special_tokens) ids.push_back(kBos);
    if (!text.empty()) push_piece_or_bytes(" ", std::nullopt, ids);
    for (size_t i = 0; i < text.size();) {
      // A code point as llama2.c groups it: one byte and up to 3 following continuation bytes.
      size_t n = 1;
      while (n < 4 && i + n < text.size() && (static_cast<unsigned char>(text[i + n]) & 0xC0) == 0x80) ++n;
      push_piece_or_bytes(text.substr(i, n), i, ids);
      i += n;
    }
    merge(ids);
    return ids;
  }

  std::string token_string(std::int64_t id) const override { return utf8_decode_replace(bytes_of(id)); }

  std::string decode(const std::vector<std::int64_t>& ids) const override {
    std::string bytes;
    for (auto id : ids) bytes += bytes_of(id);
    return utf8_decode_replace(bytes);
  }

  std::int64_t vocab_size() const override { return std::int64_t(pieces_.size()); }

  std::optional<std::int64_t> token_id(std::string_view token) const override {
    auto it = ids_.find(std::string(token));
    return it == ids_.end() ? std::nullopt : std::optional<std::int64_t>(it->second);
  }

 private:
  static constexpr std::int64_t kBos = 1;

  // The piece for `chars` (text at `offset`; the dummy prefix has none), else its bytes' pieces.
  void push_piece_or_bytes(std::string_view chars, std::optional<size_t> offset, std::vector<std::int64_t>& ids) const {
    if (auto it = ids_.find(std::string(chars)); it != ids_.end()) {
      ids.push_back(it->second);
      return;
    }
    for (size_t k = 0; k < chars.size(); ++k) {
      const auto byte = static_cast<unsigned char>(chars[k]);
      if (byte_ids_[byte] < 0)
        throw UsageError(fmt::format("byte 0x{:02X} {} has no token: {} has neither its character nor <0x{:02X}>",
                                     byte,
                                     offset ? fmt::format("of the text (offset {})", *offset + k)
                                            : std::string("of the dummy-prefix space"),
                                     file_, byte));
      ids.push_back(byte_ids_[byte]);
    }
  }

  void merge(std::vector<std::int64_t>& ids) const {
    // Over the whole list, BOS included, as llama2.c does; strict > keeps the leftmost on ties.
    while (true) {
      float best_score = -1e10f;
      std::int64_t best_id = -1;
      size_t best_at = 0;
      for (size_t i = 0; i + 1 < ids.size(); ++i) {
        auto it = ids_.find(pieces_[size_t(ids[i])] + pieces_[size_t(ids[i + 1])]);
        if (it != ids_.end() && scores_[size_t(it->second)] > best_score) {
          best_score = scores_[size_t(it->second)];
          best_id = it->second;
          best_at = i;
        }
      }
      if (best_id < 0) return;
      ids[best_at] = best_id;
      ids.erase(ids.begin() + std::ptrdiff_t(best_at) + 1);
    }
  }

  // The piece's bytes, with a "<0xNN>" byte-fallback piece standing for its byte.
  std::string bytes_of(std::int64_t id) const {
    if (id < 0 || id >= vocab_size())
      throw UsageError(fmt::format("token id {} is outside the vocabulary (0..{})", id, vocab_size() - 1));
    const std::string& p = pieces_[size_t(id)];
    if (p.size() == 6 && p.compare(0, 3, "<0x") == 0 && p[5] == '>' && std::isxdigit(static_cast<unsigned char>(p[3])) &&
        std::isxdigit(static_cast<unsigned char>(p[4])))
      return std::string(1, char(std::stoi(p.substr(3, 2), nullptr, 16)));
    return p;
  }

  std::string file_;
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, std::int64_t> ids_;
  std::array<std::int64_t, 256> byte_ids_{};  // byte -> id of its <0xNN> piece, or -1
};

}  // namespace

std::unique_ptr<Tokenizer> read_llama2c_tokenizer(const std::filesystem::path& file) {
  const std::string name = file.string();
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open the llama2.c tokenizer", name));
  const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (data.size() < 4 || read_i32(reinterpret_cast<const unsigned char*>(data.data())) <= 0)
    throw Error(fmt::format("{}: not a llama2.c tokenizer (bad max_token_length)", name));
  std::vector<std::string> pieces;
  std::vector<float> scores;
  for (size_t at = 4; at < data.size();) {
    if (data.size() - at < 8) throw Error(fmt::format("{}: truncated at token {}", name, pieces.size()));
    float score;
    std::memcpy(&score, data.data() + at, 4);
    const std::int32_t len = read_i32(reinterpret_cast<const unsigned char*>(data.data() + at + 4));
    at += 8;
    if (len < 0 || size_t(len) > data.size() - at)
      throw Error(fmt::format("{}: token {} has length {} past the end of the file", name, pieces.size(), len));
    pieces.emplace_back(data, at, size_t(len));
    scores.push_back(score);
    at += size_t(len);
  }
  // llama2.c's BOS is id 1 whatever the vocabulary, so there have to be at least two tokens.
  if (pieces.size() < 2)
    throw Error(fmt::format("{}: {} token(s): too few for llama2.c, whose BOS is id 1", name, pieces.size()));
  return std::make_unique<Llama2cTokenizer>(name, std::move(pieces), std::move(scores));
}

}  // namespace hooklens

// llama2.c's tokenizer.bin (karpathy/llama2.c): int32 max_token_length, then per token a float32
// merge score, an int32 byte length and the bytes. Files are assumed little-endian, like the host.
#include <hooklens/error.h>
#include <hooklens/tokenizer.h>

#include <fmt/format.h>

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
  Llama2cTokenizer(std::vector<std::string> pieces, std::vector<float> scores)
      : pieces_(std::move(pieces)), scores_(std::move(scores)) {
    for (size_t i = 0; i < pieces_.size(); ++i) ids_.emplace(pieces_[i], std::int64_t(i));  // first id wins
  }

  // As llama2.c's encode(bos=1, eos=0): BOS, a dummy-prefix " ", each UTF-8 code point as a token or
  // its bytes as <0xNN> tokens (id byte + 3), then merges of the highest-scoring adjacent pair.
  std::vector<std::int64_t> encode(std::string_view text) const override {
    std::vector<std::int64_t> ids{kBos};
    if (!text.empty()) ids.push_back(lookup_or_byte(" "));
    for (size_t i = 0; i < text.size();) {
      // A code point as llama2.c groups it: one byte and up to 3 following continuation bytes.
      size_t n = 1;
      while (n < 4 && i + n < text.size() && (static_cast<unsigned char>(text[i + n]) & 0xC0) == 0x80) ++n;
      const std::string_view cp = text.substr(i, n);
      if (auto it = ids_.find(std::string(cp)); it != ids_.end()) {
        ids.push_back(it->second);
      } else {
        for (char c : cp) ids.push_back(std::int64_t(static_cast<unsigned char>(c)) + 3);
      }
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

  std::int64_t lookup_or_byte(const std::string& s) const {
    auto it = ids_.find(s);
    return it != ids_.end() ? it->second : std::int64_t(static_cast<unsigned char>(s[0])) + 3;
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

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, std::int64_t> ids_;
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
  if (pieces.size() < 259) throw Error(fmt::format("{}: {} tokens, fewer than the 259 of llama2.c's byte fallback", name, pieces.size()));
  return std::make_unique<Llama2cTokenizer>(std::move(pieces), std::move(scores));
}

}  // namespace hooklens

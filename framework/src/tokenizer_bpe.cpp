// GPT-2 byte-level BPE, giving the ids Hugging Face's GPT2Tokenizer (transformers 4.40) gives:
// added tokens are cut out literally first, each remaining segment is split by GPT-2's regex,
// each piece's bytes become byte-level symbols, and symbols are merged by merge rank.
#include "hooklens/error.h"
#include "hooklens/tokenizer.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <functional>
#include <mutex>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <utility>

namespace hooklens {
namespace {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Byte-level symbols

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// GPT-2's bytes-to-unicode table: printable Latin-1 bytes stand for themselves, the other 68
// bytes get the code points 256, 257, ... in byte order, so every symbol is a visible character.
const std::array<char32_t, 256>& byte_to_codepoint() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next_extra = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t[b] = printable ? static_cast<char32_t>(b) : next_extra++;
    }
    return t;
  }();
  return table;
}

// The byte a code point stands for, or -1 when it is not a byte-level symbol.
int codepoint_to_byte(char32_t cp) {
  static const std::unordered_map<char32_t, int> inverse = [] {
    std::unordered_map<char32_t, int> m;
    for (int b = 0; b < 256; ++b) m.emplace(byte_to_codepoint()[b], b);
    return m;
  }();
  const auto it = inverse.find(cp);
  return it == inverse.end() ? -1 : it->second;
}

// Reads one code point of well-formed UTF-8 at `pos`; returns its length, or 0 if ill-formed.
std::size_t read_codepoint(std::string_view s, std::size_t pos, char32_t& cp) {
  const auto lead = static_cast<unsigned char>(s[pos]);
  std::size_t len = lead < 0x80 ? 1 : lead < 0xC2 ? 0 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : lead < 0xF5 ? 4 : 0;
  if (len == 0 || pos + len > s.size()) return 0;
  // Re-encoding and comparing rejects overlongs, surrogates and bad continuation bytes at once.
  const std::string_view seq = s.substr(pos, len);
  cp = len == 1 ? lead : lead & (0x7F >> len);
  for (std::size_t i = 1; i < len; ++i) cp = (cp << 6) | (static_cast<unsigned char>(seq[i]) & 0x3F);
  if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return 0;
  std::string back;
  append_utf8(back, cp);
  return back == seq ? len : 0;
}

// The raw bytes a byte-level symbol stands for. A character outside the byte map (possible in a
// hand-made vocabulary) stands for its own UTF-8 bytes, as in tokenizers' ByteLevel decoder.
std::string symbol_to_bytes(std::string_view symbol) {
  std::string out;
  std::size_t pos = 0;
  while (pos < symbol.size()) {
    char32_t cp = 0;
    const std::size_t len = read_codepoint(symbol, pos, cp);
    if (len == 0) {  // not UTF-8 at all: keep the byte as it is
      out += symbol[pos++];
      continue;
    }
    const int b = codepoint_to_byte(cp);
    if (b >= 0)
      out += static_cast<char>(b);
    else
      out.append(symbol.substr(pos, len));
    pos += len;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Merging

// Symbols are interned as small integers so that merging compares integers, not strings.
class BpeMerger {
 public:
  BpeMerger(const std::map<std::string, std::int64_t>& vocab,
            const std::vector<std::pair<std::string, std::string>>& merges) {
    for (const auto& [symbol, id] : vocab) vocab_id_[intern(symbol)] = id;
    for (std::size_t rank = 0; rank < merges.size(); ++rank) {
      const auto& [a, b] = merges[rank];
      if (a.empty() || b.empty()) throw Error(fmt::format("merge rule {} has an empty symbol", rank));
      const std::int32_t left = intern(a), right = intern(b), result = intern(a + b);
      // A repeated rule keeps its last rank, as a Python dict (and tokenizers' HashMap) does.
      rules_[pair_key(left, right)] = Rule{static_cast<std::int32_t>(rank), result};
    }
    std::string symbol;
    for (int b = 0; b < 256; ++b) {
      symbol.clear();
      append_utf8(symbol, byte_to_codepoint()[b]);
      byte_symbol_[b] = intern(symbol);
    }
  }

  // The vocabulary ids of one pre-tokenised piece (raw bytes).
  std::vector<std::int64_t> encode_piece(std::string_view piece) const {
    std::vector<std::int64_t> ids;
    for (const std::int32_t s : merge(piece)) {
      const std::int64_t id = vocab_id_[s];
      if (id < 0)
        throw Error(fmt::format("byte-level BPE produced the symbol '{}', which is not in the vocabulary",
                                text_[s]));
      ids.push_back(id);
    }
    return ids;
  }

 private:
  struct Rule {
    std::int32_t rank;
    std::int32_t result;
  };

  static std::uint64_t pair_key(std::int32_t a, std::int32_t b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
  }

  std::int32_t intern(const std::string& symbol) {
    const auto [it, added] = index_.emplace(symbol, static_cast<std::int32_t>(text_.size()));
    if (added) {
      text_.push_back(symbol);
      vocab_id_.push_back(-1);
    }
    return it->second;
  }

  const Rule* find_rule(std::int32_t a, std::int32_t b) const {
    const auto it = rules_.find(pair_key(a, b));
    return it == rules_.end() ? nullptr : &it->second;
  }

  // Same result as GPT2Tokenizer.bpe: repeatedly take the lowest-ranked adjacent pair and merge
  // all its occurrences in one left-to-right pass. A heap of (rank, position) makes it
  // O(n log n) instead of O(n^2) per pass; pairs created during a pass have other ranks, so
  // handling all entries of one rank together reproduces the pass exactly.
  std::vector<std::int32_t> merge(std::string_view piece) const {
    const std::size_t n = piece.size();
    std::vector<std::int32_t> sym(n);
    std::vector<std::int64_t> prev(n), next(n);  // linked list over positions; -1 / n at the ends
    for (std::size_t i = 0; i < n; ++i) {
      sym[i] = byte_symbol_[static_cast<unsigned char>(piece[i])];
      prev[i] = static_cast<std::int64_t>(i) - 1;
      next[i] = static_cast<std::int64_t>(i) + 1;
    }
    using Entry = std::pair<std::int32_t, std::int64_t>;  // (rank, left position)
    std::priority_queue<Entry, std::vector<Entry>, std::greater<>> heap;
    const auto push_pair = [&](std::int64_t left) {
      if (left < 0 || next[left] >= static_cast<std::int64_t>(n)) return;
      if (const Rule* r = find_rule(sym[left], sym[next[left]])) heap.emplace(r->rank, left);
    };
    for (std::size_t i = 0; i + 1 < n; ++i) push_pair(static_cast<std::int64_t>(i));

    std::vector<char> alive(n, 1);
    std::vector<std::int64_t> positions;
    while (!heap.empty()) {
      const std::int32_t rank = heap.top().first;
      positions.clear();
      while (!heap.empty() && heap.top().first == rank) {
        positions.push_back(heap.top().second);
        heap.pop();
      }
      std::sort(positions.begin(), positions.end());
      for (const std::int64_t left : positions) {
        // Entries go stale when a neighbour merged since they were pushed.
        if (!alive[left] || next[left] >= static_cast<std::int64_t>(n)) continue;
        const std::int64_t right = next[left];
        const Rule* r = find_rule(sym[left], sym[right]);
        if (r == nullptr || r->rank != rank) continue;
        sym[left] = r->result;
        alive[right] = 0;
        next[left] = next[right];
        if (next[left] < static_cast<std::int64_t>(n)) prev[next[left]] = left;
        push_pair(prev[left]);
        push_pair(left);
      }
    }
    std::vector<std::int32_t> out;
    for (std::int64_t i = 0; i < static_cast<std::int64_t>(n); i = next[i]) out.push_back(sym[i]);
    return out;
  }

  std::unordered_map<std::string, std::int32_t> index_;
  std::vector<std::string> text_;          // interned symbol -> its text
  std::vector<std::int64_t> vocab_id_;     // interned symbol -> vocabulary id, or -1
  std::unordered_map<std::uint64_t, Rule> rules_;
  std::array<std::int32_t, 256> byte_symbol_{};
};

// ---------------------------------------------------------------------------------------------
// Pre-tokenisation

constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::string pcre2_message(int code) {
  std::array<PCRE2_UCHAR, 256> buf{};
  pcre2_get_error_message(code, buf.data(), buf.size());
  return reinterpret_cast<const char*>(buf.data());
}

// GPT-2's regex, compiled once (with JIT when available) and shared read-only between threads.
class Pretokenizer {
 public:
  Pretokenizer() {
    int err = 0;
    PCRE2_SIZE err_offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kGpt2Pattern), PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP, &err, &err_offset, nullptr);
    if (code_ == nullptr) throw Error("cannot compile the GPT-2 pre-tokenizer regex: " + pcre2_message(err));
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // an interpreter fallback is fine if JIT is missing
  }
  ~Pretokenizer() { pcre2_code_free(code_); }
  Pretokenizer(const Pretokenizer&) = delete;
  Pretokenizer& operator=(const Pretokenizer&) = delete;

  // Calls f(piece) for each regex match in `text`, which must be valid UTF-8.
  template <class F>
  void for_each_piece(std::string_view text, F&& f) const {
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
        pcre2_match_data_create_from_pattern(code_, nullptr), &pcre2_match_data_free);
    if (!md) throw Error("out of memory while pre-tokenizing");
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    PCRE2_SIZE offset = 0;
    while (offset < text.size()) {
      // The text was validated once; without NO_UTF_CHECK PCRE2 would re-check it per match.
      const int rc = pcre2_match(code_, subject, text.size(), offset, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) return;  // cannot happen: every character matches some branch
      if (rc < 0) throw Error("pre-tokenizer regex failed: " + pcre2_message(rc));
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      if (ov[1] <= ov[0]) throw Error("pre-tokenizer regex made an empty match");
      f(text.substr(ov[0], ov[1] - ov[0]));
      offset = ov[1];
    }
  }

 private:
  pcre2_code* code_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// The tokenizer

struct Segment {
  std::string_view text;
  std::int64_t special_id;  // -1 for ordinary text
};

class Gpt2BpeTokenizer final : public Tokenizer {
 public:
  explicit Gpt2BpeTokenizer(Gpt2BpeSpec spec)
      : vocab_(std::move(spec.vocab)), specials_(std::move(spec.special_tokens)), merger_(vocab_, spec.merges) {
    build_id_table();
    for (const auto& [text, id] : specials_) {
      if (text.empty()) throw Error(fmt::format("special token {} has empty text", id));
      specials_by_first_byte_[static_cast<unsigned char>(text[0])].emplace_back(text, id);
    }
    for (auto& bucket : specials_by_first_byte_)  // longest first, so the longest match wins
      std::stable_sort(bucket.begin(), bucket.end(),
                       [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  }

  std::vector<std::int64_t> encode(std::string_view text) const override {
    check_utf8(text);
    std::vector<std::int64_t> ids;
    for (const Segment& seg : split_specials(text)) {
      if (seg.special_id >= 0) {
        ids.push_back(seg.special_id);
        continue;
      }
      pretokenizer_.for_each_piece(seg.text, [&](std::string_view piece) {
        const std::vector<std::int64_t> piece_ids = encode_piece_cached(piece);
        ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
      });
    }
    return ids;
  }

  std::string token_string(std::int64_t id) const override { return utf8_decode_replace(bytes_of(id)); }

  std::string decode(const std::vector<std::int64_t>& ids) const override {
    std::string bytes;
    for (const std::int64_t id : ids) bytes += bytes_of(id);
    return utf8_decode_replace(bytes);
  }

  std::int64_t vocab_size() const override { return static_cast<std::int64_t>(id_bytes_.size()); }

  std::optional<std::int64_t> token_id(std::string_view token) const override {
    const std::string key(token);
    if (const auto it = specials_.find(key); it != specials_.end()) return it->second;
    if (const auto it = vocab_.find(key); it != vocab_.end()) return it->second;
    return std::nullopt;
  }

 private:
  // Fills id -> bytes; ids must be exactly 0..N-1 over the vocabulary and the special tokens, and
  // an id shared by a symbol and a special token must stand for the same text.
  void build_id_table() {
    std::map<std::int64_t, std::pair<std::string, bool>> by_id;  // id -> (text, is special)
    for (const auto& [symbol, id] : vocab_) {
      const auto [it, added] = by_id.emplace(id, std::make_pair(symbol, false));
      if (!added) throw Error(fmt::format("vocabulary entries '{}' and '{}' have the same id {}", it->second.first, symbol, id));
    }
    for (const auto& [text, id] : specials_) {
      const auto [it, added] = by_id.emplace(id, std::make_pair(text, true));
      if (!added && it->second.first != text)
        throw Error(fmt::format("special token '{}' has id {}, which already belongs to '{}'", text, id, it->second.first));
      it->second.second = true;
    }
    const auto count = static_cast<std::int64_t>(by_id.size());
    for (const auto& [id, entry] : by_id) {
      if (id < 0 || id >= count)
        throw Error(fmt::format("token '{}' has id {}, out of range: {} tokens need the ids 0..{}", entry.first, id,
                                count, count - 1));
    }
    id_bytes_.reserve(by_id.size());
    for (const auto& [id, entry] : by_id) id_bytes_.push_back(entry.second ? entry.first : symbol_to_bytes(entry.first));
  }

  const std::string& bytes_of(std::int64_t id) const {
    if (id < 0 || id >= vocab_size())
      throw UsageError(fmt::format("token id {} is outside the vocabulary (0..{})", id, vocab_size() - 1));
    return id_bytes_[static_cast<std::size_t>(id)];
  }

  static void check_utf8(std::string_view text) {
    // Decoding with replacement changes valid UTF-8 not at all and anything else at its first
    // ill-formed byte, so the first difference is where the problem is.
    const std::string decoded = utf8_decode_replace(text);
    if (decoded == text) return;
    const auto where = std::mismatch(text.begin(), text.end(), decoded.begin(), decoded.end()).first;
    const auto offset = static_cast<std::size_t>(where - text.begin());
    throw UsageError(fmt::format("text to tokenize is not valid UTF-8 (byte 0x{:02X} at offset {})",
                                 static_cast<unsigned char>(text[offset]), offset));
  }

  // Cuts the special tokens out of `text`: the leftmost match wins, then the longest there.
  std::vector<Segment> split_specials(std::string_view text) const {
    std::vector<Segment> out;
    std::size_t plain_start = 0, pos = 0;
    while (pos < text.size()) {
      const auto* match = longest_special_at(text, pos);
      if (match == nullptr) {
        ++pos;
        continue;
      }
      if (pos > plain_start) out.push_back({text.substr(plain_start, pos - plain_start), -1});
      out.push_back({text.substr(pos, match->first.size()), match->second});
      pos += match->first.size();
      plain_start = pos;
    }
    if (plain_start < text.size()) out.push_back({text.substr(plain_start), -1});
    return out;
  }

  const std::pair<std::string, std::int64_t>* longest_special_at(std::string_view text, std::size_t pos) const {
    for (const auto& special : specials_by_first_byte_[static_cast<unsigned char>(text[pos])])
      if (text.compare(pos, special.first.size(), special.first) == 0) return &special;
    return nullptr;
  }

  std::vector<std::int64_t> encode_piece_cached(std::string_view piece) const {
    std::string key(piece);
    {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      if (const auto it = cache_.find(key); it != cache_.end()) return it->second;
    }
    std::vector<std::int64_t> ids = merger_.encode_piece(piece);
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();  // bounds memory on endless distinct text
    cache_.emplace(std::move(key), ids);
    return ids;
  }

  static constexpr std::size_t kMaxCacheEntries = 100000;

  std::map<std::string, std::int64_t> vocab_;
  std::map<std::string, std::int64_t> specials_;
  BpeMerger merger_;
  Pretokenizer pretokenizer_;
  std::vector<std::string> id_bytes_;  // id -> raw bytes (special tokens: their text)
  std::array<std::vector<std::pair<std::string, std::int64_t>>, 256> specials_by_first_byte_;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<std::int64_t>> cache_;
};

// ---------------------------------------------------------------------------------------------
// Reading Hugging Face files

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot open {}", path.string()));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(fmt::format("cannot read {}", path.string()));
  return ss.str();
}

json read_json(const std::filesystem::path& path) {
  try {
    return json::parse(read_file(path));
  } catch (const json::exception& e) {
    throw Error(fmt::format("{}: malformed JSON: {}", path.string(), e.what()));
  }
}

std::int64_t json_id(const json& value, const std::filesystem::path& path, std::string_view what) {
  if (!value.is_number_integer())
    throw Error(fmt::format("{}: the id of {} is not an integer", path.string(), what));
  const auto id = value.get<std::int64_t>();
  if (id < 0) throw Error(fmt::format("{}: the id of {} is negative ({})", path.string(), what, id));
  return id;
}

std::map<std::string, std::int64_t> vocab_from_json(const json& j, const std::filesystem::path& path) {
  if (!j.is_object()) throw Error(fmt::format("{}: the vocabulary is not a JSON object", path.string()));
  std::map<std::string, std::int64_t> vocab;
  for (const auto& [symbol, id] : j.items()) vocab.emplace(symbol, json_id(id, path, fmt::format("'{}'", symbol)));
  return vocab;
}

// merges.txt: one "left right" rule per line in rank order, after an optional "#version" line.
std::vector<std::pair<std::string, std::string>> merges_from_txt(const std::filesystem::path& path) {
  const std::string text = read_file(path);
  std::vector<std::pair<std::string, std::string>> merges;
  std::istringstream lines(text);
  std::string line;
  for (std::size_t number = 1; std::getline(lines, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (number == 1 && line.rfind("#version", 0) == 0)) continue;
    std::istringstream fields(line);
    std::string a, b, extra;
    if (!(fields >> a >> b) || (fields >> extra))
      throw Error(fmt::format("{}: line {} is not two symbols separated by a space: '{}'", path.string(), number,
                              utf8_decode_replace(line.substr(0, 80))));
    merges.emplace_back(std::move(a), std::move(b));
  }
  return merges;
}

// tokenizer.json merges: "left right" strings (older files) or [left, right] pairs (newer files).
std::vector<std::pair<std::string, std::string>> merges_from_json(const json& j, const std::filesystem::path& path) {
  if (!j.is_array()) throw Error(fmt::format("{}: model.merges is not a list", path.string()));
  std::vector<std::pair<std::string, std::string>> merges;
  for (std::size_t i = 0; i < j.size(); ++i) {
    const json& m = j[i];
    if (m.is_string()) {
      const auto& s = m.get_ref<const std::string&>();
      const auto space = s.find(' ');
      if (space != std::string::npos && space > 0 && space + 1 < s.size() && s.find(' ', space + 1) == std::string::npos) {
        merges.emplace_back(s.substr(0, space), s.substr(space + 1));
        continue;
      }
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      continue;
    }
    throw Error(fmt::format("{}: model.merges[{}] is not two symbols ('a b' or [\"a\", \"b\"])", path.string(), i));
  }
  return merges;
}

void add_special(std::map<std::string, std::int64_t>& specials, const std::string& content, std::int64_t id,
                 const std::filesystem::path& path) {
  if (content.empty()) throw Error(fmt::format("{}: added token {} has empty content", path.string(), id));
  const auto [it, added] = specials.emplace(content, id);
  if (!added && it->second != id)
    throw Error(fmt::format("{}: added token '{}' has id {} but also id {}", path.string(), content, id, it->second));
}

std::string json_type(const json& j) {
  return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : "(none)";
}

// Only GPT-2's own ByteLevel pre-tokenizer is implemented; anything else would give other ids.
void check_byte_level(const json& pre, const std::filesystem::path& path) {
  if (json_type(pre) != "ByteLevel")
    throw Error(fmt::format("{}: unsupported pre_tokenizer '{}' (hooklens reads byte-level BPE only)", path.string(),
                            json_type(pre)));
  if (!pre.value("use_regex", true))
    throw Error(fmt::format("{}: unsupported ByteLevel pre_tokenizer without GPT-2's regex (use_regex false)", path.string()));
  if (pre.value("add_prefix_space", false))
    throw Error(fmt::format("{}: unsupported ByteLevel pre_tokenizer with add_prefix_space true", path.string()));
}

void check_supported(const json& j, const std::filesystem::path& path) {
  const json& model = j.at("model");
  if (json_type(model) != "BPE")
    throw Error(fmt::format("{}: unsupported tokenizer model type '{}' (hooklens reads byte-level BPE only)",
                            path.string(), json_type(model)));
  const auto is_set = [&](const char* key) {
    return model.contains(key) && !model[key].is_null() && model[key] != json("") && model[key] != json(false);
  };
  for (const char* key : {"dropout", "continuing_subword_prefix", "end_of_word_suffix", "ignore_merges"})
    if (is_set(key)) throw Error(fmt::format("{}: unsupported BPE option model.{}", path.string(), key));
  if (j.contains("normalizer") && !j["normalizer"].is_null())
    throw Error(fmt::format("{}: unsupported normalizer '{}'", path.string(), json_type(j["normalizer"])));

  const json pre = j.value("pre_tokenizer", json());
  if (json_type(pre) != "Sequence") return check_byte_level(pre, path);
  const json parts = pre.value("pretokenizers", json::array());
  if (!parts.is_array() || parts.size() != 1)
    throw Error(fmt::format("{}: unsupported pre_tokenizer Sequence (only a single ByteLevel is read)", path.string()));
  check_byte_level(parts[0], path);
}

Gpt2BpeSpec spec_from_tokenizer_json(const std::filesystem::path& path) {
  const json j = read_json(path);
  try {
    if (!j.is_object() || !j.contains("model") || !j["model"].is_object())
      throw Error(fmt::format("{}: no \"model\" object", path.string()));
    check_supported(j, path);
    Gpt2BpeSpec spec;
    const json& model = j["model"];
    if (!model.contains("vocab")) throw Error(fmt::format("{}: no model.vocab", path.string()));
    spec.vocab = vocab_from_json(model["vocab"], path);
    spec.merges = merges_from_json(model.value("merges", json::array()), path);
    const json added = j.value("added_tokens", json::array());
    if (!added.is_array()) throw Error(fmt::format("{}: added_tokens is not a list", path.string()));
    for (const json& t : added) {
      if (!t.is_object() || !t.contains("content") || !t["content"].is_string() || !t.contains("id"))
        throw Error(fmt::format("{}: an added token lacks \"id\" or \"content\"", path.string()));
      const auto& content = t["content"].get_ref<const std::string&>();
      add_special(spec.special_tokens, content, json_id(t["id"], path, fmt::format("'{}'", content)), path);
    }
    return spec;
  } catch (const json::exception& e) {  // a field of an unexpected type
    throw Error(fmt::format("{}: unexpected content: {}", path.string(), e.what()));
  }
}

Gpt2BpeSpec spec_from_vocab_merges(const std::filesystem::path& dir) {
  Gpt2BpeSpec spec;
  spec.vocab = vocab_from_json(read_json(dir / "vocab.json"), dir / "vocab.json");
  spec.merges = merges_from_txt(dir / "merges.txt");
  // GPT2Tokenizer's default eos/bos/unk token, matched literally like any added token.
  if (const auto it = spec.vocab.find("<|endoftext|>"); it != spec.vocab.end())
    spec.special_tokens.emplace(it->first, it->second);
  return spec;
}

// tokenizer_config.json's "added_tokens_decoder": {"50256": {"content": "<|endoftext|>", ...}}.
void add_config_tokens(Gpt2BpeSpec& spec, const std::filesystem::path& path) {
  const json j = read_json(path);
  if (!j.is_object() || !j.contains("added_tokens_decoder")) return;
  const json& decoder = j["added_tokens_decoder"];
  if (!decoder.is_object()) throw Error(fmt::format("{}: added_tokens_decoder is not an object", path.string()));
  for (const auto& [key, token] : decoder.items()) {
    std::int64_t id = -1;
    try {
      std::size_t used = 0;
      id = std::stoll(key, &used);
      if (used != key.size()) id = -1;
    } catch (const std::exception&) {
    }
    if (id < 0) throw Error(fmt::format("{}: added_tokens_decoder key '{}' is not a token id", path.string(), key));
    if (!token.is_object() || !token.contains("content") || !token["content"].is_string())
      throw Error(fmt::format("{}: added_tokens_decoder[{}] has no \"content\" string", path.string(), key));
    add_special(spec.special_tokens, token["content"].get<std::string>(), id, path);
  }
}

}  // namespace

std::unique_ptr<Tokenizer> make_gpt2_bpe_tokenizer(Gpt2BpeSpec spec) {
  return std::make_unique<Gpt2BpeTokenizer>(std::move(spec));
}

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::filesystem::path& model_dir) {
  const auto tokenizer_json = model_dir / "tokenizer.json";
  const auto vocab_json = model_dir / "vocab.json";
  const auto merges_txt = model_dir / "merges.txt";
  std::error_code ec;
  const bool use_tokenizer_json = std::filesystem::is_regular_file(tokenizer_json, ec);
  if (!use_tokenizer_json &&
      !(std::filesystem::is_regular_file(vocab_json, ec) && std::filesystem::is_regular_file(merges_txt, ec)))
    throw Error(fmt::format("no tokenizer in {}: looked for tokenizer.json, or vocab.json with merges.txt",
                            model_dir.string()));

  Gpt2BpeSpec spec = use_tokenizer_json ? spec_from_tokenizer_json(tokenizer_json) : spec_from_vocab_merges(model_dir);
  const auto config = model_dir / "tokenizer_config.json";
  if (std::filesystem::is_regular_file(config, ec)) add_config_tokens(spec, config);
  try {
    return make_gpt2_bpe_tokenizer(std::move(spec));
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", (use_tokenizer_json ? tokenizer_json : vocab_json).string(), e.what()));
  }
}

std::string gpt2_byte_symbol(unsigned char byte) {
  std::string symbol;
  append_utf8(symbol, byte_to_codepoint()[byte]);
  return symbol;
}

}  // namespace hooklens

// Byte-level BPE as Hugging Face's tokenizers run it (GPT-2, Llama-3, Qwen, LLaDA): added tokens
// are cut out literally first, each remaining segment goes through the pre-tokenizer steps in
// order (each step splits every current piece further), each piece's bytes become byte-level
// symbols, and symbols are merged by merge rank; the post-processor's ids go around the result.
#include "byte_level_bpe.h"

#include "hooklens/error.h"
#include "hooklens/message_text.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <functional>
#include <mutex>
#include <queue>
#include <unordered_map>
#include <utility>

namespace hooklens {
namespace {


// ---------------------------------------------------------------------------------------------
// Byte-level symbols

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

// The byte a code point stands for, or -1 when it is not a byte-level symbol (all are < 324).
int codepoint_to_byte(char32_t cp) {
  static const std::array<int, 512> inverse = [] {
    std::array<int, 512> m{};
    m.fill(-1);
    for (int b = 0; b < 256; ++b) m[byte_to_codepoint()[b]] = b;
    return m;
  }();
  return cp < inverse.size() ? inverse[cp] : -1;
}

// The raw bytes a byte-level symbol stands for. A character outside the byte map (possible in a
// hand-made vocabulary) stands for its own UTF-8 bytes, as in tokenizers' ByteLevel decoder.
std::string symbol_to_bytes(std::string_view symbol) {
  std::string out;
  std::size_t pos = 0;
  while (pos < symbol.size()) {
    char32_t cp = 0;
    const std::size_t len = text::read_codepoint(symbol, pos, cp);
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

const std::array<std::string, 256>& byte_symbols() {
  static const std::array<std::string, 256> symbols = [] {
    std::array<std::string, 256> s;
    for (int b = 0; b < 256; ++b) text::append_utf8(s[b], byte_to_codepoint()[b]);
    return s;
  }();
  return symbols;
}

std::string bytes_to_symbols(std::string_view bytes) {
  std::string out;
  for (const char c : bytes) out += byte_symbols()[static_cast<unsigned char>(c)];
  return out;
}

// ---------------------------------------------------------------------------------------------
// Merging

// Symbols are interned as small integers so that merging compares integers, not strings.
class BpeMerger {
 public:
  BpeMerger(const std::vector<std::pair<std::string, std::int64_t>>& vocab,
            const std::vector<std::pair<std::string, std::string>>& merges) {
    index_.reserve(vocab.size() + merges.size() / 4 + 256);
    for (const auto& [symbol, id] : vocab) vocab_id_[intern(symbol)] = id;
    rules_.reserve(merges.size());
    std::string joined;
    for (std::size_t rank = 0; rank < merges.size(); ++rank) {
      const auto& [a, b] = merges[rank];
      if (a.empty() || b.empty()) throw Error(fmt::format("merge rule {} has an empty symbol", rank));
      joined.assign(a).append(b);
      const std::int32_t left = intern(a), right = intern(b), result = intern(joined);
      // A repeated rule keeps its last rank, as a Python dict (and tokenizers' HashMap) does.
      rules_[pair_key(left, right)] = Rule{static_cast<std::int32_t>(rank), result};
    }
    for (int b = 0; b < 256; ++b) byte_symbol_[b] = intern(byte_symbols()[b]);
  }

  // The vocabulary ids of one pre-tokenised piece (raw bytes).
  std::vector<std::int64_t> encode_piece(std::string_view piece) const {
    std::vector<std::int64_t> ids;
    for (const std::int32_t s : merge(piece)) {
      const std::int64_t id = vocab_id_[s];
      if (id < 0)
        throw Error(fmt::format("byte-level BPE produced the symbol '{}', which is not in the vocabulary",
                                brief_text(text_[s])));
      ids.push_back(id);
    }
    return ids;
  }

  // The id of a vocabulary symbol (byte-level text), if it is one.
  std::optional<std::int64_t> symbol_id(const std::string& symbol) const {
    const auto it = index_.find(symbol);
    if (it == index_.end() || vocab_id_[it->second] < 0) return std::nullopt;
    return vocab_id_[it->second];
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
    // try_emplace makes no node when the symbol is there already (the usual case: 3 per merge).
    const auto [it, added] = index_.try_emplace(symbol, static_cast<std::int32_t>(text_.size()));
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

  // Same result as GPT2Tokenizer.bpe and tokenizers' BPE: repeatedly take the lowest-ranked
  // adjacent pair and merge all its occurrences left to right. A heap of (rank, position) makes
  // it O(n log n) instead of O(n^2) per pass; pairs created during a pass have other ranks, so
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
// Pre-tokenizer steps

using bpe::SplitBehavior;

constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Cuts `piece` at the regex's matches as tokenizers' NormalizedString::split does: the matches
// and the text between them cover the piece, `invert` swaps which are the delimiters, the
// behavior decides where delimiters go, and empty pieces are dropped.
void split_by_regex(const text::Regex& regex, std::string_view piece, SplitBehavior behavior, bool invert,
                    std::vector<std::string>& out) {
  struct Span {
    std::size_t start, end;
    bool is_match;
  };
  std::vector<Span> spans;
  std::size_t covered = 0;
  for (const auto& [start, end] : regex.find_all(piece)) {
    if (covered != start) spans.push_back({covered, start, false});
    spans.push_back({start, end, true});
    covered = end;
  }
  if (covered != piece.size()) spans.push_back({covered, piece.size(), false});
  if (invert)
    for (Span& s : spans) s.is_match = !s.is_match;

  std::vector<std::pair<std::size_t, std::size_t>> kept;
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::isolated:
      for (const Span& s : spans) kept.emplace_back(s.start, s.end);
      break;
    case SplitBehavior::removed:
      for (const Span& s : spans)
        if (!s.is_match) kept.emplace_back(s.start, s.end);
      break;
    case SplitBehavior::contiguous:  // runs of matches, and runs of the rest, stay together
      for (const Span& s : spans) {
        if (!kept.empty() && s.is_match == previous_match)
          kept.back().second = s.end;
        else
          kept.emplace_back(s.start, s.end);
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::merged_with_previous:  // a match joins the piece before it
      for (const Span& s : spans) {
        if (!kept.empty() && s.is_match && !previous_match)
          kept.back().second = s.end;
        else
          kept.emplace_back(s.start, s.end);
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::merged_with_next:  // a match joins the piece after it
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (!kept.empty() && it->is_match && !previous_match)
          kept.back().first = it->start;
        else
          kept.emplace_back(it->start, it->end);
        previous_match = it->is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
  }
  for (const auto& [start, end] : kept)
    if (end > start) out.emplace_back(piece.substr(start, end - start));
}

class SplitStep final : public bpe::PreTokenizerStep {
 public:
  SplitStep(std::shared_ptr<const text::Regex> regex, SplitBehavior behavior, bool invert)
      : regex_(std::move(regex)), behavior_(behavior), invert_(invert) {}
  void split(std::string piece, std::vector<std::string>& out) const override {
    split_by_regex(*regex_, piece, behavior_, invert_, out);
  }

 private:
  std::shared_ptr<const text::Regex> regex_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelStep final : public bpe::PreTokenizerStep {
 public:
  ByteLevelStep(bool add_prefix_space, bool use_regex) : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {}
  void split(std::string piece, std::vector<std::string>& out) const override {
    if (add_prefix_space_ && (piece.empty() || piece[0] != ' ')) piece.insert(0, 1, ' ');
    if (!use_regex_) {
      if (!piece.empty()) out.push_back(std::move(piece));
      return;
    }
    static const text::Regex gpt2(kGpt2Pattern);
    split_by_regex(gpt2, piece, SplitBehavior::isolated, false, out);
  }

 private:
  bool add_prefix_space_, use_regex_;
};

// ---------------------------------------------------------------------------------------------
// Added tokens

struct Segment {
  std::string_view text;
  std::int64_t added_id;  // -1 for ordinary text
};

// Whether the character before `pos` (or at it, `after`) is a regex \w character: what an added
// token with single_word must not touch.
bool word_char_beside(std::string_view text, std::size_t pos, bool after) {
  static const text::Regex word(R"(\w)");
  if (after) {
    char32_t cp = 0;
    const std::size_t len = text::read_codepoint(text, pos, cp);
    return len > 0 && word.search(text.substr(pos, len));
  }
  std::size_t start = pos;
  do --start;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80);
  return word.search(text.substr(start, pos - start));
}

// The length of the run of White_Space characters ending at `pos` (backward) or starting there.
std::size_t white_space_run(std::string_view text, std::size_t pos, bool backward) {
  std::size_t at = pos;
  if (!backward) {
    char32_t cp = 0;
    while (at < text.size()) {
      const std::size_t len = text::read_codepoint(text, at, cp);
      if (len == 0 || !text::is_white_space(cp)) break;
      at += len;
    }
    return at - pos;
  }
  while (at > 0) {
    std::size_t start = at - 1;
    while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
    char32_t cp = 0;
    if (text::read_codepoint(text, start, cp) != at - start || !text::is_white_space(cp)) break;
    at = start;
  }
  return pos - at;
}

// ---------------------------------------------------------------------------------------------
// The tokenizer

class ByteLevelBpeTokenizer final : public Tokenizer {
 public:
  explicit ByteLevelBpeTokenizer(bpe::Config config)
      : merger_(config.vocab, config.merges),
        ignore_merges_(config.ignore_merges),
        added_(std::move(config.added_tokens)),
        steps_(std::move(config.pre_tokenizer)),
        prefix_ids_(std::move(config.prefix_ids)),
        suffix_ids_(std::move(config.suffix_ids)),
        chat_(std::move(config.chat)) {
    build_id_table(config.vocab);
    for (const auto& ids : {prefix_ids_, suffix_ids_})
      for (const std::int64_t id : ids)
        if (id < 0 || id >= vocab_size())
          throw Error(fmt::format("the post-processor adds token id {}, outside the vocabulary (0..{})", id,
                                  vocab_size() - 1));
    for (std::size_t i = 0; i < added_.size(); ++i) {
      const bpe::AddedToken& t = added_[i];
      if (t.content.empty()) throw Error(fmt::format("added token {} has empty content", t.id));
      added_by_content_.emplace(t.content, t.id);
      added_by_first_byte_[static_cast<unsigned char>(t.content[0])].push_back(i);
    }
    for (auto& bucket : added_by_first_byte_)  // longest first, so the longest match wins
      std::stable_sort(bucket.begin(), bucket.end(), [&](std::size_t a, std::size_t b) {
        return added_[a].content.size() > added_[b].content.size();
      });
  }

  std::vector<std::int64_t> encode(std::string_view text, bool add_special_tokens) const override {
    check_utf8(text);
    std::vector<std::int64_t> ids;
    if (add_special_tokens) ids = prefix_ids_;
    std::vector<std::string> pieces, next;
    for (const Segment& seg : split_added(text)) {
      if (seg.added_id >= 0) {
        ids.push_back(seg.added_id);
        continue;
      }
      pieces.assign(1, std::string(seg.text));
      for (const auto& step : steps_) {
        next.clear();
        for (std::string& piece : pieces) step->split(std::move(piece), next);
        pieces.swap(next);
      }
      for (const std::string& piece : pieces) {
        const std::vector<std::int64_t> piece_ids = encode_piece_cached(piece);
        ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
      }
    }
    if (add_special_tokens) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
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
    if (const auto it = added_by_content_.find(key); it != added_by_content_.end()) return it->second;
    return merger_.symbol_id(key);
  }

  const ChatConfig& chat_config() const override { return chat_; }

 private:
  // Fills id -> bytes; ids must be exactly 0..N-1 over the vocabulary and the added tokens, and
  // an id shared by a symbol and an added token must stand for the same text.
  void build_id_table(const std::vector<std::pair<std::string, std::int64_t>>& vocab) {
    const std::size_t most = vocab.size() + added_.size();
    std::vector<const std::string*> text_of(most, nullptr);
    std::vector<char> is_added(most, 0);
    const auto out_of_range = [&](const std::string& text, std::int64_t id, std::size_t count) {
      return Error(fmt::format("token '{}' has id {}, out of range: {} tokens need the ids 0..{}", brief_text(text), id,
                               count, static_cast<std::int64_t>(count) - 1));
    };
    for (const auto& [symbol, id] : vocab) {
      if (id < 0 || static_cast<std::uint64_t>(id) >= most) throw out_of_range(symbol, id, vocab.size());
      if (text_of[id] != nullptr)
        throw Error(fmt::format("vocabulary entries '{}' and '{}' have the same id {}", brief_text(*text_of[id]),
                                brief_text(symbol), id));
      text_of[id] = &symbol;
    }
    for (const bpe::AddedToken& t : added_) {
      if (t.id < 0 || static_cast<std::uint64_t>(t.id) >= most) throw out_of_range(t.content, t.id, most);
      if (text_of[t.id] != nullptr && *text_of[t.id] != t.content)
        throw Error(fmt::format("added token '{}' has id {}, which already belongs to '{}'", brief_text(t.content), t.id,
                                brief_text(*text_of[t.id])));
      text_of[t.id] = &t.content;
      is_added[t.id] = 1;
    }
    const auto count = static_cast<std::size_t>(std::count_if(text_of.begin(), text_of.end(), [](auto p) { return p; }));
    for (std::size_t id = count; id < most; ++id)
      if (text_of[id] != nullptr) throw out_of_range(*text_of[id], static_cast<std::int64_t>(id), count);
    id_bytes_.reserve(count);
    for (std::size_t id = 0; id < count; ++id)
      id_bytes_.push_back(is_added[id] ? *text_of[id] : symbol_to_bytes(*text_of[id]));
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

  // Cuts the added tokens out of `text` as tokenizers' AddedVocabulary does: the leftmost match
  // wins, then the longest there; single_word tokens touching a word character do not count;
  // lstrip/rstrip tokens take the whitespace beside them.
  std::vector<Segment> split_added(std::string_view text) const {
    std::vector<Segment> out;
    std::size_t plain_start = 0, pos = 0;
    while (pos < text.size()) {
      const bpe::AddedToken* match = longest_added_at(text, pos);
      if (match == nullptr) {
        ++pos;
        continue;
      }
      std::size_t start = pos, stop = pos + match->content.size();
      if (match->single_word && ((start > 0 && word_char_beside(text, start, false)) ||
                                 (stop < text.size() && word_char_beside(text, stop, true)))) {
        pos = stop;  // not a match, and its text is not searched again
        continue;
      }
      if (match->lstrip) start = std::max(plain_start, start - white_space_run(text, start, true));
      if (match->rstrip) stop += white_space_run(text, stop, false);
      if (start > plain_start) out.push_back({text.substr(plain_start, start - plain_start), -1});
      out.push_back({text.substr(start, stop - start), match->id});
      pos = plain_start = stop;
    }
    if (plain_start < text.size()) out.push_back({text.substr(plain_start), -1});
    return out;
  }

  const bpe::AddedToken* longest_added_at(std::string_view text, std::size_t pos) const {
    for (const std::size_t i : added_by_first_byte_[static_cast<unsigned char>(text[pos])])
      if (text.compare(pos, added_[i].content.size(), added_[i].content) == 0) return &added_[i];
    return nullptr;
  }

  std::vector<std::int64_t> encode_piece_cached(const std::string& piece) const {
    {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      if (const auto it = cache_.find(piece); it != cache_.end()) return it->second;
    }
    std::vector<std::int64_t> ids;
    // ignore_merges: a piece that is itself a vocabulary symbol is that one token.
    const std::optional<std::int64_t> whole = ignore_merges_ ? merger_.symbol_id(bytes_to_symbols(piece)) : std::nullopt;
    if (whole)
      ids.push_back(*whole);
    else
      ids = merger_.encode_piece(piece);
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();  // bounds memory on endless distinct text
    cache_.emplace(piece, ids);
    return ids;
  }

  static constexpr std::size_t kMaxCacheEntries = 100000;

  BpeMerger merger_;
  bool ignore_merges_;
  std::vector<bpe::AddedToken> added_;
  std::vector<std::unique_ptr<bpe::PreTokenizerStep>> steps_;
  std::vector<std::int64_t> prefix_ids_, suffix_ids_;
  ChatConfig chat_;
  std::vector<std::string> id_bytes_;  // id -> raw bytes (added tokens: their text)
  std::unordered_map<std::string, std::int64_t> added_by_content_;
  std::array<std::vector<std::size_t>, 256> added_by_first_byte_;  // indices into added_
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<std::int64_t>> cache_;
};

}  // namespace

namespace bpe {

std::unique_ptr<PreTokenizerStep> make_split_step(std::shared_ptr<const text::Regex> regex, SplitBehavior behavior,
                                                  bool invert) {
  return std::make_unique<SplitStep>(std::move(regex), behavior, invert);
}

std::unique_ptr<PreTokenizerStep> make_digits_step(bool individual_digits) {
  // tokenizers tests char::is_numeric (general categories Nd, Nl, No), one character at a time.
  static const auto numeric = std::make_shared<const text::Regex>(R"(\p{N})");
  return make_split_step(numeric, individual_digits ? SplitBehavior::isolated : SplitBehavior::contiguous, false);
}

std::unique_ptr<PreTokenizerStep> make_byte_level_step(bool add_prefix_space, bool use_regex) {
  return std::make_unique<ByteLevelStep>(add_prefix_space, use_regex);
}

std::unique_ptr<Tokenizer> make_tokenizer(Config config) {
  return std::make_unique<ByteLevelBpeTokenizer>(std::move(config));
}

}  // namespace bpe

std::unique_ptr<Tokenizer> make_gpt2_bpe_tokenizer(Gpt2BpeSpec spec) {
  bpe::Config config;
  config.vocab.assign(std::make_move_iterator(spec.vocab.begin()), std::make_move_iterator(spec.vocab.end()));
  config.merges = std::move(spec.merges);
  for (auto& [content, id] : spec.special_tokens) config.added_tokens.push_back({content, id});
  config.pre_tokenizer.push_back(bpe::make_byte_level_step(false, true));
  return bpe::make_tokenizer(std::move(config));
}

std::string gpt2_byte_symbol(unsigned char byte) { return byte_symbols()[byte]; }

std::vector<std::string> gpt2_pre_tokenize(std::string_view text) {
  if (const std::string decoded = utf8_decode_replace(text); decoded != text)
    throw UsageError("text to pre-tokenize is not valid UTF-8");
  static const ByteLevelStep step(false, true);
  std::vector<std::string> pieces;
  step.split(std::string(text), pieces);
  return pieces;
}

}  // namespace hooklens

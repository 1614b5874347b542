#include "bpe_trainer.h"

#include "hooklens/error.h"
#include "hooklens/tokenizer.h"
#include "toy_corpus.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <fstream>
#include <map>
#include <numeric>
#include <unordered_map>

namespace hooklens::training {
namespace {

using Symbol = std::int32_t;

std::uint64_t pair_key(Symbol a, Symbol b) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
}

struct Word {
  std::vector<Symbol> symbols;
  std::int64_t count = 0;
};

class Trainer {
 public:
  explicit Trainer(const std::vector<std::string>& documents) {
    for (int b = 0; b < 256; ++b) intern(std::string(1, static_cast<char>(b)));
    std::map<std::string, std::int64_t> pieces;  // sorted: the same word order everywhere
    for (const std::string& doc : documents)
      for (std::string& piece : gpt2_pre_tokenize(doc)) ++pieces[std::move(piece)];
    for (const auto& [piece, count] : pieces) {
      Word w;
      w.count = count;
      for (const char c : piece) w.symbols.push_back(static_cast<unsigned char>(c));
      words_.push_back(std::move(w));
    }
    for (std::size_t i = 0; i < words_.size(); ++i) add_pairs(i, +1);
  }

  // Learns up to `merges` rules; returns them as (left, right) symbols.
  std::vector<std::pair<Symbol, Symbol>> run(std::size_t merges, std::int64_t min_count) {
    std::vector<std::pair<Symbol, Symbol>> rules;
    while (rules.size() < merges) {
      std::uint64_t best = 0;
      std::int64_t best_count = 0;
      for (const auto& [key, count] : pair_count_)
        if (count > best_count || (count == best_count && count > 0 && before(key, best))) best = key, best_count = count;
      if (best_count < min_count || best_count == 0) break;
      const Symbol a = static_cast<Symbol>(best >> 32), b = static_cast<Symbol>(best & 0xFFFFFFFFu);
      merge(a, b, intern(bytes_[a] + bytes_[b]));
      rules.emplace_back(a, b);
    }
    return rules;
  }

  const std::vector<std::string>& bytes() const { return bytes_; }

 private:
  Symbol intern(const std::string& bytes) {
    const auto [it, inserted] = index_.emplace(bytes, static_cast<Symbol>(bytes_.size()));
    if (inserted) bytes_.push_back(bytes);
    return it->second;
  }

  // The tie rule: the smaller left symbol's bytes, then the smaller right symbol's.
  bool before(std::uint64_t x, std::uint64_t y) const {
    const std::string &xa = bytes_[x >> 32], &ya = bytes_[y >> 32];
    if (xa != ya) return xa < ya;
    return bytes_[x & 0xFFFFFFFFu] < bytes_[y & 0xFFFFFFFFu];
  }

  void add_pairs(std::size_t w, int sign) {
    const Word& word = words_[w];
    for (std::size_t i = 0; i + 1 < word.symbols.size(); ++i) {
      const std::uint64_t key = pair_key(word.symbols[i], word.symbols[i + 1]);
      std::int64_t& c = pair_count_[key];
      c += sign * word.count;
      if (sign > 0) where_[key].push_back(static_cast<std::uint32_t>(w));
      else if (c == 0) pair_count_.erase(key);
    }
  }

  void merge(Symbol a, Symbol b, Symbol merged) {
    std::vector<std::uint32_t> targets = std::move(where_[pair_key(a, b)]);
    where_.erase(pair_key(a, b));
    std::sort(targets.begin(), targets.end());
    targets.erase(std::unique(targets.begin(), targets.end()), targets.end());
    for (const std::uint32_t w : targets) {
      std::vector<Symbol>& s = words_[w].symbols;
      bool present = false;
      for (std::size_t i = 0; i + 1 < s.size() && !present; ++i) present = s[i] == a && s[i + 1] == b;
      if (!present) continue;  // a stale entry: an earlier merge took the pair apart
      add_pairs(w, -1);
      std::vector<Symbol> out;
      out.reserve(s.size());
      for (std::size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          out.push_back(merged);
          ++i;
        } else {
          out.push_back(s[i]);
        }
      }
      s = std::move(out);
      add_pairs(w, +1);
    }
  }

  std::vector<Word> words_;
  std::vector<std::string> bytes_;  // symbol -> its raw bytes
  std::unordered_map<std::string, Symbol> index_;
  std::unordered_map<std::uint64_t, std::int64_t> pair_count_;
  std::unordered_map<std::uint64_t, std::vector<std::uint32_t>> where_;  // pair -> words that had it
};

std::string to_symbol(const std::string& bytes) {
  std::string s;
  for (const char c : bytes) s += gpt2_byte_symbol(static_cast<unsigned char>(c));
  return s;
}

}  // namespace

BpeVocabulary train_bpe(const std::vector<std::string>& documents, const BpeOptions& options) {
  Trainer trainer(documents);
  const auto rules = trainer.run(options.merges, options.min_pair_count);
  const std::vector<std::string>& bytes = trainer.bytes();

  BpeVocabulary v;
  // GPT-2's byte order: by the code point of each byte's symbol (UTF-8 sorts as code points do).
  std::array<int, 256> order{};
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [](int x, int y) {
    return gpt2_byte_symbol(static_cast<unsigned char>(x)) < gpt2_byte_symbol(static_cast<unsigned char>(y));
  });
  for (const int b : order) v.symbols.push_back(gpt2_byte_symbol(static_cast<unsigned char>(b)));
  // Interned symbols past the bytes are numbered in the order their first merge made them.
  for (std::size_t s = 256; s < bytes.size(); ++s) v.symbols.push_back(to_symbol(bytes[s]));
  for (const auto& [a, b] : rules) v.merges.emplace_back(to_symbol(bytes[a]), to_symbol(bytes[b]));
  v.end_of_text_id = static_cast<std::int64_t>(v.symbols.size());
  v.symbols.emplace_back(kEndOfText);
  return v;
}

void write_gpt2_tokenizer(const BpeVocabulary& vocabulary, const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw Error(fmt::format("cannot create {}: {}", dir.string(), ec.message()));

  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  for (std::size_t id = 0; id < vocabulary.symbols.size(); ++id) vocab[vocabulary.symbols[id]] = id;
  const auto write = [&](const std::filesystem::path& path, const std::string& content) {
    std::ofstream out(path, std::ios::binary);
    out << content;
    out.close();
    if (!out) throw Error(fmt::format("cannot write {}", path.string()));
  };
  write(dir / "vocab.json", vocab.dump() + "\n");
  std::string merges = "#version: 0.2\n";
  for (const auto& [a, b] : vocabulary.merges) merges += a + " " + b + "\n";
  write(dir / "merges.txt", merges);
}

}  // namespace hooklens::training

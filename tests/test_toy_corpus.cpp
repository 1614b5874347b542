// The toy models' corpus generator and BPE trainer (training/): deterministic text with the
// structure the models should learn, and tokenizer files that hooklens' own loader reads.
#include "bpe_trainer.h"
#include "hooklens/error.h"
#include "hooklens/tokenizer.h"
#include "text_test_util.h"
#include "toy_corpus.h"

#include <catch2/catch.hpp>

#include <chrono>
#include <regex>
#include <set>
#include <sstream>

using namespace hooklens::training;
using textest::TempDir;

namespace {

std::vector<std::string> words_of(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

std::size_t occurrences(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + 1)) ++n;
  return n;
}

std::uint64_t fnv1a(const std::string& text) {
  std::uint64_t h = 0xCBF29CE484222325ULL;
  for (const char c : text) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001B3ULL;
  return h;
}

std::vector<std::string> training_documents() {
  std::vector<std::string> docs = toy_stories(1, 1500);
  for (std::string& d : repeated_segments(2, 1000)) docs.push_back(std::move(d));
  return docs;
}

}  // namespace

TEST_CASE("SplitMix64 gives the published sequence") {
  SplitMix64 rng(0);
  CHECK(rng.next() == 0xE220A8397B1DCDAFULL);
  CHECK(rng.next() == 0x6E789E6AA1B965F4ULL);
}

TEST_CASE("stories are deterministic, plain ASCII, and differ between seeds") {
  const auto a = toy_stories(7, 200), b = toy_stories(7, 200), c = toy_stories(8, 200);
  REQUIRE(a.size() == 200);
  CHECK(a == b);
  CHECK(a != c);
  // The first stories of a longer run are the same stories: a count only says where to stop.
  CHECK(std::vector<std::string>(a.begin(), a.begin() + 50) == toy_stories(7, 50));
  for (const std::string& s : a) {
    for (const char ch : s) REQUIRE(((ch >= 0x20 && ch < 0x7F) || ch == '\n'));
    CHECK(s.size() > 200);
    CHECK(s.rfind("Once upon a time", 0) == 0);
    CHECK(s.size() >= 9);
    CHECK(s.substr(s.size() - 9) == "The end.\n");
    CHECK(s.find(kEndOfText) == std::string::npos);
    CHECK(occurrences(s, "\"") % 2 == 0);  // dialogue quotes come in pairs
    CHECK(occurrences(s, "\"") >= 2);
  }
  // The same bytes on every machine: pinned.
  CHECK(fnv1a(join_documents(toy_stories(1, 10))) == 0xF4F81500A4E2BBDCULL);
}

TEST_CASE("a story repeats its names and its object, so copying earlier tokens pays") {
  const std::regex named(R"(named (\w+)\.)"), found(R"(found an? (\w+) (\w+) in)"),
      met(R"(met (\w+), an? \w+\.)");
  for (const std::string& s : toy_stories(3, 100)) {
    std::smatch m;
    REQUIRE(std::regex_search(s, m, named));
    const std::string hero = m[1];
    CHECK(occurrences(s, hero + " ") + occurrences(s, hero + ".") + occurrences(s, hero + ",") >= 5);
    // The friend is introduced ("met Rosa, an owl.") before any other mention, and comes back.
    REQUIRE(std::regex_search(s, m, met));
    const std::string pal = m[1];
    CHECK(pal != hero);
    CHECK(s.find(pal) == static_cast<std::size_t>(m.position(1)));
    CHECK(occurrences(s, pal) >= 3);
    REQUIRE(std::regex_search(s, m, found));
    CHECK(occurrences(s, std::string(m[2])) >= 2);
  }
}

TEST_CASE("the stories' vocabulary is a few hundred words") {
  std::set<std::string> vocabulary;
  for (const std::string& s : toy_stories(5, 2000))
    for (std::string w : words_of(s)) {
      w.erase(std::remove_if(w.begin(), w.end(), [](char c) { return !std::isalpha(static_cast<unsigned char>(c)); }),
              w.end());
      if (!w.empty()) vocabulary.insert(w);
    }
  CHECK(vocabulary.size() >= 150);
  CHECK(vocabulary.size() <= 1000);
}

TEST_CASE("repeated-segment documents are one random segment written again") {
  const auto a = repeated_segments(11, 300), b = repeated_segments(11, 300);
  CHECK(a == b);
  CHECK(a != repeated_segments(12, 300));
  std::set<std::string> segments;
  for (const std::size_t repeats : {2, 3}) {
    SegmentOptions options;
    options.repeats = repeats;
    options.min_length = 3;
    options.max_length = 9;
    for (const std::string& doc : repeated_segments(11, 300, options)) {
      REQUIRE(doc.back() == '\n');
      const auto words = words_of(doc);
      REQUIRE(words.size() % repeats == 0);
      const std::size_t n = words.size() / repeats;
      CHECK(n >= 3);
      CHECK(n <= 9);
      for (std::size_t i = n; i < words.size(); ++i) REQUIRE(words[i] == words[i % n]);
      segments.insert(doc.substr(0, doc.find(words[n - 1]) + words[n - 1].size()));
    }
  }
  // Random, not a few memorised lines (a seed gives the same segments whatever the repeats).
  CHECK(segments.size() >= 290);
  SegmentOptions bad;
  bad.repeats = 1;
  CHECK_THROWS_AS(repeated_segments(1, 1, bad), hooklens::UsageError);
  bad.repeats = 2;
  bad.min_length = 0;
  CHECK_THROWS_AS(repeated_segments(1, 1, bad), hooklens::UsageError);
}

TEST_CASE("join_documents ends each document with the end-of-text marker") {
  CHECK(join_documents({"a\n", "b\n"}) == "a\n<|endoftext|>b\n<|endoftext|>");
}

TEST_CASE("gpt2_pre_tokenize cuts text as GPT-2's encoder does, into pieces that cover it") {
  using Pieces = std::vector<std::string>;
  CHECK(hooklens::gpt2_pre_tokenize("Hello, world's 12 apples  now\n") ==
        Pieces{"Hello", ",", " world", "'s", " 12", " apples", " ", " now", "\n"});
  CHECK(hooklens::gpt2_pre_tokenize("").empty());
  std::string joined;
  const std::string text = toy_stories(4, 1)[0];
  for (const std::string& piece : hooklens::gpt2_pre_tokenize(text)) joined += piece;
  CHECK(joined == text);
  CHECK_THROWS_AS(hooklens::gpt2_pre_tokenize("bad \xC3("), hooklens::UsageError);
}

TEST_CASE("the BPE trainer is deterministic and learns the requested merges") {
  const auto docs = training_documents();
  const auto start = std::chrono::steady_clock::now();
  const BpeVocabulary v = train_bpe(docs, {800, 2});
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::size_t bytes = 0;
  for (const auto& d : docs) bytes += d.size();
  INFO("trained on " << bytes << " bytes in " << seconds << " s");
  CHECK(bytes > 1'000'000);
  CHECK(seconds < 20);
  CHECK(v.merges.size() == 800);
  CHECK(v.symbols.size() <= 256 + 800 + 1);
  CHECK(v.symbols.size() > 256 + 700);
  CHECK(v.end_of_text_id == static_cast<std::int64_t>(v.symbols.size()) - 1);
  CHECK(v.symbols.back() == "<|endoftext|>");
  CHECK(std::set<std::string>(v.symbols.begin(), v.symbols.end()).size() == v.symbols.size());
  CHECK(v.symbols[0] == "!");  // GPT-2's byte order
  CHECK(v.symbols[255] == hooklens::gpt2_byte_symbol(0xAD));

  // The same merges on every machine (the tie rule decides, not a hash table's order): pinned.
  std::string rules;
  for (const auto& [a, b] : v.merges) rules += a + " " + b + "\n";
  CHECK(fnv1a(rules) == 0xCAF87F9B4815EBDBULL);

  const BpeVocabulary again = train_bpe(docs, {800, 2});
  CHECK(again.symbols == v.symbols);
  CHECK(again.merges == v.merges);
  // Fewer merges are a prefix of more: the order is the order of learning.
  const BpeVocabulary fewer = train_bpe(docs, {100, 2});
  CHECK(std::equal(fewer.merges.begin(), fewer.merges.end(), v.merges.begin()));
  // A tiny text runs out of pairs seen twice before the requested count: "abcabc" -> ab, abc.
  const BpeVocabulary tiny = train_bpe({"abcabc"}, {100, 2});
  CHECK(tiny.merges == std::vector<std::pair<std::string, std::string>>{{"a", "b"}, {"ab", "c"}});
  CHECK(tiny.symbols.size() == 256 + 2 + 1);
  CHECK_THROWS_AS(train_bpe({std::string("ok \xff")}), hooklens::UsageError);
}

TEST_CASE("the trained files load through hooklens' tokenizer and round-trip any text") {
  const auto docs = training_documents();
  const BpeVocabulary v = train_bpe(docs, {1000, 2});
  TempDir dir;
  write_gpt2_tokenizer(v, dir.path / "tok");
  const std::string merges = textest::read_file(dir.path / "tok" / "merges.txt");
  CHECK(merges.rfind("#version: 0.2\n", 0) == 0);
  CHECK(occurrences(merges, "\n") == 1001);

  const auto tok = hooklens::load_hf_tokenizer(dir.path / "tok");
  CHECK(tok->vocab_size() == static_cast<std::int64_t>(v.symbols.size()));
  CHECK(tok->token_id("<|endoftext|>") == v.end_of_text_id);
  const std::string text = join_documents(std::vector<std::string>(docs.begin(), docs.begin() + 40)) +
                           join_documents(std::vector<std::string>(docs.end() - 40, docs.end()));
  const auto ids = tok->encode(text);
  CHECK(tok->decode(ids) == text);
  CHECK(ids.size() * 3 < text.size());  // the merges compress the corpus
  CHECK(std::count(ids.begin(), ids.end(), v.end_of_text_id) == 80);

  // Text the corpus never had: non-ASCII, emoji, control bytes, digits.
  for (const std::string& s : std::vector<std::string>{"h\xC3\xA9llo w\xC3\xB6rld \xE2\x80\x94 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x99\x82",
                              std::string("tab\there\r\nnul\0end", 17), "12345 67.8 $%^&*()", "   spaced   out  "}) {
    CHECK(tok->decode(tok->encode(s)) == s);
  }
  std::mt19937 gen(1234);
  for (int round = 0; round < 200; ++round) {
    std::string s;
    const int n = static_cast<int>(gen() % 30);
    for (int i = 0; i < n; ++i) {
      char32_t cp = gen() % 5 == 0 ? 0x80 + gen() % 0x2F80 : gen() % 0x80;
      if (gen() % 20 == 0) cp = 0x10000 + gen() % 0x1000;
      std::string u;
      if (cp < 0x80) u += char(cp);
      else if (cp < 0x800) u += {char(0xC0 | (cp >> 6)), char(0x80 | (cp & 0x3F))};
      else if (cp < 0x10000) u += {char(0xE0 | (cp >> 12)), char(0x80 | ((cp >> 6) & 0x3F)), char(0x80 | (cp & 0x3F))};
      else u += {char(0xF0 | (cp >> 18)), char(0x80 | ((cp >> 12) & 0x3F)), char(0x80 | ((cp >> 6) & 0x3F)), char(0x80 | (cp & 0x3F))};
      s += u;
    }
    REQUIRE(tok->decode(tok->encode(s)) == s);
  }

  // The grammar's common words are single tokens.
  for (const char* word : {"Once", " upon", " time", " said", " named", " the", " and", " with", " was", " found"}) {
    INFO(word);
    CHECK(tok->encode(word).size() == 1);
  }
}

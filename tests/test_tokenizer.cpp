// GPT-2 byte-level BPE and UTF-8 decoding, checked against the Hugging Face fixtures and against
// ids computed by an independent reference (see "tricky texts" below).
#include "hooklens/error.h"
#include "hooklens/tokenizer.h"
#include "test_skip.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

namespace fs = std::filesystem;
using hooklens::Error;
using hooklens::UsageError;
using Catch::Matchers::Contains;
using Ids = std::vector<std::int64_t>;
using json = nlohmann::json;

namespace {

const fs::path kFixtures = test::fixtures();
const fs::path kNeo = kFixtures / "tiny-neo-a";
const fs::path kGpt2 = kFixtures / "tiny-gpt2-a";

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  REQUIRE(in);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json read_json(const fs::path& p) { return json::parse(read_text(p)); }

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
  REQUIRE(out.good());
}

// A fresh directory under the system temp dir, removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    static std::mt19937_64 rng{std::random_device{}()};
    path = fs::temp_directory_path() / ("hooklens-tok-" + std::to_string(rng()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// The GPT-2 tokenizer (50257 tokens) is loaded once: parsing it takes a noticeable fraction of a second.
const hooklens::Tokenizer& gpt2() {
  static const auto tok = hooklens::load_hf_tokenizer(kNeo);
  return *tok;
}

// Expects `f` to throw exactly Error (not UsageError) with a one-line message containing all `parts`.
template <class F>
void check_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    FAIL("no exception thrown");
  } catch (const UsageError& e) {
    FAIL(std::string("UsageError instead of Error: ") + e.what());
  } catch (const Error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find('\n') == std::string::npos);
    for (const auto& part : parts) CHECK_THAT(msg, Contains(part));
  }
}

// The 256 byte-level symbols: in GPT-2's vocabulary they are exactly the ids 0..255.
std::map<std::string, std::int64_t> byte_symbols() {
  std::map<std::string, std::int64_t> out;
  const json vocab = read_json(kNeo / "vocab.json");
  for (const auto& [symbol, id] : vocab.items())
    if (id.get<std::int64_t>() < 256) out.emplace(symbol, id.get<std::int64_t>());
  REQUIRE(out.size() == 256);
  return out;
}

// A small byte-level tokenizer: the 256 byte symbols plus `extra` symbols with the next ids.
hooklens::Gpt2BpeSpec small_spec(const std::vector<std::string>& extra,
                                 std::vector<std::pair<std::string, std::string>> merges) {
  hooklens::Gpt2BpeSpec spec;
  spec.vocab = byte_symbols();
  for (const auto& s : extra) spec.vocab.emplace(s, static_cast<std::int64_t>(spec.vocab.size()));
  spec.merges = std::move(merges);
  return spec;
}

}  // namespace

TEST_CASE("utf8_decode_replace matches Python's bytes.decode('utf-8', errors='replace')") {
  // Expected values were printed by /usr/bin/python3 (3.11) for the same bytes.
  const std::string R = "\xEF\xBF\xBD";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", ""},
      {"abc", "abc"},
      {"\x20\xE2\x80", " " + R},
      {"\x9C", R},
      {"\xE2\x28\xA1", R + "(" + R},
      {"\xF0\x9F\x98", R},                 // truncated 4-byte sequence: one replacement
      {"\xED\xA0\x80", R + R + R},         // surrogate
      {"\xC0\xAF", R + R},                 // overlong
      {"\xE0\x80\x80", R + R + R},         // overlong
      {"\xF4\x90\x80\x80", R + R + R + R}, // above U+10FFFF
      {"\xF8\x88\x80\x80\x80", R + R + R + R + R},
      {"\xE1\x80" "a", R + "a"},
      {std::string("a\0b", 3), std::string("a\0b", 3)},
      {"\xF0\x9F\x99\x82", "\xF0\x9F\x99\x82"},
      {"\xF4\x8F\xBF\xBF", "\xF4\x8F\xBF\xBF"},  // U+10FFFF
      {"\xED\x9F\xBF", "\xED\x9F\xBF"},          // U+D7FF
      {"\xEF\xBF\xBD", R},
      {"\xC2", R},
      {"\xE0\xA0", R},
      {"\xFF\xFE", R + R},
  };
  for (const auto& [in, expected] : cases) {
    INFO("input bytes of length " << in.size() << ": " << in);
    CHECK(hooklens::utf8_decode_replace(in) == expected);
  }
}

TEST_CASE("the fixtures' prompts tokenize as Hugging Face's GPT2Tokenizer did", "[fixtures]") {
  for (const fs::path& dir : {kNeo, kGpt2}) {
    const auto tok = hooklens::load_hf_tokenizer(dir);
    CHECK(tok->vocab_size() == 50257);
    const json prompts = read_json(dir / "prompts.json")["prompts"];
    REQUIRE(prompts.size() >= 2);
    for (const json& p : prompts) {
      const std::string text = p["text"];
      INFO(dir.filename().string() << ": " << text);
      const Ids expected = p["input_ids"];
      CHECK(tok->encode(text) == expected);
      CHECK(tok->decode(expected) == p["decoded"].get<std::string>());
      for (std::size_t i = 0; i < expected.size(); ++i) {
        CHECK(tok->token_string(expected[i]) == p["token_strings"][i].get<std::string>());
        CHECK(tok->token_id(p["tokens"][i].get<std::string>()) == expected[i]);
      }
      if (p.contains("generation") && p["generation"].contains("new_token_strings")) {
        const Ids new_ids = p["generation"]["new_ids"];
        for (std::size_t i = 0; i < new_ids.size(); ++i)
          CHECK(tok->token_string(new_ids[i]) == p["generation"]["new_token_strings"][i].get<std::string>());
      }
    }
  }
}

TEST_CASE("special tokens are cut out literally before pre-tokenization", "[fixtures]") {
  // The example documented in the fixture README.
  CHECK(gpt2().encode("hello<|endoftext|>world") == Ids{31373, 50256, 6894});
  CHECK(gpt2().token_id("<|endoftext|>") == 50256);
  CHECK(gpt2().token_string(50256) == "<|endoftext|>");
  CHECK(gpt2().token_id("Ġcat") == 3797);
  CHECK_FALSE(gpt2().token_id("no such symbol").has_value());
}

// Expected ids were computed by an independent Python reference written for this purpose (kept
// outside the repository): its pre-tokenizer implements the regex's branches by hand with
// unicodedata categories and the Unicode White_Space set (no regex engine), its BPE is
// GPT2Tokenizer.bpe's loop over the fixture's vocab.json/merges.txt, and it reproduces every
// fixture prompt. 3800 random strings over these character classes also agreed with this code.
TEST_CASE("tricky texts give the ids of an independent reference", "[fixtures]") {
  const std::vector<std::pair<std::string, Ids>> cases = {
      {"don't", {9099, 470}},
      {"I'll", {40, 1183}},
      {"she'd've", {7091, 1549, 1053}},
      {"'S and 's", {6, 50, 290, 705, 82}},
      {"a   b", {64, 220, 220, 275}},                 // "a" "  " " b": the last space joins the word
      {"trailing   ", {9535, 4386, 220, 220, 220}},
      {"\n\n", {628}},
      {"line1\n\nline2\r\n", {1370, 16, 198, 198, 1370, 17, 201, 198}},
      {"2024", {1238, 1731}},
      {"1234567", {10163, 2231, 3134}},
      {"日本語", {33768, 98, 17312, 105, 45739, 252}},
      {"🙂", {8582, 25081}},
      {"naïve café", {2616, 38776, 40304}},
      {"e\xCC\x81", {68, 136, 223}},                  // combining accent (Mn) is not a letter
      {"\xC2\xA0x", {1849, 87}},                      // NO-BREAK SPACE is \s
      {"a\xC2\xA0\xC2\xA0" "b", {64, 1849, 1849, 65}}, // ... so two of them split as whitespace
      {"x\u3000\u3000y", {87, 5099, 222, 5099, 222, 88}},   // IDEOGRAPHIC SPACE too
      {"end\u2003 next", {437, 447, 225, 1306}},            // EM SPACE too
      {"a \xC2\xA0", {64, 5624}},
      {"tab\tsep  \n  y", {8658, 197, 325, 79, 220, 220, 198, 220, 331}},
      {"१२३ Ⅻ ½", {24231, 100, 24231, 101, 24231, 102, 2343, 227, 104, 25208}},  // \p{N}: Nd, Nl, No
      {"$100.00!!", {3, 3064, 13, 405, 3228}},
      {"👩\u200d👧", {41840, 102, 447, 235, 41840, 100}},
      {"a<|endoftext|> b<|endoftext|><|endoftext|>", {64, 50256, 275, 50256, 50256}},
      {"<|endoftext", {27, 91, 437, 1659, 5239}},
      {"  ", {220, 220}},
      {" ", {220}},
      {"", {}},
      {"Hello, world! It's 2024.", {15496, 11, 995, 0, 632, 338, 48609, 13}},
  };
  for (const auto& [text, ids] : cases) {
    INFO(text);
    CHECK(gpt2().encode(text) == ids);
    CHECK(gpt2().decode(ids) == text);
  }
}

TEST_CASE("token strings decode partial UTF-8 to U+FFFD", "[fixtures]") {
  // "日" is 3 bytes e6 97 a5 split into tokens 33768 (e6 97) and 98 (a5).
  CHECK(gpt2().token_string(33768) == "\xEF\xBF\xBD");
  CHECK(gpt2().token_string(98) == "\xEF\xBF\xBD");
  CHECK(gpt2().decode({33768, 98}) == "日");
  CHECK(gpt2().token_string(220) == " ");
  CHECK(gpt2().token_string(198) == "\n");
}

TEST_CASE("merging follows GPT2Tokenizer.bpe exactly", "[fixtures]") {
  SECTION("all occurrences of the best pair merge in one pass before any new pair") {
    // bpe("abab") with ranks {(ab,a): 0, (a,b): 1}: the pairs present are (a,b) and (b,a), so
    // (a,b) merges everywhere -> [ab, ab]; (ab,ab) has no rank. A merge-as-you-go queue would
    // instead give [aba, b].
    const auto tok = hooklens::make_gpt2_bpe_tokenizer(small_spec({"ab", "aba"}, {{"ab", "a"}, {"a", "b"}}));
    CHECK(tok->encode("abab") == Ids{256, 256});
  }
  SECTION("a repeated merge rule keeps its last rank, like a Python dict") {
    // Ranks {(b,c): 2, (a,b): 1} -> "abc" becomes [ab, c]; the first rank would give [a, bc].
    const auto tok =
        hooklens::make_gpt2_bpe_tokenizer(small_spec({"ab", "bc"}, {{"b", "c"}, {"a", "b"}, {"b", "c"}}));
    CHECK(tok->encode("abc") == Ids{256, 66});
  }
  SECTION("merges chain by rank") {
    const auto tok = hooklens::make_gpt2_bpe_tokenizer(
        small_spec({"he", "ll", "hell"}, {{"h", "e"}, {"l", "l"}, {"he", "ll"}}));
    CHECK(tok->encode("hello") == Ids{258, 78});  // [hell, o]
    CHECK(tok->token_string(258) == "hell");
    CHECK(tok->vocab_size() == 259);
  }
}

TEST_CASE("tokenizer.json gives the same ids as vocab.json + merges.txt", "[fixtures]") {
  const json vocab = read_json(kNeo / "vocab.json");
  json merge_strings = json::array(), merge_pairs = json::array();
  std::istringstream lines(read_text(kNeo / "merges.txt"));
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line.rfind("#version", 0) == 0) continue;
    const auto space = line.find(' ');
    merge_strings.push_back(line);
    merge_pairs.push_back({line.substr(0, space), line.substr(space + 1)});
  }
  const json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  const json sequence = {{"type", "Sequence"}, {"pretokenizers", json::array({byte_level})}};
  const std::vector<std::string> texts = {"hello<|endoftext|>world", "don't stop   now\n\n", "naïve café 日本語 🙂 2024",
                                          "Once upon a time, there was a little girl named Lily."};
  for (const auto& [merges, pre] : {std::pair{merge_strings, byte_level}, std::pair{merge_pairs, sequence}}) {
    TempDir dir;
    const json tj = {
        {"version", "1.0"},
        {"added_tokens", json::array({{{"id", 50256}, {"content", "<|endoftext|>"}, {"special", true}}})},
        {"normalizer", nullptr},
        {"pre_tokenizer", pre},
        {"model",
         {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", ""},
          {"end_of_word_suffix", ""}, {"fuse_unk", false}, {"byte_fallback", false}, {"vocab", vocab},
          {"merges", merges}}}};
    write_text(dir.path / "tokenizer.json", tj.dump());
    const auto tok = hooklens::load_hf_tokenizer(dir.path);
    CHECK(tok->vocab_size() == gpt2().vocab_size());
    for (const auto& text : texts) {
      INFO(text);
      CHECK(tok->encode(text) == gpt2().encode(text));
    }
  }
}

TEST_CASE("tokenizer_config.json's added_tokens_decoder adds special tokens", "[fixtures]") {
  TempDir dir;
  const auto spec = small_spec({}, {});
  write_text(dir.path / "vocab.json", json(spec.vocab).dump());
  write_text(dir.path / "merges.txt", "#version: 0.2\n\n");
  write_text(dir.path / "tokenizer_config.json",
             R"({"added_tokens_decoder": {"256": {"content": "<pad>", "special": true}}})");
  const auto tok = hooklens::load_hf_tokenizer(dir.path);
  CHECK(tok->vocab_size() == 257);
  CHECK(tok->encode("a<pad>b") == Ids{64, 256, 65});
  CHECK(tok->token_string(256) == "<pad>");
}

TEST_CASE("bad tokenizer files and bad input give clear errors", "[fixtures]") {
  TempDir dir;
  const fs::path& d = dir.path;
  const std::string small_vocab = json(small_spec({"ab"}, {}).vocab).dump();

  SECTION("no tokenizer files") {
    check_error([&] { hooklens::load_hf_tokenizer(d); }, {d.string(), "tokenizer.json", "vocab.json", "merges.txt"});
  }
  SECTION("malformed vocab.json") {
    write_text(d / "vocab.json", R"({"a": 0,)");
    write_text(d / "merges.txt", "");
    check_error([&] { hooklens::load_hf_tokenizer(d); }, {"vocab.json", "malformed JSON"});
  }
  SECTION("vocab.json that is not an object of ids") {
    write_text(d / "merges.txt", "");
    write_text(d / "vocab.json", "[1, 2]");
    check_error([&] { hooklens::load_hf_tokenizer(d); }, {"vocab.json", "not a JSON object"});
    write_text(d / "vocab.json", R"({"a": "zero"})");
    check_error([&] { hooklens::load_hf_tokenizer(d); }, {"vocab.json", "'a'", "not an integer"});
    write_text(d / "vocab.json", R"({"a": -3})");
    check_error([&] { hooklens::load_hf_tokenizer(d); }, {"vocab.json", "negative"});
  }
  SECTION("duplicate and out-of-range ids") {
    write_text(d / "merges.txt", "");
    write_text(d / "vocab.json", R"({"a": 0, "b": 1, "c": 1})");
    check_error([&] { hooklens::load_hf_tokenizer(d); }, {"vocab.json", "same id 1"});
    write_text(d / "vocab.json", R"({"a": 0, "b": 1, "c": 7})");
    check_error([&] { hooklens::load_hf_tokenizer(d); }, {"vocab.json", "'c'", "id 7", "out of range"});
  }
  SECTION("merges.txt lines that are not two symbols") {
    write_text(d / "vocab.json", small_vocab);
    write_text(d / "merges.txt", "#version: 0.2\na b\na b c\n");
    check_error([&] { hooklens::load_hf_tokenizer(d); }, {"merges.txt", "line 3", "a b c"});
    write_text(d / "merges.txt", "#version: 0.2\nab\n");
    check_error([&] { hooklens::load_hf_tokenizer(d); }, {"merges.txt", "line 2"});
  }
  SECTION("a merge whose result is not in the vocabulary loads, and fails only when used") {
    write_text(d / "vocab.json", small_vocab);
    write_text(d / "merges.txt", "x y\n");  // no #version line: the first line is a rule too
    const auto tok = hooklens::load_hf_tokenizer(d);
    CHECK(tok->encode("yx") == Ids{88, 87});
    check_error([&] { tok->encode("xy"); }, {"'xy'", "not in the vocabulary"});
  }
  SECTION("malformed or unsupported tokenizer.json") {
    write_text(d / "tokenizer.json", "{\"model\": ");
    check_error([&] { hooklens::load_hf_tokenizer(d); }, {"tokenizer.json", "malformed JSON"});
    const json base = {{"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
                       {"model", {{"type", "BPE"}, {"vocab", {{"a", 0}}}, {"merges", json::array()}}}};
    json tj = base;
    tj["model"]["type"] = "WordPiece";
    write_text(d / "tokenizer.json", tj.dump());
    check_error([&] { hooklens::load_hf_tokenizer(d); }, {"tokenizer.json", "unsupported", "WordPiece"});
    tj = base;
    tj["pre_tokenizer"] = {{"type", "Metaspace"}};
    write_text(d / "tokenizer.json", tj.dump());
    check_error([&] { hooklens::load_hf_tokenizer(d); }, {"tokenizer.json", "unsupported", "Metaspace"});
    tj["pre_tokenizer"] = nullptr;
    write_text(d / "tokenizer.json", tj.dump());
    check_error([&] { hooklens::load_hf_tokenizer(d); }, {"tokenizer.json", "unsupported pre_tokenizer"});
    tj = base;
    tj["normalizer"] = {{"type", "NFC"}};
    write_text(d / "tokenizer.json", tj.dump());
    check_error([&] { hooklens::load_hf_tokenizer(d); }, {"tokenizer.json", "unsupported normalizer", "NFC"});
    tj = base;
    tj["model"]["merges"] = json::array({json::array({"a"})});
    write_text(d / "tokenizer.json", tj.dump());
    check_error([&] { hooklens::load_hf_tokenizer(d); }, {"tokenizer.json", "merges[0]"});
    tj = base;
    tj["model"]["vocab"] = json::array();
    write_text(d / "tokenizer.json", tj.dump());
    check_error([&] { hooklens::load_hf_tokenizer(d); }, {"tokenizer.json", "not a JSON object"});
  }
  SECTION("invalid UTF-8 text is a UsageError") {
    CHECK_THROWS_AS(gpt2().encode("ok \xE2\x28\xA1"), UsageError);
    CHECK_THROWS_WITH(gpt2().encode("ok \xE2\x28\xA1"), Contains("UTF-8") && Contains("offset 3"));
    CHECK_THROWS_AS(gpt2().encode("\xC0\xAF"), UsageError);
    CHECK_THROWS_AS(gpt2().encode("\xED\xA0\x80"), UsageError);
  }
  SECTION("ids outside the vocabulary are a UsageError") {
    CHECK_THROWS_AS(gpt2().token_string(-1), UsageError);
    CHECK_THROWS_AS(gpt2().token_string(50257), UsageError);
    CHECK_THROWS_WITH(gpt2().token_string(50257), Contains("50257") && Contains("0..50256"));
    CHECK_THROWS_AS(gpt2().decode({464, 99999}), UsageError);
  }
}

TEST_CASE("a shared tokenizer encodes correctly from several threads", "[fixtures]") {
  const std::vector<std::string> texts = {"The cat is on the mat.", "naïve café 日本語", "don't   stop\n\n", "2024 🙂!"};
  std::vector<Ids> expected;
  for (const auto& t : texts) expected.push_back(gpt2().encode(t));
  std::vector<int> wrong(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int round = 0; round < 200; ++round) {
        const std::size_t k = static_cast<std::size_t>(t + round) % texts.size();
        // A unique suffix per round makes new pieces, so the cache is written concurrently too.
        const std::string suffix = " w" + std::to_string(t * 1000 + round);
        const Ids ids = gpt2().encode(texts[k] + suffix);
        if (ids.size() < expected[k].size() || !std::equal(expected[k].begin(), expected[k].end(), ids.begin()) ||
            gpt2().decode(ids) != texts[k] + suffix)
          ++wrong[static_cast<std::size_t>(t)];
      }
    });
  for (auto& th : threads) th.join();
  CHECK(wrong == std::vector<int>(4, 0));
}

TEST_CASE("long texts encode quickly", "[fixtures]") {
  // The paragraph starts with a letter and ends with "\n", so repeating it repeats its pieces.
  const std::string paragraph =
      "Once upon a time, there was a little girl named Lily. She didn't like 2024's rain — "
      "but she'd go out anyway, naïve and happy! 日本語 🙂\n";
  std::string text;
  while (text.size() < 100000) text += paragraph;
  const std::size_t repeats = text.size() / paragraph.size();

  // A fresh tokenizer, so the timing includes filling the piece cache.
  const auto load_start = std::chrono::steady_clock::now();
  const auto tok = hooklens::load_hf_tokenizer(kNeo);
  const auto start = std::chrono::steady_clock::now();
  const Ids ids = tok->encode(text);
  const auto end = std::chrono::steady_clock::now();
  WARN("loading the GPT-2 tokenizer took " << std::chrono::duration<double>(start - load_start).count()
                                           << " s; encoding " << text.size() << " bytes into " << ids.size()
                                           << " tokens took " << std::chrono::duration<double>(end - start).count()
                                           << " s");
  const Ids one = tok->encode(paragraph);

  REQUIRE(ids.size() == one.size() * repeats);
  for (std::size_t r = 0; r < repeats; ++r)
    CHECK(std::equal(one.begin(), one.end(), ids.begin() + static_cast<std::ptrdiff_t>(r * one.size())));
  CHECK(tok->decode(ids) == text);

  // Mostly distinct pseudo-random words, so nearly every piece misses the cache.
  std::minstd_rand rng(42);
  std::string words;
  while (words.size() < 100000) {
    const std::size_t len = 1 + rng() % 9;
    words += rng() % 7 == 0 ? "\n" : " ";
    for (std::size_t i = 0; i < len; ++i) words += static_cast<char>('a' + rng() % 26);
  }
  const auto words_start = std::chrono::steady_clock::now();
  const Ids word_ids = tok->encode(words);
  WARN("encoding " << words.size() << " bytes of random words into " << word_ids.size() << " tokens took "
                   << std::chrono::duration<double>(std::chrono::steady_clock::now() - words_start).count() << " s");
  CHECK(tok->decode(word_ids) == words);

  // Very long single pieces: long whitespace runs (regex backtracking) and long words (merging).
  for (const std::string& piece : {std::string(200000, ' ') + "x", std::string(200000, 'a'), std::string(100000, '7')}) {
    const auto t0 = std::chrono::steady_clock::now();
    const Ids long_ids = tok->encode(piece);
    WARN("a " << piece.size() << "-byte run took "
              << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() << " s");
    CHECK(tok->decode(long_ids) == piece);
  }
}

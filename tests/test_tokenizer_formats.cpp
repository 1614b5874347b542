// Tokenizers as models ship them: tokenizer.json with the pre-tokenizers, post-processors and
// added tokens of Llama-3/Qwen/LLaDA-style byte-level BPE, and llama2.c tokenizer.bin files of
// any vocabulary size. Expected ids are worked out by hand in the comments, or come from
// independent references (tests/reference/hf_bpe_reference.py on Python's `regex` module,
// SentencePiece itself); none comes from the code under test.
#include "resource_bounds.h"
#include "hooklens/error.h"
#include "hooklens/json_read.h"
#include "hooklens/tokenizer.h"
#include "text_test_util.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <list>

namespace {

using namespace textest;
using hooklens::Error;
using hooklens::UsageError;
using Catch::Matchers::Contains;
using Ids = std::vector<std::int64_t>;

// Llama-3's pre-tokenizer pattern, as its tokenizer.json (and LLaDA's) has it.
const std::string kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// GPT-2's bytes-to-unicode table, written again here from its definition (printable Latin-1
// bytes stand for themselves, the other 68 get 256, 257, ... in byte order), so that the test
// vocabularies do not come from the code under test.
std::string byte_symbol(unsigned char byte) {
  const auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
  int cp = byte;
  if (!printable(byte)) {
    cp = 256;
    for (int b = 0; b < byte; ++b) cp += printable(b) ? 0 : 1;
  }
  std::string out;
  if (cp < 0x80) {
    out += char(cp);
  } else {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  }
  return out;
}

std::string symbols(std::string_view text) {
  std::string out;
  for (const char c : text) out += byte_symbol(static_cast<unsigned char>(c));
  return out;
}

// The 256 byte symbols, byte b at id b (so a byte's id is its value in the expectations below).
json byte_vocab() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_symbol(static_cast<unsigned char>(b))] = b;
  return vocab;
}

// Adds `pieces` (raw text) to the vocabulary with the next ids; returns their ids.
std::map<std::string, std::int64_t> add_pieces(json& vocab, const std::vector<std::string>& pieces) {
  std::map<std::string, std::int64_t> ids;
  for (const auto& p : pieces) {
    const auto id = static_cast<std::int64_t>(vocab.size());
    vocab[symbols(p)] = id;
    ids[p] = id;
  }
  return ids;
}

json merges_of(const std::vector<std::pair<std::string, std::string>>& raw) {
  json merges = json::array();
  for (const auto& [a, b] : raw) merges.push_back({symbols(a), symbols(b)});
  return merges;
}

json byte_level(bool add_prefix_space, bool use_regex) {
  return {{"type", "ByteLevel"}, {"add_prefix_space", add_prefix_space}, {"trim_offsets", true}, {"use_regex", use_regex}};
}

json split(const std::string& pattern, const std::string& behavior, bool invert = false, bool literal = false) {
  return {{"type", "Split"}, {"pattern", {{literal ? "String" : "Regex", pattern}}}, {"behavior", behavior}, {"invert", invert}};
}

json sequence(std::initializer_list<json> steps) {
  json list = json::array();
  for (const json& step : steps) list.push_back(step);
  return {{"type", "Sequence"}, {"pretokenizers", list}};
}

// A tokenizer.json with every field a real file has.
json tokenizer_json(json vocab, json merges, json pre_tokenizer, json post_processor = nullptr,
                    json added_tokens = json::array(), bool ignore_merges = false) {
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", std::move(added_tokens)},
          {"normalizer", nullptr},
          {"pre_tokenizer", std::move(pre_tokenizer)},
          {"post_processor", std::move(post_processor)},
          {"decoder", byte_level(true, true)},
          {"model",
           {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
            {"ignore_merges", ignore_merges}, {"vocab", std::move(vocab)}, {"merges", std::move(merges)}}}};
}

json added_token(std::int64_t id, const std::string& content, bool special = true) {
  return {{"id", id}, {"content", content}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
          {"normalized", false}, {"special", special}};
}

std::unique_ptr<hooklens::Tokenizer> load(const TempDir& dir, const json& tj, const json& config = nullptr) {
  write_file(dir / "tokenizer.json", tj.dump());
  if (!config.is_null()) write_file(dir / "tokenizer_config.json", config.dump());
  return hooklens::load_hf_tokenizer(dir.path);
}

json template_processing(std::initializer_list<std::string> single,
                         std::initializer_list<std::pair<std::string, Ids>> specials) {
  json items = json::array(), tokens = json::object();
  for (const auto& s : single)
    items.push_back(s == "$A" ? json{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}
                              : json{{"SpecialToken", {{"id", s}, {"type_id", 0}}}});
  for (const auto& [name, ids] : specials) tokens[name] = {{"id", name}, {"ids", ids}, {"tokens", json::array({name})}};
  return {{"type", "TemplateProcessing"}, {"single", items}, {"pair", items}, {"special_tokens", tokens}};
}

}  // namespace

TEST_CASE("the test's byte symbols are GPT-2's", "[fixtures]") {
  // The fixture's vocab.json holds the 256 byte symbols at ids 0..255 in the table's order.
  const json vocab = read_json(fixtures() / "tiny-neo-a" / "vocab.json");
  for (int b = 0; b < 256; ++b) CHECK(vocab.contains(byte_symbol(static_cast<unsigned char>(b))));
  CHECK(byte_symbol(' ') == "\xC4\xA0");   // Ġ
  CHECK(byte_symbol('\n') == "\xC4\x8A");  // Ċ
  CHECK(hooklens::gpt2_byte_symbol(0xAD) == byte_symbol(0xAD));
}

TEST_CASE("tokenizer.json: Split with Llama-3's regex, then ByteLevel without its own regex") {
  TempDir dir;
  json vocab = byte_vocab();
  const auto id = add_pieces(vocab, {"he", "ll", "hell", "hello", " w", "or", " wor", "\n\n", "12", "34"});
  const json merges = merges_of({{"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {" ", "w"}, {"o", "r"},
                                 {" w", "or"}, {"\n", "\n"}, {"1", "2"}, {"3", "4"}});
  const auto tok = load(dir, tokenizer_json(vocab, merges, sequence({split(kLlama3Pattern, "Isolated"), byte_level(false, false)})));
  CHECK(tok->vocab_size() == 266);
  // "hello" " world" -> [hello] [Ġwor l d] (Ġ w, then o r, then Ġw or).
  CHECK(tok->encode("hello world") == Ids{id.at("hello"), id.at(" wor"), 'l', 'd'});
  // Two spaces: \s+(?!\S) takes the first alone, the second starts " world".
  CHECK(tok->encode("hello  world") == Ids{id.at("hello"), ' ', id.at(" wor"), 'l', 'd'});
  // \s*[\r\n]+ keeps "\n\n" as one piece.
  CHECK(tok->encode("a\n\nb") == Ids{'a', id.at("\n\n"), 'b'});
  // \p{N}{1,3}: "1234" is "123" "4", so 3 and 4 never meet.
  CHECK(tok->encode("1234") == Ids{id.at("12"), '3', '4'});
  // (?i:'m): the contraction is its own piece whatever its case.
  CHECK(tok->encode("I'M") == Ids{'I', '\'', 'M'});
  CHECK(tok->decode(tok->encode("hello  world\n\n1234")) == "hello  world\n\n1234");

  // The same vocabulary with GPT-2's regex (ByteLevel use_regex) keeps "1234" together.
  TempDir gpt2_dir;
  const auto gpt2 = load(gpt2_dir, tokenizer_json(vocab, merges, byte_level(false, true)));
  CHECK(gpt2->encode("1234") == Ids{id.at("12"), id.at("34")});
}

TEST_CASE("tokenizer.json: Split behaviors and invert, as tokenizers documents them") {
  // With ignore_merges and each expected piece in the vocabulary, every piece is one token, so
  // the ids spell the pieces: the-final--countdown split on "-" gives the documented pieces.
  json vocab = byte_vocab();
  const auto id = add_pieces(vocab, {"the", "final", "countdown", "--", "the-", "final-", "-final", "-countdown",
                                     "final--", "--countdown"});
  const auto dash = std::int64_t('-');
  const auto pieces = [&](std::initializer_list<const char*> ps) {
    Ids ids;
    for (const char* p : ps) ids.push_back(std::string(p) == "-" ? dash : id.at(p));
    return ids;
  };
  const auto encode = [&](const json& step) {
    TempDir dir;
    return load(dir, tokenizer_json(vocab, json::array(), sequence({step, byte_level(false, false)}), nullptr,
                                    json::array(), true))
        ->encode("the-final--countdown");
  };
  CHECK(encode(split("-", "Removed", false, true)) == pieces({"the", "final", "countdown"}));
  CHECK(encode(split("-", "Isolated", false, true)) == pieces({"the", "-", "final", "-", "-", "countdown"}));
  CHECK(encode(split("-", "MergedWithPrevious", false, true)) == pieces({"the-", "final-", "-", "countdown"}));
  CHECK(encode(split("-", "MergedWithNext", false, true)) == pieces({"the", "-final", "-", "-countdown"}));
  CHECK(encode(split("-", "Contiguous", false, true)) == pieces({"the", "-", "final", "--", "countdown"}));
  // A regex for the words: its matches are the words, the gaps between them the rest.
  CHECK(encode(split("[a-z]+", "Isolated")) == pieces({"the", "-", "final", "--", "countdown"}));
  CHECK(encode(split("[a-z]+", "MergedWithPrevious")) == pieces({"the", "-final", "--countdown"}));
  // invert: the gaps are the delimiters now.
  CHECK(encode(split("[a-z]+", "MergedWithPrevious", true)) == pieces({"the-", "final--", "countdown"}));
  CHECK(encode(split("[a-z]+", "Removed", true)) == pieces({"the", "final", "countdown"}));
}

TEST_CASE("tokenizer.json: Digits, alone or in runs, before GPT-2's ByteLevel") {
  json vocab = byte_vocab();
  const auto id = add_pieces(vocab, {" 2", "20", "24", "x\xD9"});
  const json merges = merges_of({{" ", "2"}, {"2", "0"}, {"2", "4"}, {"x", "\xD9"}});
  const auto encode = [&](const json& pre) {
    TempDir dir;
    return load(dir, tokenizer_json(vocab, merges, pre))->encode("ab 2024!");
  };
  // Digits alone: "ab " 2 0 2 4 "!" -> no merge can join digits.
  CHECK(encode(sequence({{{"type", "Digits"}, {"individual_digits", true}}, byte_level(false, true)})) ==
        Ids{'a', 'b', ' ', '2', '0', '2', '4', '!'});
  // Runs: "2024" is one piece: 2 0 (rank 1) before 2 4 (rank 2) -> [20, 24]; the space stays alone.
  CHECK(encode(sequence({{{"type", "Digits"}, {"individual_digits", false}}, byte_level(false, true)})) ==
        Ids{'a', 'b', ' ', id.at("20"), id.at("24"), '!'});
  // Without Digits, GPT-2's regex makes " 2024": Ġ 2 (rank 0) first -> [Ġ2, 0, 24].
  CHECK(encode(byte_level(false, true)) == Ids{'a', 'b', id.at(" 2"), '0', id.at("24"), '!'});
  // Digits are \p{N}: Arabic-Indic three (U+0663, bytes D9 A3) is cut off "x", so x+D9 cannot merge.
  TempDir dir;
  const json digits_only = sequence({{{"type", "Digits"}, {"individual_digits", true}}, byte_level(false, false)});
  CHECK(load(dir, tokenizer_json(vocab, merges, digits_only))->encode("x\xD9\xA3") == Ids{'x', 0xD9, 0xA3});
  CHECK(load(dir, tokenizer_json(vocab, merges, byte_level(false, false)))->encode("x\xD9\xA3") ==
        Ids{id.at("x\xD9"), 0xA3});
}

TEST_CASE("tokenizer.json: ByteLevel add_prefix_space puts a space before each piece without one") {
  json vocab = byte_vocab();
  const auto id = add_pieces(vocab, {" a"});
  TempDir dir;
  const auto tok = load(dir, tokenizer_json(vocab, merges_of({{" ", "a"}}), byte_level(true, true),
                                            nullptr, json::array({added_token(257, "<x>")})));
  CHECK(tok->encode("a") == Ids{id.at(" a")});
  CHECK(tok->encode(" a") == Ids{id.at(" a")});
  // Each text segment between added tokens is pre-tokenized on its own, so each gets a space.
  CHECK(tok->encode("a<x>a") == Ids{id.at(" a"), 257, id.at(" a")});
}

TEST_CASE("tokenizer.json: TemplateProcessing adds its special tokens only with add_special_tokens") {
  const json vocab = byte_vocab();
  const json added = json::array({added_token(256, "<s>"), added_token(257, "</s>")});
  std::list<TempDir> dirs;
  const auto load_with = [&](const json& post) {
    dirs.emplace_back();
    return load(dirs.back(), tokenizer_json(vocab, json::array(), byte_level(false, true), post, added));
  };
  const auto both = load_with(template_processing({"<s>", "$A", "</s>"}, {{"<s>", {256}}, {"</s>", {257}}}));
  CHECK(both->encode("hi") == Ids{256, 'h', 'i', 257});
  CHECK(both->encode("hi", false) == Ids{'h', 'i'});
  CHECK(both->encode("") == Ids{256, 257});
  CHECK(both->encode("", false).empty());
  CHECK(both->encode("<s>hi") == Ids{256, 256, 'h', 'i', 257});  // the text's own <s> is an added token

  // Llama-3's shape: Sequence[ByteLevel, TemplateProcessing(BOS $A)].
  const json llama3 = {{"type", "Sequence"},
                       {"processors", json::array({byte_level(true, true),
                                                   template_processing({"<s>", "$A"}, {{"<s>", {256}}})})}};
  CHECK(load_with(llama3)->encode("hi") == Ids{256, 'h', 'i'});
  // Each processor of a Sequence wraps what the ones before it made.
  const json nested = {{"type", "Sequence"},
                       {"processors", json::array({template_processing({"$A", "</s>"}, {{"</s>", {257}}}),
                                                   template_processing({"<s>", "$A", "<s>"}, {{"<s>", {256}}})})}};
  CHECK(load_with(nested)->encode("hi") == Ids{256, 'h', 'i', 257, 256});
  // A special token may stand for several ids.
  CHECK(load_with(template_processing({"<pair>", "$A"}, {{"<pair>", {256, 257}}}))->encode("hi") ==
        Ids{256, 257, 'h', 'i'});
  CHECK(load_with(json{{"type", "ByteLevel"}})->encode("hi") == Ids{'h', 'i'});
}

TEST_CASE("tokenizer.json: ignore_merges takes a piece that is a vocabulary symbol whole") {
  json vocab = byte_vocab();
  const auto id = add_pieces(vocab, {" hello", "he", "ll"});  // no merge chain builds " hello"
  const json merges = merges_of({{"h", "e"}, {"l", "l"}});
  for (const bool ignore : {true, false}) {
    TempDir dir;
    const auto tok = load(dir, tokenizer_json(vocab, merges, byte_level(false, true), nullptr, json::array(), ignore));
    const Ids merged = {' ', id.at("he"), id.at("ll"), 'o'};
    CHECK(tok->encode(" hello") == (ignore ? Ids{id.at(" hello")} : merged));
    CHECK(tok->encode("hello") == Ids{id.at("he"), id.at("ll"), 'o'});  // "hello" is no symbol: merges as ever
  }
}

TEST_CASE("added tokens: lstrip, rstrip, single_word, and those only in tokenizer_config.json") {
  TempDir dir;
  json added = json::array({added_token(256, "<mask>"), added_token(257, "<sep>"), added_token(258, "cat", false)});
  added[0]["lstrip"] = true;
  added[1]["rstrip"] = true;
  added[2]["single_word"] = true;
  const json config = {{"added_tokens_decoder", {{"259", {{"content", "<extra>"}, {"special", true}}},
                                                 {"256", {{"content", "<mask>"}, {"lstrip", true}}}}},
                       {"model_max_length", json::parse("1000000000000000019884624838656")}};
  const auto tok = load(dir, tokenizer_json(byte_vocab(), json::array(), byte_level(false, true), nullptr, added), config);
  CHECK(tok->vocab_size() == 260);
  // lstrip: the space before <mask> belongs to it.
  CHECK(tok->encode("a <mask> b") == Ids{'a', 256, ' ', 'b'});
  // rstrip: the spaces after <sep> belong to it.
  CHECK(tok->encode("a <sep>  b") == Ids{'a', ' ', 257, 'b'});
  // single_word: "cat" inside "concat" is not the token; beside a space or "." it is.
  CHECK(tok->encode("cat concat cat.") == Ids{258, ' ', 'c', 'o', 'n', 'c', 'a', 't', ' ', 258, '.'});
  CHECK(tok->encode("x<extra>y") == Ids{'x', 259, 'y'});
  CHECK(tok->token_id("<extra>") == 259);
  CHECK(tok->token_string(259) == "<extra>");
}

TEST_CASE("a LLaDA-like tokenizer: 126349 ids, special tokens at LLaDA's ids, loaded fast") {
  // 256 byte symbols, some English merges, filler symbols (made by merges of control-byte
  // symbols, which no test text holds) up to 126080, then the added tokens 126080..126348 as
  // LLaDA-8B-Instruct has them; some only in tokenizer_config.json's added_tokens_decoder.
  json vocab = byte_vocab();
  const std::vector<std::pair<std::string, std::string>> english = {
      {" ", "t"}, {"h", "e"}, {" t", "he"}, {"i", "n"}, {"e", "r"}, {" ", "a"}, {"r", "e"}, {"o", "n"},
      {" ", "w"}, {"o", "r"}, {" w", "or"}, {"\n", "\n"}, {"1", "2"}, {"2", "0"}, {"a", "t"}, {" ", "c"},
      {" c", "at"}, {"e", "d"}, {"i", "s"}, {" ", "is"}, {"\xC3", "\xA9"}, {"\xE6\x97", "\xA5"}, {"\xE6", "\x97"}};
  json merges = merges_of(english);
  for (const auto& [a, b] : english) add_pieces(vocab, {a + b});
  std::vector<std::string> control;  // symbols of bytes 1..31
  for (int b = 1; b < 32; ++b) control.push_back(byte_symbol(static_cast<unsigned char>(b)));
  std::vector<std::string> two;
  const auto add_merge = [&](const std::string& a, const std::string& b) {
    if (vocab.size() >= 126080 || vocab.contains(a + b)) return false;
    const auto next_id = vocab.size();
    vocab[a + b] = next_id;
    merges.push_back({a, b});
    return true;
  };
  for (const auto& a : control)
    for (const auto& b : control)
      if (add_merge(a, b)) two.push_back(a + b);
  for (const auto& a : two)
    for (const auto& b : control) add_merge(a, b);
  for (std::size_t i = 0; i < two.size() && vocab.size() < 126080; ++i)
    for (std::size_t j = 0; j < two.size() && vocab.size() < 126080; ++j) add_merge(two[i], two[j]);
  REQUIRE(vocab.size() == 126080);

  const std::map<std::int64_t, std::string> named = {
      {126080, "<|startoftext|>"},   {126081, "<|endoftext|>"}, {126336, "<|mdm_mask|>"},
      {126346, "<|start_header_id|>"}, {126347, "<|end_header_id|>"}, {126348, "<|eot_id|>"}};
  json added = json::array(), decoder = json::object();
  for (std::int64_t id = 126080; id <= 126348; ++id) {
    const std::string content = named.count(id) ? named.at(id) : "<|reserved_token_" + std::to_string(id) + "|>";
    // The last few only in tokenizer_config.json, as a file may have them.
    if (id < 126340) added.push_back(added_token(id, content));
    decoder[std::to_string(id)] = {{"content", content}, {"lstrip", false}, {"rstrip", false}, {"special", true}};
  }
  const json post = {{"type", "Sequence"},
                     {"processors", json::array({byte_level(true, false),
                                                 template_processing({"<|startoftext|>", "$A"},
                                                                     {{"<|startoftext|>", {126080}}})})}};
  const json tj = tokenizer_json(vocab, merges, sequence({split(kLlama3Pattern, "Isolated"), byte_level(false, false)}),
                                 post, added, true);
  const json config = {{"add_bos_token", false}, {"bos_token", "<|startoftext|>"},
                       {"eos_token", {{"content", "<|endoftext|>"}, {"__type", "AddedToken"}}},
                       {"pad_token", "<|endoftext|>"}, {"tokenizer_class", "PreTrainedTokenizerFast"},
                       {"model_max_length", json::parse("1000000000000000019884624838656")},
                       {"added_tokens_decoder", decoder}, {"chat_template", "{{ bos_token }}"}};
  TempDir dir;
  write_file(dir / "tokenizer.json", tj.dump());
  write_file(dir / "tokenizer_config.json", config.dump());
  WARN("tokenizer.json of " << vocab.size() << " symbols and " << merges.size() << " merges: "
                            << fs::file_size(dir / "tokenizer.json") / 1000 << " kB");

  const auto start = std::chrono::steady_clock::now();
  const auto tok = hooklens::load_hf_tokenizer(dir.path);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  WARN("loading it took " << seconds << " s");
  CHECK(seconds < 3.0 * test::kSlowdown);  // measured ~0.3 s at -O2; a generous bound for a busy machine

  CHECK(tok->vocab_size() == 126349);
  for (const auto& [id, content] : named) {
    CHECK(tok->token_id(content) == id);
    CHECK(tok->token_string(id) == content);
  }
  CHECK(tok->chat_config().special_tokens.at("bos_token") == "<|startoftext|>");
  CHECK(tok->chat_config().special_tokens.at("eos_token") == "<|endoftext|>");

  // By hand: BOS from the post-processor, the special tokens as single ids, "x" a byte.
  CHECK(tok->encode("<|mdm_mask|><|mdm_mask|>x<|eot_id|>") == Ids{126080, 126336, 126336, 'x', 126348});
  CHECK(tok->encode("<|mdm_mask|>x", false) == Ids{126336, 'x'});
  // " the cat is" -> [Ġthe] [Ġcat] [Ġis]; "\n\n" one piece; "2012" is "201" "2" under \p{N}{1,3}.
  const auto id = [&](const std::string& raw) { return vocab.at(symbols(raw)).get<std::int64_t>(); };
  CHECK(tok->encode(" the cat is\n\n2012", false) == Ids{id(" the"), id(" cat"), id(" is"), id("\n\n"), id("20"), '1', '2'});

  const std::vector<std::string> texts = {
      "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>",
      "The year 2024 had 366 days.\n\n\nNew   paragraph\twith\ttabs  ",
      "na\xC3\xAFve caf\xC3\xA9 \xE2\x80\x94 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xF0\x9F\x99\x82 \xC3\x9Cn\xC3\xAF",
      "<|mdm_mask|><|mdm_mask|>x<|endoftext|>",
      "   leading spaces and trailing   ",
      "I'M HERE, it's 12345678 o'clock!!!\n",
      "\r\n\r\nwindows\r\nlines",
      "",
      "<|start_header_id|>assistant<|end_header_id|>\n\n",
      "tab\t\tand \xC2\xA0nbsp and \xE3\x80\x80 ideographic space",
  };
  if (!python_has("regex")) {
    test::skip("Python's regex module (python3-regex) is missing: the comparison with the reference did not run");
    return;
  }
  write_file(dir / "texts.json", json(texts).dump());
  const int status = run_reference("hf_bpe_reference.py", "'" + dir.path.string() + "' '" + (dir / "texts.json").string() +
                                                              "' '" + (dir / "expected.json").string() + "'",
                                   dir / "reference.log");
  INFO(read_file(dir / "reference.log"));
  REQUIRE(status == 0);
  const json expected = read_json(dir / "expected.json");
  for (std::size_t i = 0; i < texts.size(); ++i) {
    INFO("text " << i << ": " << texts[i]);
    CHECK(tok->encode(texts[i]) == expected[i]["with"].get<Ids>());
    CHECK(tok->encode(texts[i], false) == expected[i]["without"].get<Ids>());
    CHECK(tok->decode(tok->encode(texts[i], false)) == texts[i]);
  }
}

TEST_CASE("tokenizer.json: what is not implemented is refused by name, malformed files are Errors naming them") {
  TempDir dir;
  const fs::path file = dir / "tokenizer.json";
  const json base = tokenizer_json(byte_vocab(), json::array(), byte_level(false, true));
  const auto refused = [&](const json& tj, std::initializer_list<std::string> parts) {
    write_file(file, tj.dump());
    std::vector<std::string> all(parts);
    all.push_back(file.string());
    std::string msg;
    try {
      hooklens::load_hf_tokenizer(dir.path);
      FAIL("loaded");
    } catch (const UsageError& e) {
      FAIL(std::string("UsageError: ") + e.what());
    } catch (const Error& e) {
      msg = e.what();
    }
    INFO(msg);
    CHECK(msg.find('\n') == std::string::npos);
    for (const auto& part : all) CHECK_THAT(msg, Contains(part));
    return msg;
  };
  json tj = base;
  for (const char* type : {"WordPiece", "Unigram", "WordLevel"}) {
    tj["model"]["type"] = type;
    refused(tj, {"unsupported", type});
  }
  const std::vector<std::pair<const char*, json>> options = {
      {"dropout", 0.1}, {"continuing_subword_prefix", "##"}, {"end_of_word_suffix", "</w>"},
      {"fuse_unk", true}, {"byte_fallback", true}};
  for (const auto& [key, value] : options) {
    tj = base;
    tj["model"][key] = value;
    refused(tj, {"unsupported", std::string("model.") + key});
  }
  tj = base;
  tj["normalizer"] = {{"type", "NFC"}};
  refused(tj, {"unsupported normalizer", "NFC"});
  tj = base;
  tj["pre_tokenizer"] = {{"type", "Whitespace"}};
  refused(tj, {"unsupported pre_tokenizer", "Whitespace"});
  tj["pre_tokenizer"] = sequence({byte_level(false, false), {{"type", "Digits"}, {"individual_digits", true}}});
  refused(tj, {"ByteLevel must be its last step"});
  tj["pre_tokenizer"] = sequence({split("x", "Isolated")});
  refused(tj, {"without ByteLevel"});
  tj["pre_tokenizer"] = sequence({split("(unclosed", "Isolated"), byte_level(false, false)});
  refused(tj, {"Split", "regex", "(unclosed"});
  // Review (valgrind: PCRE2 read past a piece): \C cut pieces mid-character for the next regex.
  tj["pre_tokenizer"] = sequence({split("\\C{17}", "Isolated"), byte_level(false, true)});
  refused(tj, {"Split", "regex", "\\C{17}", "\\C is disabled"});
  tj["pre_tokenizer"] = sequence({split("x", "Sideways"), byte_level(false, false)});
  refused(tj, {"behavior", "Sideways"});
  tj["pre_tokenizer"] = sequence({{{"type", "Split"}, {"pattern", "x"}, {"behavior", "Isolated"}}, byte_level(false, false)});
  refused(tj, {"pattern"});
  tj["pre_tokenizer"] = sequence({byte_level(false, false)});
  for (int i = 0; i < 20; ++i) tj["pre_tokenizer"] = sequence({tj["pre_tokenizer"]});
  refused(tj, {"nested"});
  tj = base;
  tj["post_processor"] = {{"type", "RobertaProcessing"}};
  refused(tj, {"unsupported post_processor", "RobertaProcessing"});
  tj["post_processor"] = template_processing({"<s>", "$A"}, {});
  refused(tj, {"TemplateProcessing", "<s>"});
  tj["post_processor"] = template_processing({"$A", "$A"}, {});
  refused(tj, {"TemplateProcessing", "$A"});
  tj["post_processor"] = template_processing({"<s>", "$A"}, {{"<s>", {999}}});
  refused(tj, {"post-processor", "999"});
  tj = base;
  tj["decoder"] = {{"type", "Metaspace"}};
  refused(tj, {"unsupported decoder", "Metaspace"});
  tj = base;
  tj["model"]["ignore_merges"] = "yes";
  refused(tj, {"ignore_merges"});
  tj = base;
  tj["added_tokens"] = json::array({added_token(300, "<x>")});
  refused(tj, {"'<x>'", "id 300", "out of range"});

  // Long values are cut in messages; control characters are escaped.
  tj = base;
  tj["pre_tokenizer"] = {{"type", std::string(500, 'X') + "\n"}};
  const std::string msg = refused(tj, {std::string(57, 'X') + "..."});
  CHECK(msg.size() < 400);

  write_file(file, tj.dump().substr(0, 100));
  check_error([&] { hooklens::load_hf_tokenizer(dir.path); }, {file.string(), "malformed JSON"});
  write_file(file, "[" + std::string(100000, '[') + std::string(100001, ']'));  // deep nesting: no stack overflow
  check_error([&] { hooklens::load_hf_tokenizer(dir.path); }, {file.string(), "nested deeper than 128 levels"});

  // tokenizer_config.json: its own errors name it; a chat_template list without "default" is no error.
  write_file(file, base.dump());
  write_file(dir / "tokenizer_config.json", R"({"bos_token": 7})");
  check_error([&] { hooklens::load_hf_tokenizer(dir.path); }, {"tokenizer_config.json", "bos_token"});
  write_file(dir / "tokenizer_config.json", R"({"chat_template": [{"name": "tool_use", "template": "x"}]})");
  const auto tok = hooklens::load_hf_tokenizer(dir.path);
  CHECK(tok->chat_config().chat_template.empty());
  CHECK_THAT(tok->chat_config().missing_reason, Contains("'default'") && Contains("tool_use"));
  write_file(dir / "tokenizer_config.json",
             R"({"chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "y"}]})");
  CHECK(hooklens::load_hf_tokenizer(dir.path)->chat_config().chat_template == "y");
  write_file(dir / "tokenizer_config.json", R"({"chat_template": )" + std::string(5000, '[') + std::string(5000, ']') + "}");
  check_error([&] { hooklens::load_hf_tokenizer(dir.path); }, {"tokenizer_config.json", "nested deeper than 128 levels"});
}

TEST_CASE("vocab.json nested a few thousand levels deep is an Error naming it") {
  TempDir dir;
  write_file(dir / "vocab.json", R"({"a": 0, "b": )" + std::string(5000, '[') + std::string(5000, ']') + "}");
  write_file(dir / "merges.txt", "#version: 0.2\na b\n");
  check_error([&] { hooklens::load_hf_tokenizer(dir.path); }, {"vocab.json", "nested deeper than 128 levels"});
}

// The one reader every JSON input goes through (hooklens/json_read.h).
TEST_CASE("JSON reading: nesting past 128 levels is refused before a value is built, brackets in strings do not count") {
  using hooklens::json_depth_overflow;
  using hooklens::parse_json_text;
  const auto nested = [](std::size_t depth, const std::string& inner = "1") {
    std::string text;
    for (std::size_t i = 0; i < depth; ++i) text += i % 2 ? R"({"k": )" : "[";
    text += inner;
    for (std::size_t i = depth; i-- > 0;) text += i % 2 ? "}" : "]";
    return text;
  };
  const auto depth_of = [](const json& j) {
    std::size_t d = 0;
    for (const json* v = &j; v->is_array() || v->is_object(); v = v->is_array() ? &v->back() : &v->at("k")) ++d;
    return d;
  };

  // At the limit: parsed whole. One more level: refused, naming what was read and where.
  CHECK(json_depth_overflow(nested(128)) == std::string::npos);
  CHECK(depth_of(parse_json_text(nested(128), "at-limit.json")) == 128);
  const std::string deeper = nested(129);
  CHECK(json_depth_overflow(deeper) == deeper.rfind('[', deeper.find('1')));  // the 129th opening bracket
  check_error([&] { parse_json_text(deeper, "x/over.json"); }, {"x/over.json: JSON nested deeper than 128 levels"});
  CHECK(json_depth_overflow(nested(3), 2) != std::string::npos);
  CHECK(json_depth_overflow(nested(2), 2) == std::string::npos);

  // Brackets inside strings are text, escaped quotes do not end a string, an escaped backslash does not
  // escape the closing quote.
  const std::string brackets(1000, '[');
  CHECK(json_depth_overflow(nested(128, json(brackets).dump())) == std::string::npos);
  CHECK(parse_json_text(R"({"a": ")" + brackets + R"(", "b": 1})", "s.json")["a"] == brackets);
  const std::string quoted = R"(["\"[[[", )" + nested(127) + "]";
  CHECK(json_depth_overflow(quoted) == std::string::npos);
  CHECK(depth_of(parse_json_text(R"(["\\", )" + nested(127) + "]", "b.json")) == 128);
  CHECK(json_depth_overflow(R"(["\\", )" + nested(128) + "]") != std::string::npos);
  // Closing brackets never drive the count below zero (the parser refuses such text anyway).
  CHECK(json_depth_overflow("]]]]" + nested(129)) != std::string::npos);

  // Malformed text: one short line even when the token nlohmann stopped in is a 100 KB string.
  const std::string msg = check_error([&] { parse_json_text("[\"" + std::string(100000, 'x') + "\n\"]", "m.json"); },
                                      {"m.json: malformed JSON", "last read"});
  CHECK(msg.size() < 400);

  // A few thousand levels, and megabytes of brackets, are refused at once.
  const auto start = std::chrono::steady_clock::now();
  check_error([&] { parse_json_text(std::string(5000, '[') + std::string(5000, ']'), "d.json"); }, {"d.json", "128"});
  check_error([&] { parse_json_text(std::string(4 << 20, '{'), "e.json"); }, {"e.json", "128"});
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(1 * test::kSlowdown));
}

TEST_CASE("JSON values quoted in messages are cut to 60 bytes on one line") {
  CHECK(hooklens::brief_json(json(std::string(100000, 'x'))).size() <= 60);
  CHECK(hooklens::brief_json(json(std::string(100000, 'x'))).substr(57) == "...");
  CHECK(hooklens::brief_json(json::array({1, 2, 3})) == "[1,2,3]");
  CHECK(hooklens::brief_json(json("a\nb")) == R"("a\nb")");  // dump() escapes control characters
  CHECK(hooklens::brief_json(json(std::string(100, 'y')), 20).size() == 20);
  CHECK(hooklens::brief_text(std::string(100000, 'z') + "\n").size() == 60);
  // Control characters are escaped (one line, and a NUL or a tab stays visible).
  CHECK(hooklens::brief_text(std::string("a\0b\tc\nd\x7f", 8)) == R"(a\x00b\tc\nd\x7f)");
  CHECK(hooklens::brief_text(std::string("\xff") + "ok") == "\xEF\xBF\xBDok");  // not UTF-8: U+FFFD
  // Cut on a character boundary: 56 bytes then a 3-byte character that would cross byte 57.
  CHECK(hooklens::brief_text(std::string(56, 'e') + "\xE2\x82\xAC" + std::string(10, 'e')) == std::string(56, 'e') + "...");
}

TEST_CASE("a regex that backtracks without end is an Error, not a hang") {
  TempDir dir;
  const json tj = tokenizer_json(byte_vocab(), json::array(), sequence({split("(a+)+$", "Isolated"), byte_level(false, false)}));
  write_file(dir / "tokenizer.json", tj.dump());
  const auto tok = hooklens::load_hf_tokenizer(dir.path);
  CHECK(tok->encode("aaab") == Ids{'a', 'a', 'a', 'b'});
  const auto start = std::chrono::steady_clock::now();
  check_error([&] { tok->encode(std::string(40, 'a') + "b"); }, {"regex", "(a+)+$", "backtracks"});
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(20 * test::kSlowdown));
}

// ---------------------------------------------------------------------------------------------
// llama2.c tokenizer.bin of any size

namespace {

struct Piece {
  std::string text;
  float score;
};

// Writes a tokenizer.bin as llama2.c's tokenizer.py does.
void write_llama2c(const fs::path& file, const std::vector<Piece>& pieces) {
  std::string out(4, '\0');
  std::int32_t longest = 0;
  for (const auto& p : pieces) longest = std::max(longest, std::int32_t(p.text.size()));
  std::memcpy(out.data(), &longest, 4);
  for (const auto& p : pieces) {
    char head[8];
    const auto n = std::int32_t(p.text.size());
    std::memcpy(head, &p.score, 4);
    std::memcpy(head + 4, &n, 4);
    out.append(head, 8);
    out += p.text;
  }
  write_file(file, out);
}

}  // namespace

TEST_CASE("llama2.c: a 105-token vocabulary without byte pieces loads and encodes") {
  // ids 0..2 as llama2.c's export writes them; then merges with their scores; <0x0A> at id 9 and
  // the two bytes of "é" at 10 and 11 (not byte + 3); single characters; fillers up to 105.
  std::vector<Piece> pieces = {{"<unk>", 0}, {"\n<s>\n", 0}, {"\n</s>\n", 0}, {" t", -1}, {"he", -2},
                               {"th", -3},   {" th", -4},   {" the", -5},    {" ", -6},  {"<0x0A>", 0},
                               {"<0xC3>", 0}, {"<0xA9>", 0}};
  for (char c = 'a'; c <= 'z'; ++c) pieces.push_back({std::string(1, c), -100});
  while (pieces.size() < 105) pieces.push_back({"filler" + std::to_string(pieces.size()), -200});
  TempDir dir;
  write_llama2c(dir / "tokenizer.bin", pieces);
  const auto tok = hooklens::read_llama2c_tokenizer(dir / "tokenizer.bin");
  CHECK(tok->vocab_size() == 105);
  const auto id = [&](const std::string& piece) {
    return std::int64_t(std::find_if(pieces.begin(), pieces.end(), [&](const Piece& p) { return p.text == piece; }) -
                        pieces.begin());
  };
  // [BOS, " ", t, h, e]: " t" (-1) merges first, then "he" (-2), then " t"+"he" = " the" (-5).
  CHECK(tok->encode("the") == Ids{1, id(" the")});
  CHECK(tok->encode("the", false) == Ids{id(" the")});
  // é is no piece: its bytes' pieces wherever they are.
  CHECK(tok->encode("\xC3\xA9") == Ids{1, id(" "), 10, 11});
  CHECK(tok->encode("a\n") == Ids{1, id(" "), id("a"), 9});
  CHECK(tok->decode({id(" the"), 10, 11, 9}) == " the\xC3\xA9\n");
  CHECK(tok->encode("").size() == 1);
  // A byte the vocabulary cannot spell is the user's error, naming the byte.
  CHECK_THROWS_AS(tok->encode("a\xE2\x82\xAC"), UsageError);
  CHECK_THROWS_WITH(tok->encode("a\xE2\x82\xAC"), Contains("byte 0xE2 of the text") && Contains("offset 1"));
  CHECK_THROWS_WITH(tok->encode("Q"), Contains("byte 0x51"));

  // Too small for llama2.c's BOS (id 1): a clear Error naming the file.
  write_llama2c(dir / "one.bin", {{"<unk>", 0}});
  check_error([&] { hooklens::read_llama2c_tokenizer(dir / "one.bin"); }, {(dir / "one.bin").string(), "BOS is id 1"});
  // Two tokens and no " ": the dummy prefix is a byte it cannot spell.
  write_llama2c(dir / "two.bin", {{"<unk>", 0}, {"\n<s>\n", 0}});
  const auto two = hooklens::read_llama2c_tokenizer(dir / "two.bin");
  CHECK(two->encode("") == Ids{1});
  CHECK_THROWS_WITH(two->encode("a"), Contains("byte 0x20") && Contains("dummy-prefix"));
}

TEST_CASE("llama2.c: a SentencePiece-trained 105-token vocabulary encodes as SentencePiece does") {
  if (!python_has("sentencepiece")) {
    test::skip("python3-sentencepiece is missing: the comparison with SentencePiece did not run");
    return;
  }
  TempDir dir;
  const std::vector<std::string> texts = {"the cat sat on the mat", "once upon a time there was a little girl",
                                          "the   dog ate. a bone", "cats and dogs", "t", "liked books about a gate"};
  write_file(dir / "texts.json", json(texts).dump());
  const int status = run_reference("llama2c_small_vocab.py",
                                   "'" + (dir / "tok105.bin").string() + "' '" + (dir / "texts.json").string() + "' '" +
                                       (dir / "expected.json").string() + "'",
                                   dir / "reference.log");
  INFO(read_file(dir / "reference.log"));
  REQUIRE(status == 0);
  const json expected = read_json(dir / "expected.json");
  REQUIRE(expected["vocab_size"] == 105);
  REQUIRE(expected["bos_id"] == 1);
  const auto tok = hooklens::read_llama2c_tokenizer(dir / "tok105.bin");
  CHECK(tok->vocab_size() == 105);
  for (std::size_t i = 0; i < texts.size(); ++i) {
    INFO(texts[i]);
    CHECK(tok->encode(texts[i]) == expected["ids"][i].get<Ids>());
  }
  CHECK_THROWS_AS(tok->encode("zebra"), UsageError);  // 'z' is in no piece, and there are no byte pieces
}

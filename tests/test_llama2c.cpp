// The custom adapter on llama2.c checkpoints: the fixture (a real trained model) against an
// independent float64 reference (tests/reference/llama2c_reference.py: logits, every layer's
// attention, tokenizer encodes), greedy generation against the README's observation of llama2.c's
// own program, the version-1 layout against the legacy one, and refusal of malformed files.
#include "model_util.h"

#include <ATen/ATen.h>

#include <hooklens/generate.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>
#include <hooklens/weights.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>

using namespace hooklens;
namespace fs = std::filesystem;

namespace {

using test::kPython;

fs::path fixture_dir() { return test::fixtures() / "llama2c"; }
fs::path checkpoint() { return fixture_dir() / "aidreams260K.bin"; }
fs::path tokenizer_file() { return fixture_dir() / "aidreams260K.tok512.bin"; }

std::shared_ptr<Adapter> adapter() {
  return std::static_pointer_cast<Adapter>(PluginRegistry::create_from(test::plugin_file("custom"), "adapter"));
}

std::shared_ptr<Model> load(const fs::path& file, const LoadOptions& options = {}) {
  auto a = adapter();
  return tie_lifetime(a->load(file, options), a);
}

void write_bytes(const fs::path& file, const std::string& bytes) {
  std::ofstream(file, std::ios::binary) << bytes;
}

std::string hex(const std::string& s) {
  std::string out;
  for (unsigned char c : s) out += fmt::format("{:02x}", c);
  return out;
}

const std::vector<std::string> kTexts = {"Once upon a time", "", "hello world",
                                         "caf\u00e9 \u65e5\u672c \U0001F642 x", "  two  spaces\nand a line"};

std::vector<std::int64_t> ids_of(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return std::vector<std::int64_t>(c.data_ptr<std::int64_t>(), c.data_ptr<std::int64_t>() + c.numel());
}

void set_i32(std::string& bytes, size_t at, std::int32_t v) { std::memcpy(&bytes[at], &v, 4); }

// The legacy fixture rewritten in llama2.c's "ak42" version-1 layout (norms first, no RoPE tables).
std::string to_v1(const std::string& legacy) {
  REQUIRE(legacy.size() > 28);
  std::int32_t p[7];
  std::memcpy(p, legacy.data(), 28);
  const size_t D = size_t(p[0]), F = size_t(p[1]), L = size_t(p[2]), KV = D * size_t(p[4]) / size_t(p[3]),
               V = size_t(std::abs(p[5]));
  REQUIRE(p[5] > 0);  // the fixture's classifier is shared
  std::vector<std::pair<size_t, size_t>> parts;  // legacy byte offset, size, in legacy order
  size_t at = 28;
  for (size_t n : {V * D, L * D, L * D * D, L * KV * D, L * KV * D, L * D * D, L * D, L * F * D, L * D * F,
                   L * F * D, D}) {
    parts.push_back({at, n * 4});
    at += n * 4;
  }
  std::string out(256, '\0');
  set_i32(out, 0, 0x616b3432);
  set_i32(out, 4, 1);
  std::memcpy(&out[8], p, 28);
  out[36] = 1;
  for (int i : {1, 6, 10, 0, 2, 3, 4, 5, 7, 8, 9}) out += legacy.substr(parts[i].first, parts[i].second);
  return out;
}

}  // namespace

TEST_CASE("llama2.c fixture: logits, attention and encodes match the float64 reference", "[fixtures]") {
  if (!test::python_has("numpy")) {
    test::skip(std::string(kPython) + " cannot import numpy");
    return;
  }
  test::TempDir dir;
  const fs::path out = dir / "ref.safetensors", log = dir / "ref.log";
  std::ostringstream cmd;
  cmd << "'" << checkpoint().string() << "' '" << tokenizer_file().string() << "' '" << out.string() << "' "
      << hex(kTexts[0]);
  for (const auto& t : kTexts) cmd << " '" << hex(t) << "'";
  const int status = test::run_python(fs::path(HOOKLENS_SOURCE_DIR) / "tests/reference/llama2c_reference.py", cmd.str(), log);
  INFO(test::read_file(log));
  REQUIRE(status == 0);
  TensorMap ref = read_safetensors(out);

  auto model = load(checkpoint());
  const Tokenizer* tok = model->tokenizer();
  REQUIRE(tok);
  for (size_t i = 0; i < kTexts.size(); ++i) {
    INFO("text " << i << ": " << kTexts[i]);
    CHECK(tok->encode(kTexts[i]) == ids_of(ref.at(fmt::format("enc.{}", i))));
  }

  const auto ids = tok->encode(kTexts[0]);
  REQUIRE(ids == ids_of(ref.at("input_ids")));
  test::Recorder rec({"*hook_pattern", "*hook_rot_q"});
  const at::Tensor input = at::tensor(at::ArrayRef<std::int64_t>(ids), at::kLong).unsqueeze(0);
  const double logits = test::max_abs_diff(model->forward(input, rec.hooks, {}, nullptr), ref.at("logits"));
  CHECK(logits < 1e-4);
  double pattern = 0;
  for (int l = 0; l < model->info().n_layers; ++l) {
    INFO("layer " << l);
    const double d = test::max_abs_diff(rec.at(fmt::format("blocks.{}.attn.hook_pattern", l)), ref.at(fmt::format("attn.L{}", l)));
    CHECK(d < 1e-5);
    pattern = std::max(pattern, d);
    CHECK(rec.seen.count(fmt::format("blocks.{}.attn.hook_rot_q@0", l)) == 1);
  }
  std::cout << "llama2.c reference (" << ids.size() << " tokens) max |diff|: logits " << logits << "; pattern "
            << pattern << "\n";
}

TEST_CASE("llama2.c fixture: what the model reports", "[fixtures]") {
  auto model = load(checkpoint());
  const ModelInfo& info = model->info();
  CHECK(info.adapter == "custom");
  CHECK(info.architecture == "llama2.c");
  CHECK((info.n_layers == 4 && info.n_heads == 4 && info.n_kv_heads == 4 && info.d_model == 64 && info.d_head == 16 &&
         info.d_mlp == 172 && info.vocab_size == 512 && info.n_ctx == 128));
  CHECK(info.layer_attention == std::vector<AttentionKind>(4, AttentionKind::causal));
  CHECK(info.bos_id == 1);
  CHECK(info.eos_id == 2);
  const Tokenizer* tok = model->tokenizer();
  REQUIRE(tok);
  CHECK(tok->vocab_size() == 512);
  // Token strings are each piece's text: byte-fallback pieces as their byte, a leading space kept.
  CHECK(tok->token_string(1) == "\n<s>\n");
  CHECK(tok->token_string(0x41 + 3) == "A");
  CHECK(tok->token_string(0xC3 + 3) == "\xef\xbf\xbd");  // a lone UTF-8 lead byte
  CHECK(tok->token_id(" ") == 429);
  CHECK(tok->token_string(429) == " ");
  CHECK(tok->decode({0xC3 + 3, 0xA9 + 3}) == "\u00e9");
  CHECK_THROWS_AS(tok->token_string(512), UsageError);
}

TEST_CASE("llama2.c fixture: greedy generation with the KV cache continues as llama2.c's program does", "[fixtures]") {
  auto model = load(checkpoint());
  SamplingOptions opts;
  opts.max_new_tokens = 60;
  opts.stop_at_eos = false;
  const auto result = generate_autoregressive(*model, model->tokenizer()->encode("Once upon a time"), opts, {});
  const std::string text = model->tokenizer()->decode(result.new_ids);
  INFO(text);
  CHECK(text.rfind(", pixels unfolding like petals. Classifications unfold, a kaleidoscope of probability revealing hidden patterns.", 0) == 0);
}

TEST_CASE("llama2.c version-1 layout gives the same model as the legacy one", "[fixtures]") {
  test::TempDir dir;
  write_bytes(dir / "v1.bin", to_v1(test::read_file(checkpoint())));
  REQUIRE(test::adapter_score("custom", dir / "v1.bin") > 0);
  auto legacy = load(checkpoint());
  auto v1 = load(dir / "v1.bin");
  CHECK(v1->tokenizer() == nullptr);  // no tokenizer beside it: ids only
  const at::Tensor ids = at::tensor({1, 429, 491, 433, 295, 429}, at::kLong).unsqueeze(0);
  CHECK(test::max_abs_diff(legacy->forward(ids, {}, {}, nullptr), v1->forward(ids, {}, {}, nullptr)) == 0);
}

TEST_CASE("llama2.c: malformed files are refused with an Error naming the file", "[fixtures]") {
  test::TempDir dir;
  const std::string good = test::read_file(checkpoint());
  auto refused = [&](const std::string& name, const std::string& bytes, const std::string& why) {
    INFO(name);
    const fs::path file = dir / name;
    write_bytes(file, bytes);
    CHECK(test::adapter_score("custom", file) == 0);
    const std::string error = test::error_of([&] { load(file); });
    CHECK(error.find(file.string()) != std::string::npos);
    CHECK(error.find(why) != std::string::npos);
  };
  refused("truncated.bin", good.substr(0, good.size() - 4), "implies");
  refused("short.bin", good.substr(0, 20), "too short");
  std::string wrong_dim = good;
  set_i32(wrong_dim, 0, 65);
  refused("wrong-dim.bin", wrong_dim, "even head size");
  std::string wrong_layers = good;
  set_i32(wrong_layers, 8, 5);
  refused("wrong-layers.bin", wrong_layers, "implies");
  std::string huge = good;
  for (size_t at : {0, 4, 8}) set_i32(huge, at, 0x7fffff00);
  refused("huge.bin", huge, "overflow");
  std::string zero = good;
  set_i32(zero, 12, 0);
  refused("zero-heads.bin", zero, "not positive");

  // Version 2 is a llama2.c file, so the adapter takes it, and refuses it clearly.
  std::string v2 = to_v1(good);
  set_i32(v2, 4, 2);
  write_bytes(dir / "v2.bin", v2);
  CHECK(test::adapter_score("custom", dir / "v2.bin") > 0);
  const std::string error = test::error_of([&] { load(dir / "v2.bin"); });
  CHECK(error.find((dir / "v2.bin").string()) != std::string::npos);
  CHECK(error.find("version 2") != std::string::npos);

  // Not a checkpoint: the tokenizer itself, and a right-sized file with another extension.
  CHECK(test::adapter_score("custom", tokenizer_file()) == 0);
  write_bytes(dir / "model.pt", good);
  CHECK(test::adapter_score("custom", dir / "model.pt") == 0);
}

TEST_CASE("llama2.c: the tokenizer beside the checkpoint, by name or by vocabulary size", "[fixtures]") {
  test::TempDir dir;
  const std::string good = test::read_file(checkpoint()), tok = test::read_file(tokenizer_file());
  write_bytes(dir / "m.bin", good);
  CHECK(load(dir / "m.bin")->tokenizer() == nullptr);  // none: the model takes ids only

  write_bytes(dir / "tok-other.bin", tok.substr(0, tok.size() - 8));  // malformed tok*.bin: skipped
  CHECK(load(dir / "m.bin")->tokenizer() == nullptr);
  write_bytes(dir / "tok512.bin", tok);
  REQUIRE(load(dir / "m.bin")->tokenizer());
  CHECK(load(dir / "m.bin")->tokenizer()->encode("Once upon a time").size() == 13);

  // An explicit tokenizer that is truncated or of another vocabulary size is an Error naming it.
  write_bytes(dir / "tokenizer.bin", tok.substr(0, tok.size() - 3));
  std::string error = test::error_of([&] { load(dir / "m.bin"); });
  CHECK(error.find((dir / "tokenizer.bin").string()) != std::string::npos);
  LoadOptions options;
  options.tokenizer = dir / "short.tok";
  // The first 300 tokens only: a well-formed file with the wrong vocabulary size.
  size_t at = 4;
  for (int i = 0; i < 300; ++i) {
    std::int32_t n;
    std::memcpy(&n, &tok[at + 4], 4);
    at += 8 + size_t(n);
  }
  write_bytes(options.tokenizer, tok.substr(0, at));
  error = test::error_of([&] { load(dir / "m.bin", options); });
  CHECK(error.find(options.tokenizer.string()) != std::string::npos);
  CHECK(error.find("300 tokens") != std::string::npos);
}

TEST_CASE("llama2.c: a model with a 105-token vocabulary and no byte pieces loads, encodes and generates", "[fixtures]") {
  // The fixture's body with its first 105 embedding rows (the classifier is shared), and a custom
  // vocabulary written as llama2.c's tokenizer.py writes one: no <0xNN> pieces at all.
  const std::string good = test::read_file(checkpoint());
  REQUIRE(good.size() > 28);
  std::int32_t p[7];
  std::memcpy(p, good.data(), 28);
  REQUIRE(p[5] == 512);
  const size_t D = size_t(p[0]), kVocab = 105;
  std::string small = good.substr(0, 28) + good.substr(28, kVocab * D * 4) + good.substr(28 + 512 * D * 4);
  set_i32(small, 20, std::int32_t(kVocab));
  test::TempDir dir;
  write_bytes(dir / "model.bin", small);

  std::vector<std::pair<std::string, float>> pieces = {{"<unk>", 0}, {"<s>", 0}, {"</s>", 0}, {" ", -1}};
  for (char c = 'a'; c <= 'z'; ++c) pieces.push_back({std::string(1, c), -2});
  for (char c = 'A'; c <= 'Z'; ++c) pieces.push_back({std::string(1, c), -3});
  for (const char* merge : {"he", "ll", "llo", "hello", " hello", "or", "ld", "orld", " w", " world", "on", "ce"})
    pieces.push_back({merge, 10.0f - float(pieces.size()) / 100});
  while (pieces.size() < kVocab) pieces.push_back({fmt::format("x{}y", pieces.size()), -50});
  std::string tok(4, '\0');
  set_i32(tok, 0, 16);
  for (const auto& [piece, score] : pieces) {
    std::string entry(8, '\0');
    std::memcpy(&entry[0], &score, 4);
    set_i32(entry, 4, std::int32_t(piece.size()));
    tok += entry + piece;
  }
  write_bytes(dir / "tokenizer.bin", tok);

  auto model = load(dir / "model.bin");
  REQUIRE(model->tokenizer());
  CHECK(model->info().vocab_size == 105);
  // BOS, then " hello" and " world" merged as llama2.c's encoder does (dummy-prefix space).
  const auto ids = model->tokenizer()->encode("hello world");
  const auto id = [&](const std::string& piece) { return *model->tokenizer()->token_id(piece); };
  CHECK(ids == std::vector<std::int64_t>{1, id(" hello"), id(" world")});
  // A byte the vocabulary cannot spell is a usage error naming it, not a wrong id.
  CHECK_THROWS_WITH(model->tokenizer()->encode("caf\u00e9"), Catch::Contains("0xC3"));

  // Its numbers are the full model's on the same ids (the first 105 rows of the shared classifier).
  auto full = load(checkpoint());
  const at::Tensor input = at::tensor(ids, at::kLong).unsqueeze(0);
  HookSet none;
  CHECK(test::max_abs_diff(model->forward(input, none, {}, nullptr),
                           full->forward(input, none, {}, nullptr).narrow(2, 0, 105)) < 1e-5);
  // And the command line runs it end to end.
  test::require_hooklens(fmt::format("generate --model '{}' --prompt 'hello world' --max-new-tokens 4 --out '{}'",
                                     (dir / "model.bin").string(), (dir / "run").string()),
                         dir / "generate.log");
  CHECK(test::run_hooklens(fmt::format("generate --model '{}' --prompt 'caf\u00e9' --out '{}'", (dir / "model.bin").string(),
                                       (dir / "run2").string()),
                           dir / "refused.log") == 2);
}

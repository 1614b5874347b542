// The custom adapter on PyTorch state dicts of from-scratch GPTs with an architecture spec:
// tests/reference/make_state_dict.py builds "LLMs from scratch" GPTModels (qkv_bias off and on) and
// nanoGPT GPTs (a ckpt.pt-style checkpoint of a torch.compile'd model with bias, and a bare state
// dict without), and saves their eager logits, attention patterns and greedy generations. Loaded
// through the shipped specs (specs/raschka-gpt.json, specs/nanogpt.json), hooklens must match them,
// also when resharded (safetensors or torch.save shards with an index, a single model.safetensors);
// bad specs and files must fail with errors naming the file.
#include "resource_bounds.h"
#include "model_util.h"
#include "shard_util.h"

#include <hooklens/generate.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>
#include <hooklens/weights.h>

#include <nlohmann/json.hpp>

#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <set>

using namespace hooklens;
namespace fs = std::filesystem;

namespace {

std::shared_ptr<Adapter> adapter() {
  return std::static_pointer_cast<Adapter>(PluginRegistry::create_from(test::plugin_file("custom"), "adapter"));
}

bool make_models(const test::TempDir& dir) {
  if (!test::python_has("torch, numpy")) return false;
  const fs::path script = fs::path(HOOKLENS_SOURCE_DIR) / "tests/reference/make_state_dict.py";
  if (test::run_python(script, "'" + dir.path.string() + "'", dir / "log") != 0)
    FAIL("make_state_dict.py failed: " << test::read_file(dir / "log"));
  return true;
}

// The state dicts and their eager references, made once per test run; null without torch, and
// then the calling case is reported as skipped (it returns at once).
const test::TempDir* models() {
  static const test::TempDir dir;
  static const bool made = make_models(dir);
  if (!made) test::skip(std::string(test::kPython) + " cannot import torch and numpy: the state dicts were not made");
  return made ? &dir : nullptr;
}

fs::path write_spec(const test::TempDir& dir, const std::string& name, const std::string& text) {
  const fs::path file = dir / name;
  std::ofstream(file) << text;
  return file;
}

// The test models have 4 heads, where the shipped raschka-gpt spec says GPT-2 124M's 12.
const char* const kRaschka4 = R"({"extends": "raschka-gpt", "n_heads": 4})";

std::shared_ptr<Model> load(const fs::path& file, const std::string& spec) {
  auto a = adapter();
  REQUIRE(test::adapter_score("custom", file) > 0);
  LoadOptions options;
  options.spec = spec;
  return tie_lifetime(a->load(file, options), a);
}

std::string load_error(const fs::path& file, const std::string& spec) {
  return test::error_of([&] { load(file, spec); });
}

// Loads `model` (the state dict `name` in any form) and compares it with name's eager references.
void check_model_at(const fs::path& model_path, const std::string& name, const std::string& spec,
                    const std::string& architecture, int n_layers) {
  auto model = load(model_path, spec);
  TensorMap ref = read_safetensors(*models() / (name + ".safetensors"));
  const ModelInfo& info = model->info();
  CHECK(info.architecture == architecture);
  CHECK(info.n_layers == n_layers);
  CHECK(info.n_heads == 4);
  CHECK(info.n_kv_heads == 4);
  CHECK(info.n_ctx == 32);
  CHECK(info.vocab_size == 100);
  CHECK(info.layer_attention == std::vector<AttentionKind>(n_layers, AttentionKind::causal));

  std::set<std::string> points;
  for (const auto& p : model->hook_points()) points.insert(p.name);
  for (const char* expected : {"hook_embed", "hook_pos_embed", "ln_final.hook_normalized", "hook_logits"})
    CHECK(points.count(expected));
  for (int l = 0; l < n_layers; ++l)
    for (const char* hook : {"attn.hook_pattern", "attn.hook_q", "hook_resid_post", "mlp.hook_post"})
      CHECK(points.count(fmt::format("blocks.{}.{}", l, hook)));

  test::Recorder rec({"blocks.*.attn.hook_pattern", "hook_logits"});
  const at::Tensor logits = model->forward(ref.at("ids"), rec.hooks, {}, nullptr);
  CHECK(test::max_abs_diff(logits, ref.at("logits")) < 1e-5);
  for (int l = 0; l < n_layers; ++l) {
    INFO(name << " layer " << l);
    CHECK(test::max_abs_diff(rec.at(fmt::format("blocks.{}.attn.hook_pattern", l)), ref.at(fmt::format("pattern.{}", l))) <
          1e-5);
  }

  // Greedy generation through the KV cache against the eager model re-run on the whole sequence.
  const at::Tensor prompt = ref.at("prompt"), greedy = ref.at("greedy");
  SamplingOptions sampling;
  sampling.max_new_tokens = int(greedy.size(0) - prompt.size(0));
  sampling.stop_at_eos = false;
  REQUIRE(model->new_state() != nullptr);
  const auto result = generate_autoregressive(
      *model, std::vector<std::int64_t>(prompt.data_ptr<std::int64_t>(), prompt.data_ptr<std::int64_t>() + prompt.numel()),
      sampling, HookSet());
  CHECK(result.output_ids ==
        std::vector<std::int64_t>(greedy.data_ptr<std::int64_t>(), greedy.data_ptr<std::int64_t>() + greedy.numel()));
}

void check_model(const std::string& name, const std::string& spec, const std::string& architecture, int n_layers) {
  check_model_at(*models() / (name + ".pt"), name, spec, architecture, n_layers);
}

// Runs build/bin/hooklens ARGS; returns the exit code, with stdout + stderr in `output`.
int run_cli(const std::string& args, const test::TempDir& dir, std::string& output) {
  const fs::path log = dir / "cli.log";
  const int status = std::system(fmt::format("HOOKLENS_PLUGIN_PATH= '{}' {} >'{}' 2>&1",
                                             (test::build_dir() / "bin" / "hooklens").string(), args, log.string())
                                     .c_str());
  output = test::read_file(log);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

TEST_CASE("state dicts with a spec: logits, patterns and KV-cache generation match the eager models") {
  if (!models()) return;
  const test::TempDir dir;
  const std::string raschka = write_spec(dir, "raschka4.json", kRaschka4).string();
  SECTION("LLMs from scratch GPTModel, qkv_bias false") { check_model("raschka", raschka, "raschka-gpt", 2); }
  SECTION("LLMs from scratch GPTModel, qkv_bias true") { check_model("raschka_qkv_bias", raschka, "raschka-gpt", 2); }
  SECTION("nanoGPT ckpt.pt of a compiled model: heads from model_args, shipped spec by name") {
    check_model("nanogpt_ckpt", "nanogpt", "nanogpt", 3);
  }
  SECTION("nanoGPT bias=False bare state dict: a user spec extending the shipped one") {
    const fs::path spec = write_spec(dir, "nano4.json", R"({"extends": "nanogpt", "n_heads": 4, "architecture": "mine"})");
    check_model("nanogpt_nobias", spec.string(), "mine", 3);
  }
}

TEST_CASE("state dicts: sharded, as safetensors, as a directory or an index file", "[fixtures]") {
  if (!models()) return;
  const test::TempDir dir;
  const std::string raschka = write_spec(dir, "raschka4.json", kRaschka4).string();
  const TensorMap tensors = read_pytorch_checkpoint(*models() / "raschka.pt");

  SECTION("torch.save shards and pytorch_model.bin.index.json: the directory, and the index file itself") {
    const test::TempDir shards;
    REQUIRE(test::write_bin_shards(*models() / "raschka.pt", shards.path, 3));
    CHECK(test::shards_holding(shards / "pytorch_model.bin.index.json", "trf_blocks.0.").size() == 3);
    check_model_at(shards.path, "raschka", raschka, "raschka-gpt", 2);
    check_model_at(shards / "pytorch_model.bin.index.json", "raschka", raschka, "raschka-gpt", 2);
  }
  SECTION("safetensors shards and model.safetensors.index.json") {
    const test::TempDir shards;
    test::write_safetensors_shards(tensors, shards.path, 4);
    CHECK(test::shards_holding(shards / "model.safetensors.index.json", "trf_blocks.1.").size() == 4);
    check_model_at(shards.path, "raschka", raschka, "raschka-gpt", 2);
    check_model_at(shards / "model.safetensors.index.json", "raschka", raschka, "raschka-gpt", 2);
  }
  SECTION("one model.safetensors: the directory (with a config.json naming no model_type), and the file") {
    const test::TempDir single;
    write_safetensors(single / "model.safetensors", {tensors.begin(), tensors.end()});
    std::ofstream(single / "config.json") << R"({"n_layers": 2})";
    check_model_at(single.path, "raschka", raschka, "raschka-gpt", 2);
    check_model_at(single / "model.safetensors", "raschka", raschka, "raschka-gpt", 2);
    // A directory's tokenizer files are used, as in a Hugging Face directory (this one is too big).
    for (const char* f : {"vocab.json", "merges.txt"}) fs::create_symlink(test::fixtures() / "tiny-neo-a" / f, single / f);
    CHECK_THAT(load_error(single.path, raschka), Catch::Contains("50257 tokens, more than the model's vocabulary of 100"));
  }
  SECTION("nanoGPT shards: the tied lm_head in the embedding's shard (one storage), or in another (a copy)") {
    const std::string spec = write_spec(dir, "nano4.json", R"({"extends": "nanogpt", "n_heads": 4, "architecture": "mine"})").string();
    for (const int n : {3, 5}) {
      INFO(n << " shards");
      const test::TempDir shards;
      REQUIRE(test::write_bin_shards(*models() / "nanogpt_nobias.pt", shards.path, n));
      const auto together = test::shards_holding(shards / "pytorch_model.bin.index.json", "lm_head.weight") ==
                            test::shards_holding(shards / "pytorch_model.bin.index.json", "transformer.wte.weight");
      CHECK(together == (n == 3));
      check_model_at(shards.path, "nanogpt_nobias", spec, "mine", 3);
    }
  }
  SECTION("a directory that names a model_type (or whose config.json is broken) belongs to another adapter") {
    CHECK(test::adapter_score("custom", test::fixtures() / "tiny-neo-a") == 0);
    const test::TempDir broken;
    write_safetensors(broken / "model.safetensors", {tensors.begin(), tensors.end()});
    std::ofstream(broken / "config.json") << "{";
    CHECK(test::adapter_score("custom", broken.path) == 0);
    const test::TempDir empty;
    CHECK(test::adapter_score("custom", empty.path) == 0);  // no weights
  }
  SECTION("index problems are errors naming the index or the shard") {
    const test::TempDir shards;
    test::write_safetensors_shards(tensors, shards.path, 3);
    const fs::path index = shards / "model.safetensors.index.json";
    fs::remove(shards / "model-00002-of-00003.safetensors");
    CHECK_THAT(load_error(shards.path, raschka),
               Catch::Contains(index.string()) && Catch::Contains("'model-00002-of-00003.safetensors' does not exist"));
    std::ofstream(index) << R"({"weight_map": {"tok_emb.weight": "../raschka.safetensors"}})";
    CHECK_THAT(load_error(index, raschka), Catch::Contains("not inside the model directory"));
  }
  SECTION("the CLI: --model DIR --spec S") {
    const test::TempDir shards;
    REQUIRE(test::write_bin_shards(*models() / "raschka.pt", shards.path, 3));
    std::string out;
    CHECK(run_cli(fmt::format("info --model '{}' --spec '{}'", shards.path.string(), raschka), dir, out) == 0);
    CHECK_THAT(out, Catch::Contains("raschka-gpt") && Catch::Contains("custom"));
    CHECK(run_cli(fmt::format("info --model '{}'", shards.path.string()), dir, out) == 2);
    CHECK_THAT(out, Catch::Contains("--spec"));
  }
}

TEST_CASE("state dicts: checkpoint dicts are read with their plain values") {
  if (!models()) return;
  std::string key;
  nlohmann::json plain;
  const TensorMap tensors = read_pytorch_checkpoint(*models() / "nanogpt_ckpt.pt", &key, &plain);
  CHECK(key == "model");
  CHECK(tensors.count("_orig_mod.transformer.wte.weight"));
  CHECK(tensors.count("_orig_mod.lm_head.weight"));
  CHECK(plain.at("model_args").at("n_head") == 4);
  CHECK(plain.at("model_args").at("bias") == true);
  CHECK(plain.at("config").at("learning_rate").get<double>() == 1e-3);
  CHECK(plain.at("config").at("wandb_run_name").is_null());
  CHECK(plain.at("iter_num") == 1);
  CHECK_FALSE(plain.contains("optimizer"));      // holds tensors
  CHECK_FALSE(plain.contains("best_val_loss"));  // a tensor
  // A bare state dict is its own top level.
  CHECK(read_pytorch_checkpoint(*models() / "raschka.pt", &key).count("tok_emb.weight"));
  CHECK(key.empty());
  // read_pytorch_bin still wants a bare state dict.
  CHECK_THROWS_AS(read_pytorch_bin(*models() / "nanogpt_ckpt.pt"), Error);
}

TEST_CASE("state dicts: bad specs and files fail with errors naming the file") {
  if (!models()) return;
  const test::TempDir dir;
  const fs::path raschka = *models() / "raschka.pt";
  auto spec = [&](const std::string& text) { return write_spec(dir, "spec.json", text).string(); };
  using Catch::Contains;

  SECTION("no spec: a usage error listing the shipped specs") {
    auto a = adapter();
    CHECK(test::adapter_score("custom", raschka) > 0);
    CHECK_THROWS_AS(a->load(raschka, {}), UsageError);
    CHECK_THAT(test::error_of([&] { a->load(raschka, {}); }),
               Contains(raschka.string()) && Contains("--spec") && Contains("raschka-gpt") && Contains("nanogpt"));
    CHECK_THAT(load_error(raschka, "no-such-spec"), Contains("no-such-spec") && Contains("raschka-gpt"));
  }
  SECTION("heads: nanoGPT's spec on a bare state dict has no model_args to read") {
    CHECK_THAT(load_error(*models() / "nanogpt_nobias.pt", "nanogpt"),
               Contains("nanogpt_nobias.pt") && Contains("model_args.n_head"));
    CHECK_THAT(load_error(raschka, spec(R"({"extends": "raschka-gpt", "n_heads": 5})")),
               Contains(raschka.string()) && Contains("5 heads"));
  }
  SECTION("a template naming a missing tensor") {
    const std::string s = spec(R"({"extends": "raschka-gpt", "n_heads": 4, "tensors": {"lnf_w": "final_norm.gamma"}})");
    CHECK_THAT(load_error(raschka, s), Contains(raschka.string()) && Contains("final_norm.gamma") && Contains(s));
    // A per-layer template that exists for no layer.
    const std::string t = spec(R"({"extends": "raschka-gpt", "n_heads": 4, "tensors": {"W_o": "blocks.{i}.proj.weight"}})");
    CHECK_THAT(load_error(raschka, t), Contains("blocks.0.proj.weight"));
  }
  SECTION("a tensor neither mapped nor ignored") {
    const std::string s = spec(R"({"extends": "raschka-gpt", "n_heads": 4, "ignore": []})");
    CHECK_THAT(load_error(raschka, s), Contains(raschka.string()) && Contains("trf_blocks.0.att.mask"));
    // Biases the spec does not mention are left over too.
    const std::string b = spec(R"({"extends": "raschka-gpt", "n_heads": 4, "tensors": {"b_o": null}})");
    CHECK_THAT(load_error(raschka, b), Contains("trf_blocks.0.att.out_proj.bias"));
  }
  SECTION("only biases may be optional") {
    const std::string s = spec(R"({"extends": "raschka-gpt", "n_heads": 4, "optional": ["W_q"]})");
    CHECK_THAT(load_error(raschka, s), Contains(s) && Contains("'optional'") && Contains("W_q"));
  }
  SECTION("malformed specs") {
    const std::string bad_json = spec(R"({"n_heads": 4,)");
    CHECK_THAT(load_error(raschka, bad_json), Contains(bad_json) && Contains("malformed JSON"));
    const std::string unknown = spec(R"({"extends": "raschka-gpt", "n_heads": 4, "colour": "blue"})");
    CHECK_THAT(load_error(raschka, unknown), Contains(unknown) && Contains("'colour'") && Contains("unknown key"));
    const std::string nested = spec(R"({"extends": "raschka-gpt", "n_heads": 4, "norm": {"type": "layer", "epsilon": 1e-5}})");
    CHECK_THAT(load_error(raschka, nested), Contains(nested) && Contains("norm.epsilon"));
    const std::string type = spec(R"({"extends": "raschka-gpt", "n_heads": "four"})");
    CHECK_THAT(load_error(raschka, type), Contains(type) && Contains("'n_heads'") && Contains("integer"));
    const std::string role = spec(R"({"extends": "raschka-gpt", "n_heads": 4, "tensors": {"W_x": "x.{i}"}})");
    CHECK_THAT(load_error(raschka, role), Contains(role) && Contains("tensors.W_x") && Contains("unknown role"));
    const std::string layer = spec(R"({"extends": "raschka-gpt", "n_heads": 4, "tensors": {"W_o": "out_proj.weight"}})");
    CHECK_THAT(load_error(raschka, layer), Contains(layer) && Contains("{i}"));
    const std::string act = spec(R"({"extends": "raschka-gpt", "n_heads": 4, "activation": {"function": "swish"}})");
    CHECK_THAT(load_error(raschka, act), Contains(act) && Contains("activation.function"));
    CHECK_THAT(load_error(raschka, spec("[1, 2]")), Contains("JSON object"));
  }
  SECTION("a spec nested 5000 levels deep, or with a 100 KB value: one short line") {
    const std::string deep = spec(R"({"extends": "raschka-gpt", "n_heads": )" + std::string(5000, '[') + "4" +
                                  std::string(5000, ']') + "}");
    CHECK_THAT(load_error(raschka, deep), Contains(deep) && Contains("nested deeper than 128 levels"));
    const std::string huge = spec(R"({"extends": "raschka-gpt", "n_heads": ")" + std::string(100000, 'x') + R"("})");
    const std::string message = load_error(raschka, huge);
    CHECK_THAT(message, Contains(huge) && Contains("'n_heads'") && Contains("xxx..."));
    CHECK(message.size() < huge.size() + 200);
  }
  SECTION("a truncated archive") {
    const std::string whole = test::read_file(raschka);
    const fs::path cut = dir / "cut.pt";
    std::ofstream(cut, std::ios::binary) << whole.substr(0, whole.size() / 2);
    LoadOptions options;
    options.spec = spec(kRaschka4);
    auto a = adapter();
    CHECK_THAT(test::error_of([&] { a->load(cut, options); }), Contains(cut.string()));
  }
}

TEST_CASE("state dicts: the CLI takes --spec") {
  if (!models()) return;
  const test::TempDir dir;
  const std::string spec = write_spec(dir, "raschka4.json", kRaschka4).string();
  const std::string model = (*models() / "raschka.pt").string();
  std::string out;
  CHECK(run_cli(fmt::format("info --model '{}' --spec '{}'", model, spec), dir, out) == 0);
  CHECK_THAT(out, Catch::Contains("raschka-gpt") && Catch::Contains("blocks.{L}.attn.hook_pattern"));
  CHECK(run_cli(fmt::format("info --model '{}'", model), dir, out) == 2);
  CHECK_THAT(out, Catch::Contains("hooklens: error:") && Catch::Contains("--spec"));
}

namespace {

// Hostile torch.save files, each a real zip (PyTorchFileWriter) around a hand-written pickle.
const char* const kHostileScript = R"PY(
import os, struct, sys, torch
d = sys.argv[1]
def archive(path, pkl, data=struct.pack('<f', 1.0)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    w = torch._C.PyTorchFileWriter(path)
    w.write_record('data.pkl', pkl, len(pkl))
    w.write_record('data/0', data, len(data))
    w.write_end_of_file()
def text(s):
    b = s.encode()
    return b'X' + struct.pack('<I', len(b)) + b
# A checkpoint whose model_args is 60 levels of tuples, each holding the level below twice
# (it and a BINGET of it, then MEMOIZE): 2^60 values if shared objects were expanded.
dag = b')\x94' + b''.join(b'h%c\x86\x94' % i for i in range(60))
archive(os.path.join(d, 'dag.pt'), b'\x80\x04}(' + text('model') + b'}' + text('model_args') + dag + b'u.')
# nanoGPT's wte as a [24000, 24000] view of a 1-element storage with stride (0, 0): 2.3 GB as floats.
storage = b'(' + text('storage') + b'ctorch\nFloatStorage\n' + text('0') + text('cpu') + b'K\x01tQ'
wte = (b'ctorch._utils\n_rebuild_tensor_v2\n(' + storage + b'K\x00' + b'M\xc0\x5dM\xc0\x5d\x86' +
       b'K\x00K\x00\x86' + b'\x89' + b'ccollections\nOrderedDict\n)R' + b'tR')
archive(os.path.join(d, 'repeat', 'pytorch_model.bin'), b'\x80\x02}(' + text('transformer.wte.weight') + wte + b'u.')
assert torch.load(os.path.join(d, 'repeat', 'pytorch_model.bin'))['transformer.wte.weight'].shape == (24000, 24000)
)PY";

}  // namespace

TEST_CASE("state dicts: hostile pickles are refused at once, with little memory") {
  if (!test::python_has("torch")) {
    test::skip(std::string(test::kPython) + " cannot import torch, so no hostile archives can be made");
    return;
  }
  const test::TempDir dir;
  std::ofstream(dir / "make.py") << kHostileScript;
  REQUIRE(test::run_python(dir / "make.py", "'" + dir.path.string() + "'", dir / "make.log") == 0);

  const auto refuse = [&](const fs::path& model, const std::string& fragment) {
    const auto start = std::chrono::steady_clock::now();
    const test::Measured m = test::run_hooklens_measured(
        fmt::format("info --model '{}' --spec nanogpt", model.string()), dir / "cli.log");
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const std::string out = test::read_file(dir / "cli.log");
    INFO(out << "(" << seconds << " s, peak RSS " << (m.peak_rss_kib >> 10) << " MiB)");
    CHECK(m.status == 1);
    CHECK(out.rfind("hooklens: error: ", 0) == 0);
    CHECK(std::count(out.begin(), out.end(), '\n') == 1);
    CHECK_THAT(out, Catch::Contains(model.string()) && Catch::Contains(fragment));
    CHECK(seconds < 10 * test::kSlowdown);  // a few seconds at most on a loaded machine; it ran > 90 s before
    if (!test::kSanitized) CHECK(m.peak_rss_kib < (1 << 20));  // < 1 GiB
  };
  SECTION("an object shared at each of 60 levels") {
    refuse(dir / "dag.pt", "plain values expand to more than 64 MiB of JSON");
  }
  SECTION("a stride-0 view larger than its storage") {
    refuse(dir / "repeat", "tensor of shape [24000, 24000] from a storage of only 1 elements");
  }
}

// The custom adapter on TorchScript archives. tests/reference/make_torchscript.py scripts (and traces)
// small models hooklens has not seen — a GPT with a `blocks` ModuleList, KL-belief attention over a
// `layers` ModuleList run in reverse, the same two calling torch.ops.hooklens.capture themselves, and a
// model computing its pattern inside either branch of an if — and writes what the eager models
// compute. Captured with no change to the models, every pattern, block output, named point and the
// logits must match eager PyTorch, and hooks must be able to replace them.
#include "model_util.h"

#include <hooklens/model.h>
#include <hooklens/plugin.h>
#include <hooklens/run.h>
#include <hooklens/tokenizer.h>
#include <hooklens/weights.h>

#include <ATen/ops/div.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <caffe2/serialize/inline_container.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

using namespace hooklens;
namespace fs = std::filesystem;

namespace {

std::shared_ptr<Adapter> adapter() {
  return std::static_pointer_cast<Adapter>(PluginRegistry::create_from(test::plugin_file("custom"), "adapter"));
}

// Runs make_torchscript.py into `dir`; false without torch.
bool make_models(const test::TempDir& dir) {
  if (!test::python_has("torch, numpy")) return false;
  const fs::path script = fs::path(HOOKLENS_SOURCE_DIR) / "tests/reference/make_torchscript.py";
  const fs::path ops = test::build_dir() / "lib/libhooklens_ops.so";
  if (test::run_python(script, "'" + dir.path.string() + "' '" + ops.string() + "'", dir / "log") != 0)
    FAIL("make_torchscript.py failed: " << test::read_file(dir / "log"));
  return true;
}

// The scripted models and their eager references, made once per test run; null without torch, and
// then the calling case is reported as skipped (it returns at once).
const test::TempDir* models() {
  static const test::TempDir dir;
  static const bool made = make_models(dir);
  if (!made) test::skip(std::string(test::kPython) + " cannot import torch and numpy: the TorchScript models were not made");
  return made ? &dir : nullptr;
}

std::shared_ptr<Model> load(const std::string& name) {
  auto a = adapter();
  const fs::path file = *models() / (name + ".pt");
  REQUIRE(test::adapter_score("custom", file) > 0);
  return tie_lifetime(a->load(file, {}), a);
}

struct Expect {
  int blocks = 0, heads = 0;
  bool author_points = false;  // gpt_ops / kl_ops: hook_z, hook_embed named by the model itself
  std::vector<std::string> modules = {"attn", "ln1", "ln2", "mlp", "mlp.0", "attn.out"};  // in every block
  std::string embedding = "embed";
  bool last_position_only = false;  // forward returns the logits of the last position only
};

void check_model(const std::string& name, const Expect& e) {
  auto model = load(name);
  TensorMap ref = read_safetensors(*models() / (name + ".safetensors"));
  CHECK(model->info().architecture == "torchscript");
  CHECK(model->info().n_layers == e.blocks);
  CHECK(model->tokenizer() == nullptr);
  CHECK(model->new_state() == nullptr);
  CHECK(model->info().n_heads == e.heads);  // from the one-token forward at load
  CHECK(model->info().vocab_size == ref.at("logits").size(2));

  std::map<std::string, HookPointInfo> points;
  for (const auto& p : model->hook_points()) points[p.name] = p;
  for (int i = 0; i < e.blocks; ++i) {
    INFO(name << " block " << i);
    std::vector<std::string> block_points = e.modules;
    block_points.insert(block_points.end(), {"attn.hook_pattern", "hook_resid_post"});
    for (const std::string& point : block_points) {
      const std::string full = fmt::format("blocks.{}.{}", i, point);
      INFO(full);
      REQUIRE(points.count(full));
      CHECK(points.at(full).layer == i);
    }
    CHECK(points.at(fmt::format("blocks.{}.attn.hook_pattern", i)).dims == std::vector<std::string>{"batch", "head", "query", "key"});
    CHECK(points.count(fmt::format("blocks.{}.attn.hook_pattern.0", i)) == 0);
    CHECK(points.count(fmt::format("blocks.{}.attn.hook_z", i)) == std::size_t(e.author_points));
  }
  CHECK(points.count("hook_logits"));
  CHECK(points.count(e.embedding));
  CHECK(points.count("hook_embed") == std::size_t(e.author_points && name == "gpt_ops"));
  CHECK(points.count("layers.0") == 0);  // a ModuleList is "blocks" whatever its name
  if (points.count("ln_f")) CHECK(points.at("ln_f").layer == -1);

  test::Recorder rec({"*"});
  std::map<std::string, int> layers, offsets;
  rec.hooks.add({}, [&](std::string_view n, const CaptureContext& ctx, at::Tensor&) {
    layers[std::string(n)] = ctx.layer;
    offsets[std::string(n)] = int(ctx.query_offset);
  });
  const at::Tensor logits = model->forward(ref.at("ids"), rec.hooks, {}, nullptr);
  CHECK(test::max_abs_diff(logits, ref.at("logits")) < 1e-5);
  CHECK(rec.seen.size() == points.size());  // every listed point fires once
  for (int i = 0; i < e.blocks; ++i) {
    INFO(name << " block " << i);
    const std::string pattern = fmt::format("blocks.{}.attn.hook_pattern", i);
    CHECK(test::max_abs_diff(rec.at(pattern), ref.at(fmt::format("pattern.{}", i))) < 1e-5);
    CHECK(layers.at(pattern) == i);
    CHECK(test::max_abs_diff(rec.at(fmt::format("blocks.{}.hook_resid_post", i)), ref.at(fmt::format("resid_post.{}", i))) <
          1e-5);
    if (e.author_points)
      CHECK(test::max_abs_diff(rec.at(fmt::format("blocks.{}.attn.hook_z", i)), ref.at(fmt::format("z.{}", i))) < 1e-5);
  }
  CHECK(test::max_abs_diff(rec.at("hook_logits"), ref.at("logits")) < 1e-5);
  CHECK(offsets.at("hook_logits") == (e.last_position_only ? ref.at("ids").size(1) - 1 : 0));

  // Last position only.
  const at::Tensor last = model->forward(ref.at("ids"), HookSet(), {}, nullptr, Logits::last);
  CHECK(test::max_abs_diff(last, ref.at("logits").slice(1, -1)) < 1e-5);
  // Another shape after the executor has specialised (the models are causal: a prefix keeps its logits).
  if (name != "branchy" && !e.last_position_only) {
    const at::Tensor prefix = model->forward(ref.at("ids").slice(0, 0, 1).slice(1, 0, 4), HookSet(), {}, nullptr);
    CHECK(test::max_abs_diff(prefix, ref.at("logits").slice(0, 0, 1).slice(1, 0, 4)) < 1e-5);
  }
  const at::Tensor bad = ref.at("ids").clone().fill_(model->info().vocab_size);
  CHECK_THROWS_AS(model->forward(bad, HookSet(), {}, nullptr), UsageError);
}

}  // namespace

TEST_CASE("TorchScript models: patterns, block outputs and logits match the eager models") {
  if (!models()) return;
  SECTION("GPT with a blocks ModuleList (dot-product attention, dropout before matmul)") { check_model("gpt", {3, 4}); }
  SECTION("the same GPT traced instead of scripted") { check_model("gpt_traced", {3, 4}); }
  SECTION("KL belief attention over a reversed layers ModuleList (softmax gate ignored)") { check_model("kl", {2, 2}); }
  SECTION("dot-product attention naming its own points with hooklens::capture") {
    check_model("gpt_ops", {3, 4, true});
  }
  SECTION("KL attention naming its own points with hooklens::capture") { check_model("kl_ops", {2, 2, true}); }
  SECTION("patterns computed in the branches of an if (one causal layer, one bidirectional)") {
    check_model("branchy", {2, 2});
  }
  SECTION("nanoGPT's layout, returning (last position's logits, None)") {
    Expect nano{2, 4};
    nano.modules = {"attn", "ln_1", "ln_2", "mlp", "mlp.0", "attn.c_attn", "attn.c_proj", "attn.attn_dropout"};
    nano.embedding = "transformer.wte";
    nano.last_position_only = true;
    check_model("nano", nano);
  }
}

TEST_CASE("TorchScript models: hooks replace patterns and module outputs") {
  if (!models()) return;
  for (const std::string name : {"gpt", "gpt_traced"}) {
    INFO(name);
    auto model = load(name);
    TensorMap ref = read_safetensors(*models() / (name + ".safetensors"));
    const at::Tensor ids = ref.at("ids");

    HookSet uniform;  // block 0 attends uniformly to every key it may see
    uniform.add({{"blocks.0.attn.hook_pattern"}}, [](std::string_view, const CaptureContext&, at::Tensor& t) {
      const at::Tensor causal = at::ones({t.size(-2), t.size(-1)}, t.options()).tril();
      t = causal.div(causal.sum(-1, true)).expand_as(t).contiguous();
    });
    CHECK(test::max_abs_diff(model->forward(ids, uniform, {}, nullptr), ref.at("logits.uniform0")) < 1e-5);

    HookSet zero;  // the residual stream after the last block set to zero
    zero.add({{"blocks.2.hook_resid_post"}}, [](std::string_view, const CaptureContext&, at::Tensor& t) {
      t = at::zeros_like(t);
    });
    CHECK(test::max_abs_diff(model->forward(ids, zero, {}, nullptr), ref.at("logits.zero_last")) < 1e-5);

    // The next forward without hooks is unaffected.
    CHECK(test::max_abs_diff(model->forward(ids, HookSet(), {}, nullptr), ref.at("logits")) < 1e-5);

    HookSet reshape;
    reshape.add({{"blocks.1.attn"}}, [](std::string_view, const CaptureContext&, at::Tensor& t) { t = t.slice(1, 0, 1); });
    CHECK_THAT(test::error_of([&] { model->forward(ids, reshape, {}, nullptr); }),
               Catch::Contains("blocks.1.attn") && Catch::Contains("[2, 1, 32]"));

    HookSet failing;  // a hook's own error arrives unchanged, not wrapped by the interpreter
    failing.add({{"blocks.1.attn.hook_pattern"}}, [](std::string_view, const CaptureContext&, at::Tensor&) {
      throw UsageError("hook says no");
    });
    CHECK(test::error_of([&] { model->forward(ids, failing, {}, nullptr); }) == "hook says no");
    CHECK(test::max_abs_diff(model->forward(ids, HookSet(), {}, nullptr), ref.at("logits")) < 1e-5);
  }
}

TEST_CASE("TorchScript models: only loadable TorchScript archives are accepted") {
  auto a = adapter();
  test::TempDir dir;
  std::ofstream(dir / "junk.pt") << "not a zip archive";
  CHECK(test::adapter_score("custom", dir / "junk.pt") == 0);
  CHECK(test::adapter_score("custom", dir / "missing.pt") == 0);
  CHECK_THROWS_AS(a->load(dir / "junk.pt", {}), Error);
  if (!models()) return;
  fs::copy_file(*models() / "gpt.pt", dir / "gpt.bin");
  CHECK(test::adapter_score("custom", dir / "gpt.bin") == 0);  // extension decides first

  // Truncated archives: refused with an error naming the file, whatever the cut.
  const std::string bytes = test::read_file(*models() / "gpt.pt");
  for (const double fraction : {0.3, 0.6, 0.95}) {
    const fs::path cut = dir / fmt::format("cut{}.pt", int(fraction * 100));
    std::ofstream(cut, std::ios::binary).write(bytes.data(), std::streamsize(double(bytes.size()) * fraction));
    INFO(cut);
    CHECK_THAT(test::error_of([&] { a->load(cut, {}); }), Catch::Contains(cut.string()));
  }

  // Code that does not compile: libtorch's reason, whose message opens with a blank line (found by
  // the torchscript fuzz target: the error said nothing after "model: ").
  const fs::path broken = dir / "broken.pt";
  {
    caffe2::serialize::PyTorchStreamReader reader((*models() / "gpt.pt").string());
    caffe2::serialize::PyTorchStreamWriter writer(broken.string());
    bool changed = false;
    for (const std::string& name : reader.getAllRecords()) {
      if (name == "version") continue;  // the writer adds it
      auto [data, size] = reader.getRecord(name);
      std::string record(static_cast<const char*>(data.get()), size);
      const std::size_t at = record.find("return ");
      if (!changed && name.rfind("code/", 0) == 0 && record.find("def forward") != std::string::npos &&
          at != std::string::npos) {
        record.insert(at + 7, "hooklens_undefined + ");
        changed = true;
      }
      writer.writeRecord(name, record.data(), record.size());
    }
    writer.writeEndOfFile();
    REQUIRE(changed);
  }
  const std::string error = test::error_of([&] { a->load(broken, {}); });
  CHECK_THAT(error, Catch::StartsWith(broken.string() + ": not a loadable TorchScript model: ") &&
                        Catch::Contains("hooklens_undefined"));
  CHECK(error.find('\n') == std::string::npos);
}

TEST_CASE("TorchScript models: a tokenizer only when named, of any kind hooklens reads", "[fixtures]") {
  if (!models()) return;
  auto a = adapter();
  const fs::path file = *models() / "gpt.pt";
  CHECK(tie_lifetime(a->load(file, {}), a)->tokenizer() == nullptr);

  LoadOptions llama2c;  // llama2.c's tokenizer.bin format
  llama2c.tokenizer = test::fixtures() / "llama2c/aidreams260K.tok512.bin";
  auto model = tie_lifetime(a->load(file, llama2c), a);
  REQUIRE(model->tokenizer());
  CHECK(model->tokenizer()->vocab_size() == 512);
  // Its ids run past this model's 50-token vocabulary: refused, not wrapped around.
  const std::vector<std::int64_t> ids = model->tokenizer()->encode("Once upon a time");
  CHECK_THROWS_AS(model->forward(at::tensor(ids, at::kLong).unsqueeze(0), HookSet(), {}, nullptr), UsageError);

  test::TempDir dir;  // a Hugging Face byte-level BPE directory: 256 byte symbols, no merges
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[gpt2_byte_symbol(static_cast<unsigned char>(b))] = b;
  std::ofstream(dir / "vocab.json") << vocab.dump();
  std::ofstream(dir / "merges.txt") << "#version: 0.2\n";
  LoadOptions hf;
  hf.tokenizer = dir.path;
  model = tie_lifetime(a->load(file, hf), a);
  REQUIRE(model->tokenizer());
  CHECK(model->tokenizer()->encode("!#") == std::vector<std::int64_t>{33, 35});

  LoadOptions missing;
  missing.tokenizer = dir / "nothing-here";
  CHECK_THAT(test::error_of([&] { a->load(file, missing); }), Catch::Contains("nothing-here"));
}

TEST_CASE("TorchScript models from the CLI: capture with --ablate, patterns in the run directory") {
  if (!models()) return;
  TensorMap ref = read_safetensors(*models() / "gpt.safetensors");
  const at::Tensor ids = ref.at("ids").select(0, 0);
  std::vector<std::string> id_text;
  for (std::int64_t i = 0; i < ids.size(0); ++i) id_text.push_back(std::to_string(ids[i].item<std::int64_t>()));
  test::TempDir dir;
  const std::string cmd = fmt::format(
      "'{}' capture --model '{}' --prompt-ids {} --hooks 'hook_logits,blocks.*.attn.hook_pattern' --ablate 1.2 "
      "--out '{}' > '{}' 2>&1",
      (test::build_dir() / "bin/hooklens").string(), (*models() / "gpt.pt").string(), fmt::join(id_text, ","),
      (dir / "run").string(), (dir / "log").string());
  const int status = std::system(cmd.c_str());
  INFO(test::read_file(dir / "log"));
  REQUIRE(status == 0);
  RunReader run(dir / "run");
  std::set<std::string> names;
  for (std::size_t i = 0; i < run.capture_count(); ++i) {
    const std::string name = run.capture(i).at("hook");
    names.insert(name);
    const at::Tensor t = run.load(i);
    if (name == "hook_logits") CHECK(test::max_abs_diff(t[0], ref.at("logits.ablate_1_2")[0]) < 1e-5);
    if (name == "blocks.1.attn.hook_pattern") CHECK(t[0][2].abs().max().item<float>() == 0.0f);  // as ablated
    if (name == "blocks.0.attn.hook_pattern") CHECK(test::max_abs_diff(t[0], ref.at("pattern.0")[0]) < 1e-5);
  }
  CHECK(names == std::set<std::string>{"hook_logits", "blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern",
                                       "blocks.2.attn.hook_pattern"});
}

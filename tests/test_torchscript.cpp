// The custom adapter on TorchScript archives: two small models scripted by
// tests/reference/make_torchscript.py (a GPT with a `blocks` ModuleList, and a KL-belief-attention
// model with a `layers` ModuleList run in reverse and a non-attention softmax gate) must give the eager model's
// logits and every block's attention pattern, captured without any change to the models.
#include "model_util.h"

#include <hooklens/model.h>
#include <hooklens/plugin.h>
#include <hooklens/weights.h>

#include <cstdlib>
#include <fstream>
#include <map>
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
  if (test::run_python(script, "'" + dir.path.string() + "'", dir / "log") != 0)
    FAIL("make_torchscript.py failed: " << test::read_file(dir / "log"));
  return true;
}

// The scripted models and their eager references, made once per test run; null without torch.
const test::TempDir* models() {
  static const test::TempDir dir;
  static const bool made = make_models(dir);
  return made ? &dir : nullptr;
}

void check_model(const std::string& name, int n_blocks, int n_heads) {
  const fs::path file = *models() / (name + ".pt");
  auto a = adapter();
  REQUIRE(a->accepts(file));
  auto model = tie_lifetime(a->load(file, {}), a);
  TensorMap ref = read_safetensors(*models() / (name + ".safetensors"));

  CHECK(model->info().architecture == "torchscript");
  CHECK(model->info().n_layers == n_blocks);
  CHECK(model->tokenizer() == nullptr);
  CHECK(model->new_state() == nullptr);
  // Patterns are listed in graph order, named by the ModuleList index: compare as sets.
  std::set<std::string> points;
  for (const auto& p : model->hook_points()) {
    points.insert(p.name);
    if (p.name != "hook_logits") CHECK(p.name == fmt::format("blocks.{}.attn.hook_pattern", p.layer));
  }
  std::set<std::string> expected = {"hook_logits"};
  for (int i = 0; i < n_blocks; ++i) expected.insert(fmt::format("blocks.{}.attn.hook_pattern", i));
  CHECK(points == expected);

  test::Recorder rec({"*"});
  std::map<std::string, int> layers;
  rec.hooks.add({}, [&](std::string_view n, const CaptureContext& ctx, at::Tensor&) { layers[std::string(n)] = ctx.layer; });
  const at::Tensor logits = model->forward(ref.at("ids"), rec.hooks, {}, nullptr);
  CHECK(test::max_abs_diff(logits, ref.at("logits")) < 1e-5);
  CHECK(rec.seen.size() == std::size_t(n_blocks) + 1);
  for (int i = 0; i < n_blocks; ++i) {
    INFO(name << " block " << i);
    CHECK(test::max_abs_diff(rec.at(fmt::format("blocks.{}.attn.hook_pattern", i)), ref.at(fmt::format("pattern.{}", i))) <
          1e-5);
    CHECK(layers.at(fmt::format("blocks.{}.attn.hook_pattern", i)) == i);
  }
  CHECK(test::max_abs_diff(rec.at("hook_logits"), ref.at("logits")) < 1e-5);
  CHECK(model->info().n_heads == n_heads);
  CHECK(model->info().vocab_size == ref.at("logits").size(2));

  // Last position only, and the vocabulary now known.
  const at::Tensor last = model->forward(ref.at("ids"), HookSet(), {}, nullptr, true);
  CHECK(test::max_abs_diff(last, ref.at("logits").slice(1, -1)) < 1e-5);
  // Another shape after the executor has specialised (both models are causal: a prefix keeps its logits).
  const at::Tensor prefix = model->forward(ref.at("ids").slice(0, 0, 1).slice(1, 0, 4), HookSet(), {}, nullptr);
  CHECK(test::max_abs_diff(prefix, ref.at("logits").slice(0, 0, 1).slice(1, 0, 4)) < 1e-5);
  const at::Tensor bad = ref.at("ids").clone().fill_(model->info().vocab_size);
  CHECK_THROWS_AS(model->forward(bad, HookSet(), {}, nullptr), UsageError);

  // Patterns cannot be replaced yet: that must fail loudly, not be ignored.
  HookSet replace;
  replace.add({{"blocks.0.attn.hook_pattern"}}, [](std::string_view, const CaptureContext&, at::Tensor& t) {
    t = t.clone();
  });
  CHECK_THAT(test::error_of([&] { model->forward(ref.at("ids"), replace, {}, nullptr); }),
             Catch::Contains("not supported") && Catch::Contains(file.string()));
}

}  // namespace

TEST_CASE("TorchScript models: patterns and logits match the eager models") {
  if (!models()) {
    WARN("skipped: " << test::kPython << " cannot import torch and numpy");
    return;
  }
  SECTION("GPT with a blocks ModuleList (dot-product attention, dropout before matmul)") { check_model("gpt", 3, 4); }
  SECTION("KL belief attention over a reversed layers ModuleList (softmax gate ignored)") { check_model("kl", 2, 2); }
}

TEST_CASE("TorchScript models: only TorchScript archives are accepted") {
  auto a = adapter();
  test::TempDir dir;
  std::ofstream(dir / "junk.pt") << "not a zip archive";
  CHECK_FALSE(a->accepts(dir / "junk.pt"));
  CHECK_FALSE(a->accepts(dir / "missing.pt"));
  CHECK_THROWS_AS(a->load(dir / "junk.pt", {}), Error);
  if (!models()) return;
  CHECK_FALSE(a->accepts(*models() / "plain.pt"));  // torch.save zip without code
  fs::copy_file(*models() / "gpt.pt", dir / "gpt.bin");
  CHECK_FALSE(a->accepts(dir / "gpt.bin"));  // extension decides first
}

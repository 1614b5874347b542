// The LLaDA adapter and the masked-diffusion loop against the upstream LLaDA sampler's trace in
// ../shared/fixtures/llada-tiny-a: the sequence after every step, every step's attention and
// logits, the committed positions and their confidences (also from sharded weights); schedules; bad
// parameters.
#include "model_util.h"
#include "shard_util.h"

#include <ATen/ATen.h>
#include <hooklens/error.h>
#include <hooklens/generate.h>
#include <hooklens/weights.h>

#include <nlohmann/json.hpp>

#include <fstream>
#include <set>

using namespace hooklens;
using test::load_model;
using test::Recorder;
namespace fs = std::filesystem;

namespace {

const fs::path kFixture = test::fixtures() / "llada-tiny-a";

std::vector<std::int64_t> to_vector(const at::Tensor& t) {
  at::Tensor flat = t.reshape({-1}).to(at::kLong).contiguous();
  return {flat.data_ptr<std::int64_t>(), flat.data_ptr<std::int64_t>() + flat.numel()};
}

DiffusionOptions fixture_options() {
  DiffusionOptions o;
  o.gen_length = 16;
  o.steps = 8;
  o.block_length = 8;
  return o;
}

void check_forward(const fs::path& model_dir) {
  auto model = load_model("llada", model_dir);
  const ModelInfo& info = model->info();
  CHECK(info.n_layers == 2);
  CHECK(info.mask_id == std::optional<std::int64_t>(500));
  CHECK(info.layer_attention == std::vector<AttentionKind>(2, AttentionKind::bidirectional));
  TensorMap ref = read_safetensors(kFixture / "reference_0.safetensors");
  Recorder rec({"hook_embed", "*hook_resid_post", "ln_final.hook_normalized", "*hook_pattern"});
  at::Tensor logits = model->forward(ref.at("x.init"), rec.hooks, {}, nullptr);
  CHECK(test::max_abs_diff(logits, ref.at("fwd.logits")) < 5e-5);
  CHECK(test::max_abs_diff(rec.at("hook_embed"), ref.at("fwd.hidden.0")) < 1e-6);
  CHECK(test::max_abs_diff(rec.at("blocks.0.hook_resid_post"), ref.at("fwd.hidden.1")) < 1e-5);
  CHECK(test::max_abs_diff(rec.at("ln_final.hook_normalized"), ref.at("fwd.hidden.2")) < 1e-5);
  for (int l = 0; l < 2; ++l)
    CHECK(test::max_abs_diff(rec.at(fmt::format("blocks.{}.attn.hook_pattern", l)), ref.at(fmt::format("step0.attn.L{}", l))) < 1e-5);
}

void check_generation(const fs::path& model_dir) {
  auto model = load_model("llada", model_dir);
  TensorMap ref = read_safetensors(kFixture / "reference_0.safetensors");
  // Python's json writes Infinity (a margin where nothing was rejected), which JSON has not.
  std::ifstream file(kFixture / "generation.json");
  std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  for (size_t at = text.find("Infinity"); at != std::string::npos; at = text.find("Infinity", at)) text.replace(at, 8, "null");
  const auto gen = nlohmann::json::parse(text)["runs"][0];
  Recorder rec({"*hook_pattern", "hook_logits"});
  std::vector<CaptureContext> contexts;
  rec.hooks.add({{"hook_logits"}}, [&](std::string_view, const CaptureContext& ctx, at::Tensor&) { contexts.push_back(ctx); });
  const auto prompt = to_vector(ref.at("prompt_ids"));
  DiffusionResult result = generate_masked_diffusion(*model, prompt, fixture_options(), rec.hooks);

  REQUIRE(result.steps.size() == 8);
  for (int s = 0; s < 8; ++s) {
    INFO("step " << s);
    const DiffusionStep& step = result.steps[s];
    CHECK(step.step == s);
    CHECK(step.block == s / 4);
    CHECK(contexts[s].phase == Phase::denoise);
    CHECK(contexts[s].step == s);
    CHECK(contexts[s].block == s / 4);
    CHECK(step.ids == to_vector(ref.at(fmt::format("step{}.x", s))));
    for (int l = 0; l < 2; ++l)
      CHECK(test::max_abs_diff(rec.at(fmt::format("blocks.{}.attn.hook_pattern", l), s), ref.at(fmt::format("step{}.attn.L{}", s, l))) < 1e-5);
    CHECK(test::max_abs_diff(rec.at("hook_logits", s), ref.at(fmt::format("step{}.logits", s))) < 5e-5);
    std::vector<std::int64_t> unmasked;
    const auto flags = to_vector(ref.at(fmt::format("step{}.unmasked", s)));
    for (size_t i = 0; i < flags.size(); ++i)
      if (flags[i]) unmasked.push_back(std::int64_t(i));
    CHECK(step.committed == unmasked);
    const auto& expected = gen["steps"][s];
    const auto changed = expected["changed_positions"].get<std::vector<std::int64_t>>();
    CHECK(step.committed == changed);
    const auto confidences = expected["confidences_of_changed"].get<std::vector<double>>();
    REQUIRE(step.confidences.size() == confidences.size());
    for (size_t i = 0; i < confidences.size(); ++i) CHECK(std::abs(step.confidences[i] - confidences[i]) < 1e-5);
  }
  CHECK(result.output_ids == to_vector(ref.at("final.x")));
  const auto final_generated = gen["final_generated_ids"].get<std::vector<std::int64_t>>();
  CHECK(std::vector<std::int64_t>(result.output_ids.begin() + 12, result.output_ids.end()) == final_generated);
}

}  // namespace

TEST_CASE("LLaDA forward pass matches the upstream model", "[fixtures]") { check_forward(kFixture); }

TEST_CASE("masked diffusion matches the upstream LLaDA sampler step by step", "[fixtures]") { check_generation(kFixture); }

TEST_CASE("LLaDA from 3 shards of either format (layers split across shards) matches the upstream model", "[fixtures]") {
  test::TempDir st;
  fs::create_symlink(kFixture / "config.json", st / "config.json");
  test::write_safetensors_shards(read_safetensors(kFixture / "model.safetensors"), st.path, 3);
  CHECK(test::shards_holding(st / "model.safetensors.index.json", ".blocks.0.").size() == 3);
  check_forward(st.path);
  check_generation(st.path);

  test::TempDir bin;
  fs::create_symlink(kFixture / "config.json", bin / "config.json");
  if (!test::write_bin_shards(kFixture / "model.safetensors", bin.path, 3)) {
    test::skip(fmt::format("{} cannot import torch: the pytorch_model.bin shards were not checked", test::kPython));
    return;
  }
  CHECK(test::shards_holding(bin / "pytorch_model.bin.index.json", ".blocks.0.").size() == 3);
  check_forward(bin.path);
  check_generation(bin.path);
}

TEST_CASE("transfer schedules: uneven steps and several blocks", "[fixtures]") {
  auto model = load_model("llada", kFixture);
  const std::vector<std::int64_t> prompt{85, 294, 223, 181, 193};
  HookSet none;
  SECTION("gen length not a multiple of steps: the first steps commit one more") {
    DiffusionOptions o;
    o.gen_length = 16;
    o.steps = 5;  // 16 = 4 + 3 + 3 + 3 + 3
    auto r = generate_masked_diffusion(*model, prompt, o, none);
    std::vector<size_t> counts;
    for (const auto& s : r.steps) counts.push_back(s.committed.size());
    CHECK(counts == std::vector<size_t>{4, 3, 3, 3, 3});
    std::set<std::int64_t> all;
    for (const auto& s : r.steps) all.insert(s.committed.begin(), s.committed.end());
    CHECK(all.size() == 16);
    CHECK(*all.begin() == 5);
  }
  SECTION("several blocks are filled left to right") {
    DiffusionOptions o;
    o.gen_length = 12;
    o.block_length = 4;
    o.steps = 6;  // 2 steps per block, 2 tokens per step
    auto r = generate_masked_diffusion(*model, prompt, o, none);
    REQUIRE(r.steps.size() == 6);
    for (const auto& s : r.steps) {
      CHECK(s.block == s.step / 2);
      CHECK(s.committed.size() == 2);
      for (auto pos : s.committed) {
        CHECK(pos >= 5 + 4 * s.block);
        CHECK(pos < 5 + 4 * (s.block + 1));
      }
    }
    CHECK(std::count(r.output_ids.begin(), r.output_ids.end(), 500) == 0);
  }
  SECTION("random remasking and temperature are reproducible from the seed") {
    DiffusionOptions o;
    o.gen_length = 8;
    o.steps = 4;
    o.temperature = 0.7;
    o.remasking = DiffusionOptions::Remasking::random;
    o.seed = 11;
    auto a = generate_masked_diffusion(*model, prompt, o, none);
    auto b = generate_masked_diffusion(*model, prompt, o, none);
    CHECK(a.output_ids == b.output_ids);
    o.seed = 12;
    auto c = generate_masked_diffusion(*model, prompt, o, none);
    bool differs = false;
    for (size_t s = 0; s < a.steps.size(); ++s) differs |= a.steps[s].committed != c.steps[s].committed;
    CHECK(differs);
  }
}

TEST_CASE("classifier-free guidance runs a distinguishable unconditional pass", "[fixtures]") {
  auto model = load_model("llada", kFixture);
  const std::vector<std::int64_t> prompt{85, 294, 223, 181};
  DiffusionOptions o;
  o.gen_length = 4;
  o.steps = 1;
  o.cfg_scale = 1.5;
  std::map<int, at::Tensor> logits_by_pass;
  HookSet hooks;
  hooks.add({{"hook_logits"}}, [&](std::string_view, const CaptureContext& ctx, at::Tensor& t) { logits_by_pass[ctx.pass] = t[0]; });
  auto r = generate_masked_diffusion(*model, prompt, o, hooks);
  REQUIRE(logits_by_pass.size() == 2);
  // The committed tokens are the argmax of un + (cfg + 1) * (cond - un), computed here independently.
  at::Tensor guided = logits_by_pass[1] + 2.5 * (logits_by_pass[0] - logits_by_pass[1]);
  at::Tensor expected = guided.argmax(-1);
  for (auto pos : r.steps[0].committed) CHECK(r.output_ids[pos] == expected[pos].item<std::int64_t>());
  // The unconditional pass saw the prompt masked.
  HookSet inputs;
  std::vector<at::Tensor> seen;
  inputs.add({{"hook_embed"}}, [&](std::string_view, const CaptureContext& ctx, at::Tensor& t) { if (ctx.pass == 1) seen.push_back(t); });
  generate_masked_diffusion(*model, prompt, o, inputs);
  REQUIRE(seen.size() == 1);
  at::Tensor mask_embedding = seen[0][0][prompt.size()];
  for (size_t i = 0; i < prompt.size(); ++i) CHECK(test::max_abs_diff(seen[0][0][i], mask_embedding) == 0.0);
}

TEST_CASE("bad diffusion parameters are refused", "[fixtures]") {
  auto model = load_model("llada", kFixture);
  HookSet none;
  const std::vector<std::int64_t> prompt{1, 2, 3};
  auto refuse = [&](DiffusionOptions o, const char* fragment) {
    CHECK_THAT(test::error_of([&] { generate_masked_diffusion(*model, prompt, o, none); }), Catch::Contains(fragment));
  };
  DiffusionOptions o;
  o.gen_length = 10;
  o.block_length = 4;
  refuse(o, "not a multiple of block length");
  o.block_length = 5;
  o.steps = 3;
  refuse(o, "multiple of the number of blocks");
  o = {};
  o.gen_length = 300;
  refuse(o, "context");
  o = {};
  o.temperature = -1;
  refuse(o, "temperature");
  o = {};
  o.mask_id = 100000;
  refuse(o, "mask token id");
  o = {};
  o.gen_length = 0;
  refuse(o, "gen length");
}

TEST_CASE("MMaDA configs and half-precision LLaDA checkpoints load through the same adapter", "[fixtures]") {
  test::TempDir tmp;
  auto config = read_json_file(kFixture / "config.json");
  config["model_type"] = "mmada";
  std::ofstream(tmp / "config.json") << config.dump(2);
  // The fixture's weights stored as BF16, as LLaDA-8B ships them.
  std::vector<std::pair<std::string, at::Tensor>> half;
  for (auto& [name, t] : read_safetensors(kFixture / "model.safetensors")) half.emplace_back(name, t.to(at::kBFloat16));
  write_safetensors(tmp / "model.safetensors", half);
  auto model = load_model("llada", tmp.path);
  CHECK(model->info().architecture == "MMadaModelLM");
  CHECK(model->info().weight_dtype == "BF16");
  // Same computation on the rounded weights: close to the float32 reference, not equal.
  TensorMap ref = read_safetensors(kFixture / "reference_0.safetensors");
  HookSet none;
  at::Tensor logits = model->forward(ref.at("x.init"), none, {}, nullptr);
  const double diff = test::max_abs_diff(logits, ref.at("fwd.logits"));
  CHECK(diff > 0);
  CHECK(diff < 0.1);
}

TEST_CASE("unsupported LLaDA options are refused, naming the key", "[fixtures]") {
  test::TempDir tmp;
  auto config = read_json_file(kFixture / "config.json");
  config["block_type"] = "sequential";
  std::ofstream(tmp / "config.json") << config.dump(2);
  fs::create_symlink(kFixture / "model.safetensors", tmp / "model.safetensors");
  auto adapter = std::static_pointer_cast<Adapter>(PluginRegistry::create_from(test::plugin_file("llada"), "adapter"));
  CHECK_THAT(test::error_of([&] { adapter->load(tmp.path, {}); }), Catch::Contains("block_type") && Catch::Contains("config.json"));
}

TEST_CASE("stop at end-of-text ends generation after the block that committed it", "[fixtures]") {
  test::TempDir tmp;
  auto config = read_json_file(kFixture / "config.json");
  config["eos_token_id"] = 496;  // the fixture's sampler commits 496 in the first block
  std::ofstream(tmp / "config.json") << config.dump(2);
  fs::create_symlink(kFixture / "model.safetensors", tmp / "model.safetensors");
  auto model = load_model("llada", tmp.path);
  TensorMap ref = read_safetensors(kFixture / "reference_0.safetensors");
  HookSet none;
  DiffusionOptions o = fixture_options();
  o.stop_at_eos = true;
  auto r = generate_masked_diffusion(*model, to_vector(ref.at("prompt_ids")), o, none);
  CHECK(r.stopped_on_eos);
  REQUIRE(r.steps.size() == 4);  // block 0 only
  CHECK(r.output_ids == to_vector(ref.at("step3.x")));
  CHECK(std::count(r.output_ids.begin() + 20, r.output_ids.end(), 500) == 8);  // block 1 still masked
}

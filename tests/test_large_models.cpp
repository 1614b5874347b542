// Models as large as users have them: weights used from their memory-mapped files (streamed), an
// LLaDA-8B-shaped checkpoint within 1.3x its weight bytes, `info` from headers only, and real
// configs whose unused values are warnings.
#include "resource_bounds.h"
#include "model_util.h"

#include <ATen/ATen.h>

#include <hooklens/error.h>
#include <hooklens/generate.h>
#include <hooklens/model.h>
#include <hooklens/weights.h>

#include <nlohmann/json.hpp>

#include <fstream>

using namespace hooklens;
namespace fs = std::filesystem;
using test::load_model;
using test::Recorder;

namespace {

LoadOptions streamed() {
  LoadOptions o;
  o.resident_weights_bytes = 0;  // every matrix used from the file (converted chunk by chunk if not float32)
  return o;
}

std::vector<std::int64_t> ids_of(const at::Tensor& t) {
  at::Tensor flat = t.reshape({-1}).to(at::kLong).contiguous();
  return {flat.data_ptr<std::int64_t>(), flat.data_ptr<std::int64_t>() + flat.numel()};
}

// The fixture's directory with its weights rewritten in `dtype` (a copy under `tmp`).
fs::path with_weights_as(const test::TempDir& tmp, const fs::path& fixture, at::ScalarType dtype) {
  for (const auto& entry : fs::directory_iterator(fixture))
    if (entry.path().extension() != ".safetensors" && entry.path().extension() != ".bin")
      fs::create_symlink(entry.path(), tmp / entry.path().filename().string());
  std::vector<std::pair<std::string, at::Tensor>> converted;
  for (auto& [name, t] : read_safetensors(fixture / "model.safetensors")) converted.emplace_back(name, t.to(dtype));
  write_safetensors(tmp / "model.safetensors", converted);
  return tmp.path;
}

// Runs one forward pass on both models and compares logits and every attention pattern.
void check_same_forward(Model& resident, Model& stream, const at::Tensor& ids, double tolerance) {
  Recorder a({"*hook_pattern", "blocks.*.hook_resid_post"}), b({"*hook_pattern", "blocks.*.hook_resid_post"});
  const at::Tensor la = resident.forward(ids, a.hooks, {}, nullptr), lb = stream.forward(ids, b.hooks, {}, nullptr);
  CHECK(test::max_abs_diff(la, lb) < 10 * tolerance);
  REQUIRE(a.seen.size() == b.seen.size());
  for (const auto& [key, t] : a.seen) {
    INFO(key);
    CHECK(test::max_abs_diff(t, b.seen.at(key)) < tolerance);
  }
}

}  // namespace

TEST_CASE("streamed float32 weights give the Hugging Face references (GPT-Neo, GPT-2)", "[fixtures]") {
  for (const auto& [adapter, name] : {std::pair{"gpt_neo", "tiny-neo-a"}, {"gpt2", "tiny-gpt2-a"}}) {
    INFO(name);
    const fs::path fixture = test::fixtures() / name;
    auto model = load_model(adapter, fixture, streamed());
    const TensorMap ref = read_safetensors(fixture / "reference_0.safetensors");
    const auto prompts = read_json_file(fixture / "prompts.json");
    const auto& p = (prompts.is_object() ? prompts["prompts"] : prompts)[0];
    const auto ids = p["input_ids"].get<std::vector<std::int64_t>>();
    Recorder rec({"*hook_pattern"});
    at::Tensor logits = model->forward(at::tensor(ids, at::kLong).unsqueeze(0), rec.hooks, {}, nullptr);
    CHECK(test::max_abs_diff(logits, ref.at("logits")) < 1e-4);
    for (int l = 0; l < model->info().n_layers; ++l)
      CHECK(test::max_abs_diff(rec.at(fmt::format("blocks.{}.attn.hook_pattern", l)), ref.at(fmt::format("attn.L{}", l))) < 1e-5);
    if (ref.count("gen.ids")) {  // greedy generation through the KV cache, one-row products
      const auto expected = ids_of(ref.at("gen.ids"));
      SamplingOptions greedy;
      greedy.max_new_tokens = int(expected.size() - ids.size());
      HookSet none;
      CHECK(generate_autoregressive(*model, ids, greedy, none).output_ids == expected);
    }
  }
}

TEST_CASE("streamed BF16/F16 weights compute what converted-once weights compute (LLaDA)", "[fixtures]") {
  const fs::path fixture = test::fixtures() / "llada-tiny-a";
  const TensorMap ref = read_safetensors(fixture / "reference_0.safetensors");
  SECTION("float32: the upstream sampler's trace, step by step") {
    auto model = load_model("llada", fixture, streamed());
    DiffusionOptions o;
    o.gen_length = 16;
    o.steps = 8;
    o.block_length = 8;
    HookSet none;
    const DiffusionResult r = generate_masked_diffusion(*model, ids_of(ref.at("prompt_ids")), o, none);
    REQUIRE(r.steps.size() == 8);
    for (int s = 0; s < 8; ++s) CHECK(r.steps[s].ids == ids_of(ref.at(fmt::format("step{}.x", s))));
  }
  for (const auto dtype : {at::kBFloat16, at::kHalf}) {
    DYNAMIC_SECTION("stored as " << c10::toString(dtype)) {
      test::TempDir tmp;
      const fs::path dir = with_weights_as(tmp, fixture, dtype);
      auto resident = load_model("llada", dir), stream = load_model("llada", dir, streamed());
      CHECK(stream->info().weight_dtype == safetensors_dtype_name(dtype));
      check_same_forward(*resident, *stream, ref.at("x.init"), 1e-5);
      // The rounded weights are the model now: close to the float32 reference, not equal.
      HookSet none;
      const double diff = test::max_abs_diff(stream->forward(ref.at("x.init"), none, {}, nullptr), ref.at("fwd.logits"));
      CHECK(diff > 0);
      CHECK(diff < 0.1);
    }
  }
}

TEST_CASE("matrices converted in many chunks, the last one partial, give the same numbers", "[fixtures]") {
  const fs::path fixture = test::fixtures() / "tiny-neo-a";
  test::TempDir tmp;
  const fs::path dir = with_weights_as(tmp, fixture, at::kHalf);
  LoadOptions small_chunks = streamed();
  small_chunks.conversion_chunk_bytes = 7 * 4 * 32;  // 7 rows of 32: 50257 = 7 * 7179 + 4 rows of unembedding
  auto resident = load_model("gpt_neo", dir), stream = load_model("gpt_neo", dir, small_chunks);
  check_same_forward(*resident, *stream, at::arange(3, 40, at::kLong).unsqueeze(0), 1e-5);
  // Decode steps: one-row products through the same chunks.
  SamplingOptions greedy;
  greedy.max_new_tokens = 8;
  HookSet none;
  const std::vector<std::int64_t> prompt{464, 3797, 318};
  CHECK(generate_autoregressive(*stream, prompt, greedy, none).output_ids ==
        generate_autoregressive(*resident, prompt, greedy, none).output_ids);
}

TEST_CASE("an LLaDA-8B-shaped checkpoint denoises within 1.3x its weight bytes; info reads headers only") {
  test::TempDir tmp;
  const fs::path model = tmp / "llada-8b-2layers";
  // 2.74 GiB of weights: skip (loudly) where the disk cannot take them.
  const auto space = fs::space(tmp.path);
  if (space.available < (std::uintmax_t(6) << 30)) {
    test::skip(fmt::format("{} MiB free in {}, the LLaDA-8B-shaped checkpoint needs 6 GiB", space.available / (1 << 20), tmp.path.string()));
    return;
  }
  // Shards of 640 MiB: layer 1's tensors straddle two shards, as in the real 6-shard checkpoint.
  test::require_hooklens(fmt::format("bench-model --out '{}' --layers 2 --shard-mib 640", model.string()), tmp / "make.log");
  std::uint64_t weight_bytes = 0;
  int shards = 0;
  for (const auto& entry : fs::directory_iterator(model))
    if (entry.path().extension() == ".safetensors") weight_bytes += fs::file_size(entry.path()), ++shards;
  CHECK(shards == 4);
  CHECK(weight_bytes > (std::uint64_t(27) << 30) / 10);  // 2.74 GiB

  const test::Measured info = test::run_hooklens_measured(fmt::format("info --model '{}' --json", model.string()), tmp / "info.log");
  INFO(test::read_file(tmp / "info.log"));
  REQUIRE(info.status == 0);
  if (!test::kSanitized) CHECK(info.peak_rss_kib < 200 * 1024);
  const std::string text = test::read_file(tmp / "info.log");
  const auto described = nlohmann::json::parse(text.substr(text.find('{')))["model"];
  CHECK(described["n_layers"] == 2);
  CHECK(described["d_model"] == 4096);
  CHECK(described["d_mlp"] == 12288);
  CHECK(described["vocab_size"] == 126464);
  CHECK(described["weight_dtype"] == "BF16");

  std::string prompt;
  for (int i = 0; i < 32; ++i) prompt += fmt::format("{}{}", i ? "," : "", 1000 + 37 * i);
  const test::Measured run = test::run_hooklens_measured(
      fmt::format("generate --model '{}' --prompt-ids {} --gen-length 32 --steps 2 --block-length 32 "
                  "--hooks 'blocks.*.attn.hook_pattern' --out '{}'",
                  model.string(), prompt, (tmp / "run").string()),
      tmp / "generate.log");
  INFO(test::read_file(tmp / "generate.log"));
  REQUIRE(run.status == 0);
  INFO("peak RSS " << run.peak_rss_kib / 1024 << " MiB for " << weight_bytes / (1 << 20) << " MiB of weights");
  if (!test::kSanitized) CHECK(double(run.peak_rss_kib) * 1024 <= 1.3 * double(weight_bytes));
  // The run is real: two denoising steps, every layer's [1, 32, 64, 64] pattern captured.
  const auto manifest = read_json_file(tmp / "run" / "manifest.json");
  CHECK(manifest["complete"] == true);
  CHECK(manifest["generation"]["steps"].size() == 2);
  CHECK(manifest["captures"].size() == 4);
  CHECK(manifest["captures"][0]["shape"] == nlohmann::json{1, 32, 64, 64});
}

TEST_CASE("config values the forward pass does not use are warnings, not errors", "[fixtures]") {
  // A real trained GPT-2 with a 53-token vocabulary keeps GPT-2's bos/eos 50256 in its config.json;
  // Hugging Face ignores them. Built here from the fixture: its first 53 embedding rows.
  const fs::path fixture = test::fixtures() / "tiny-gpt2-a";
  test::TempDir tmp;
  auto config = read_json_file(fixture / "config.json");
  config["vocab_size"] = 53;
  config["eos_token_id"] = nlohmann::json::array({50256, 50255});
  config["torch_dtype"] = "float32";
  config["some_future_option"] = true;
  std::ofstream(tmp / "config.json") << config.dump(2);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (auto& [name, t] : read_safetensors(fixture / "model.safetensors"))
    tensors.emplace_back(name, name.find("wte") != std::string::npos ? t.narrow(0, 0, 53).clone() : t);
  write_safetensors(tmp / "model.safetensors", tensors);

  std::vector<std::string> warnings;
  set_warning_handler([&](const std::string& w) { warnings.push_back(w); });
  auto small = load_model("gpt2", tmp.path);
  set_warning_handler({});
  CHECK(!small->info().bos_id);
  CHECK(!small->info().eos_id);
  std::string all;
  for (const auto& w : warnings) all += w + "\n";
  INFO(all);
  CHECK_THAT(all, Catch::Contains("bos token id 50256 is outside the vocabulary of 53"));
  CHECK_THAT(all, Catch::Contains("'eos_token_id' lists 2 ids"));
  CHECK_THAT(all, Catch::Contains("some_future_option"));
  CHECK_THAT(all, !Catch::Contains("torch_dtype"));

  // Its numbers are the full model's: the same rows of the tied unembedding.
  auto full = load_model("gpt2", fixture);
  const at::Tensor ids = at::tensor(std::vector<std::int64_t>{5, 17, 52, 0, 33}, at::kLong).unsqueeze(0);
  HookSet none;
  const at::Tensor expected = full->forward(ids, none, {}, nullptr).narrow(2, 0, 53);
  CHECK(test::max_abs_diff(small->forward(ids, none, {}, nullptr), expected) < 1e-5);

  // From the command line the warnings go to stderr and the run succeeds.
  test::require_hooklens(fmt::format("info --model '{}'", tmp.path.string()), tmp / "info.log");
  CHECK_THAT(test::read_file(tmp / "info.log"), Catch::Contains("hooklens: warning:"));
}

TEST_CASE("a mask token outside the vocabulary is still refused: the sampler feeds it to the model", "[fixtures]") {
  const fs::path fixture = test::fixtures() / "llada-tiny-a";
  test::TempDir tmp;
  auto config = read_json_file(fixture / "config.json");
  config["mask_token_id"] = 512;  // vocabulary 512
  std::ofstream(tmp / "config.json") << config.dump(2);
  fs::create_symlink(fixture / "model.safetensors", tmp / "model.safetensors");
  auto adapter = std::static_pointer_cast<Adapter>(PluginRegistry::create_from(test::plugin_file("llada"), "adapter"));
  CHECK_THAT(test::error_of([&] { adapter->load(tmp.path, {}); }), Catch::Contains("mask token id 512"));
}

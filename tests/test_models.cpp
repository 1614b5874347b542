// GPT-Neo and GPT-2 adapters against the Hugging Face references in ../shared/fixtures: token ids
// and strings, every layer's attention, hidden states, logits, greedy generation with the KV cache
// (every step's attention), from both weight formats, whole and sharded; ablation through hooks.
#include "model_util.h"
#include "shard_util.h"

#include <ATen/ATen.h>

#include <hooklens/error.h>
#include <hooklens/generate.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>
#include <hooklens/weights.h>

#include <nlohmann/json.hpp>

#include <fstream>
#include <map>

using namespace hooklens;
namespace fs = std::filesystem;

using test::load_model;
using test::Recorder;

namespace {

// A copy of a fixture directory holding one weight format only (links, not copies).
fs::path with_only(const test::TempDir& tmp, const fs::path& fixture, const std::string& weights) {
  for (const char* f : {"config.json", "vocab.json", "merges.txt"}) fs::create_symlink(fixture / f, tmp / f);
  fs::create_symlink(fixture / weights, tmp / weights);
  return tmp.path;
}

nlohmann::json prompts_of(const fs::path& fixture) {
  auto j = read_json_file(fixture / "prompts.json");
  return j.is_object() ? j["prompts"] : j;
}

void check_against_fixture(const std::string& adapter, const fs::path& fixture, const fs::path& model_dir) {
  auto model = load_model(adapter, model_dir);
  const ModelInfo& info = model->info();
  const Tokenizer* tok = model->tokenizer();
  REQUIRE(tok != nullptr);
  const auto prompts = prompts_of(fixture);
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& p = prompts[i];
    const fs::path ref_file = fixture / fmt::format("reference_{}.safetensors", i);
    if (!fs::exists(ref_file)) continue;
    INFO(fixture.filename().string() << " prompt " << i << " from " << model_dir);
    TensorMap ref = read_safetensors(ref_file);

    const auto ids = tok->encode(p["text"].get<std::string>());
    CHECK(ids == p["input_ids"].get<std::vector<std::int64_t>>());
    std::vector<std::string> strings;
    for (auto id : ids) strings.push_back(tok->token_string(id));
    CHECK(strings == p["token_strings"].get<std::vector<std::string>>());

    Recorder rec({"*hook_pattern", "hook_embed", "hook_pos_embed", "*hook_resid_post", "ln_final.hook_normalized"});
    at::Tensor input = at::tensor(at::ArrayRef<std::int64_t>(ids), at::kLong).unsqueeze(0);
    at::Tensor logits = model->forward(input, rec.hooks, {}, nullptr);
    CHECK(test::max_abs_diff(logits, ref.at("logits")) < 1e-4);
    for (int l = 0; l < info.n_layers; ++l) {
      INFO("layer " << l);
      CHECK(test::max_abs_diff(rec.at(fmt::format("blocks.{}.attn.hook_pattern", l)), ref.at(fmt::format("attn.L{}", l))) < 1e-5);
    }
    if (ref.count("hidden.0")) {  // HF hidden states: embeddings, each block but the last, ln_f output
      CHECK(test::max_abs_diff(rec.at("hook_embed") + rec.at("hook_pos_embed"), ref.at("hidden.0")) < 1e-5);
      for (int l = 0; l + 1 < info.n_layers; ++l)
        CHECK(test::max_abs_diff(rec.at(fmt::format("blocks.{}.hook_resid_post", l)), ref.at(fmt::format("hidden.{}", l + 1))) < 1e-5);
      CHECK(test::max_abs_diff(rec.at("ln_final.hook_normalized"), ref.at(fmt::format("hidden.{}", info.n_layers))) < 1e-5);
    }

    if (!ref.count("gen.ids")) continue;
    const at::Tensor gen_ids = ref.at("gen.ids");
    SamplingOptions opts;
    opts.max_new_tokens = int(gen_ids.size(1)) - int(ids.size());
    Recorder gen_rec({"*hook_pattern", "hook_logits"});
    auto result = generate_autoregressive(*model, ids, opts, gen_rec.hooks);
    std::vector<std::int64_t> expected(gen_ids.data_ptr<std::int64_t>(), gen_ids.data_ptr<std::int64_t>() + gen_ids.numel());
    CHECK(result.output_ids == expected);
    for (int s = 0; s < opts.max_new_tokens; ++s) {
      INFO("generation step " << s);
      for (int l = 0; l < info.n_layers; ++l) {
        const at::Tensor& pattern = gen_rec.at(fmt::format("blocks.{}.attn.hook_pattern", l), s);
        CHECK(test::max_abs_diff(pattern, ref.at(fmt::format("gen.step{}.attn.L{}", s, l))) < 1e-5);
      }
      const std::string logits_key = fmt::format("gen.step{}.logits", s);
      if (ref.count(logits_key)) {
        const at::Tensor& step_logits = gen_rec.at("hook_logits", s);
        CHECK(test::max_abs_diff(step_logits.select(1, step_logits.size(1) - 1), ref.at(logits_key)) < 1e-4);
      }
    }
  }
}

}  // namespace

TEST_CASE("GPT-Neo matches Hugging Face from both weight formats", "[fixtures]") {
  const fs::path fixture = test::fixtures() / "tiny-neo-a";
  for (const char* weights : {"model.safetensors", "pytorch_model.bin"}) {
    test::TempDir tmp;
    check_against_fixture("gpt_neo", fixture, with_only(tmp, fixture, weights));
  }
}

TEST_CASE("GPT-2 matches Hugging Face from both weight formats", "[fixtures]") {
  const fs::path fixture = test::fixtures() / "tiny-gpt2-a";
  for (const char* weights : {"model.safetensors", "pytorch_model.bin"}) {
    test::TempDir tmp;
    check_against_fixture("gpt2", fixture, with_only(tmp, fixture, weights));
  }
}

TEST_CASE("GPT-Neo and GPT-2 match Hugging Face from 3 shards of either format (layers split across shards)", "[fixtures]") {
  for (const auto& [adapter, name] : {std::pair{"gpt_neo", "tiny-neo-a"}, {"gpt2", "tiny-gpt2-a"}}) {
    const fs::path fixture = test::fixtures() / name;
    auto link_files = [&](const test::TempDir& tmp) {
      for (const char* f : {"config.json", "vocab.json", "merges.txt"}) fs::create_symlink(fixture / f, tmp / f);
    };
    {
      INFO(name << ": model-0000N-of-00003.safetensors");
      test::TempDir tmp;
      link_files(tmp);
      test::write_safetensors_shards(read_safetensors(fixture / "model.safetensors"), tmp.path, 3);
      CHECK(test::shards_holding(tmp / "model.safetensors.index.json", ".h.0.").size() == 3);
      check_against_fixture(adapter, fixture, tmp.path);
    }
    test::TempDir tmp;
    link_files(tmp);
    if (!test::write_bin_shards(fixture / "pytorch_model.bin", tmp.path, 3)) {
      test::skip(fmt::format("{} cannot import torch: the pytorch_model.bin shards were not checked", test::kPython));
      continue;
    }
    INFO(name << ": pytorch_model-0000N-of-00003.bin");
    CHECK(test::shards_holding(tmp / "pytorch_model.bin.index.json", ".h.0.").size() == 3);
    check_against_fixture(adapter, fixture, tmp.path);
  }
}

TEST_CASE("GPT-Neo reports its shape and hook points", "[fixtures]") {
  auto model = load_model("gpt_neo", test::fixtures() / "tiny-neo-a");
  const ModelInfo& info = model->info();
  CHECK(info.n_layers == 4);
  CHECK(info.n_heads == 4);
  CHECK(info.d_head == 8);
  CHECK(info.window_size == 8);
  std::vector<std::string> kinds;
  for (auto k : info.layer_attention) kinds.push_back(attention_kind_name(k));
  CHECK(kinds == std::vector<std::string>{"causal", "local", "causal", "local"});
  std::vector<std::string> names;
  for (const auto& hp : model->hook_points()) names.push_back(hp.name);
  for (const char* expected : {"hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", "blocks.3.attn.hook_q",
                               "blocks.2.attn.hook_attn_scores", "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z",
                               "blocks.0.mlp.hook_post", "blocks.3.hook_resid_post", "ln_final.hook_normalized", "hook_logits"})
    CHECK(std::find(names.begin(), names.end(), expected) != names.end());
}

TEST_CASE("local attention never looks further back than the window", "[fixtures]") {
  auto model = load_model("gpt_neo", test::fixtures() / "tiny-neo-a");
  // 40 tokens, window 8: in local layers every key more than 7 positions back has weight exactly 0.
  std::vector<std::int64_t> ids;
  for (int i = 0; i < 40; ++i) ids.push_back((i * 7919) % 50000);
  Recorder rec({"blocks.1.attn.hook_pattern", "blocks.0.attn.hook_pattern"});
  model->forward(at::tensor(ids, at::kLong).unsqueeze(0), rec.hooks, {}, nullptr);
  const at::Tensor local = rec.at("blocks.1.attn.hook_pattern")[0];
  const at::Tensor global = rec.at("blocks.0.attn.hook_pattern")[0];
  for (int q = 0; q < 40; ++q)
    for (int k = 0; k < 40; ++k) {
      const bool in_window = k <= q && q - k < 8;
      if (!in_window) REQUIRE(local.index({at::indexing::Slice(), q, k}).abs().max().item<float>() == 0.0f);
      if (k > q) REQUIRE(global.index({at::indexing::Slice(), q, k}).abs().max().item<float>() == 0.0f);
    }
  CHECK(global.index({at::indexing::Slice(), 39, at::indexing::Slice(0, 31)}).sum().item<float>() > 0.0f);
  // Rows still sum to one.
  CHECK(test::max_abs_diff(local.sum(-1), at::ones({4, 40})) < 1e-5);
}

TEST_CASE("zero-ablating a head through hook_z changes exactly what it should", "[fixtures]") {
  auto model = load_model("gpt_neo", test::fixtures() / "tiny-neo-a");
  const std::vector<std::int64_t> ids{464, 3797, 318, 257, 1310, 2576};
  at::Tensor input = at::tensor(ids, at::kLong).unsqueeze(0);
  const int L = 1, H = 2;
  using Seen = std::map<std::string, at::Tensor>;
  auto run = [&](std::vector<int> ablated_heads) {
    HookSet hooks;
    hooks.add({{"blocks.1.attn.hook_z"}}, [ablated_heads](std::string_view, const CaptureContext&, at::Tensor& z) {
      z = z.clone();
      for (int h : ablated_heads) z.select(2, h).zero_();
    });
    Seen seen;  // registered after the ablation, so it sees the replaced values
    hooks.add({{"*hook_pattern", "*hook_attn_out", "*hook_z"}},
              [&seen](std::string_view name, const CaptureContext&, at::Tensor& t) { seen[std::string(name)] = t; });
    at::Tensor logits = model->forward(input, hooks, {}, nullptr);
    return std::make_pair(seen, logits);
  };
  auto [base, base_logits] = run({});
  auto [ablated, ablated_logits] = run({H});
  auto [none, none_logits] = run({0, 1, 2, 3});
  auto [only, only_logits] = run({0, 1, 3});

  // The ablated head's output is zero, the other heads' untouched.
  const at::Tensor z = ablated.at("blocks.1.attn.hook_z");
  CHECK(z.select(2, H).abs().max().item<float>() == 0.0f);
  CHECK(test::max_abs_diff(z.select(2, 0), base.at("blocks.1.attn.hook_z").select(2, 0)) == 0.0);
  // Layers up to and including L attend exactly as before; later layers change.
  for (int l = 0; l <= L; ++l)
    CHECK(test::max_abs_diff(ablated.at(fmt::format("blocks.{}.attn.hook_pattern", l)),
                             base.at(fmt::format("blocks.{}.attn.hook_pattern", l))) == 0.0);
  CHECK(test::max_abs_diff(ablated.at("blocks.2.attn.hook_pattern"), base.at("blocks.2.attn.hook_pattern")) > 1e-4);
  CHECK(test::max_abs_diff(ablated_logits, base_logits) > 1e-4);
  // attn_out is linear in z: what removing head H takes away equals what head H alone adds.
  const at::Tensor removed = base.at("blocks.1.hook_attn_out") - ablated.at("blocks.1.hook_attn_out");
  const at::Tensor head_alone = only.at("blocks.1.hook_attn_out") - none.at("blocks.1.hook_attn_out");
  CHECK(removed.abs().max().item<float>() > 1e-3);
  CHECK(test::max_abs_diff(removed, head_alone) < 1e-5);
}

TEST_CASE("a hook that changes a tensor's shape is refused", "[fixtures]") {
  auto model = load_model("gpt_neo", test::fixtures() / "tiny-neo-a");
  HookSet hooks;
  hooks.add({{"blocks.0.hook_resid_pre"}}, [](std::string_view, const CaptureContext&, at::Tensor& t) { t = t.sum(-1); });
  CHECK_THROWS_AS(model->forward(at::tensor({464, 3797}, at::kLong).unsqueeze(0), hooks, {}, nullptr), Error);
}

TEST_CASE("bad token ids and over-long inputs are usage errors", "[fixtures]") {
  auto model = load_model("gpt_neo", test::fixtures() / "tiny-neo-a");
  HookSet none;
  CHECK_THROWS_AS(model->forward(at::tensor({50257}, at::kLong).unsqueeze(0), none, {}, nullptr), UsageError);
  CHECK_THROWS_AS(model->forward(at::zeros({1, 129}, at::kLong), none, {}, nullptr), UsageError);
  SamplingOptions opts;
  opts.max_new_tokens = 127;
  CHECK_THROWS_AS(generate_autoregressive(*model, {1, 2}, opts, none), UsageError);
}

TEST_CASE("sampling is seeded and respects top-k", "[fixtures]") {
  auto model = load_model("gpt_neo", test::fixtures() / "tiny-neo-a");
  HookSet none;
  SamplingOptions opts;
  opts.greedy = false;
  opts.max_new_tokens = 8;
  opts.temperature = 1.5;
  opts.seed = 7;
  auto a = generate_autoregressive(*model, {464, 3797, 318}, opts, none);
  auto b = generate_autoregressive(*model, {464, 3797, 318}, opts, none);
  CHECK(a.new_ids == b.new_ids);
  // top-k 1 is greedy whatever the temperature.
  opts.top_k = 1;
  auto k1 = generate_autoregressive(*model, {464, 3797, 318}, opts, none);
  SamplingOptions greedy;
  greedy.max_new_tokens = 8;
  CHECK(k1.new_ids == generate_autoregressive(*model, {464, 3797, 318}, greedy, none).new_ids);
  // A tiny top-p keeps only the most likely token: greedy again.
  opts.top_k = 0;
  opts.top_p = 1e-6;
  CHECK(generate_autoregressive(*model, {464, 3797, 318}, opts, none).new_ids == k1.new_ids);
}

TEST_CASE("a forward computes only what is asked: Logits::none stops after the last observed hook point", "[fixtures]") {
  auto model = load_model("gpt_neo", test::fixtures() / "tiny-neo-a");
  const at::Tensor ids = at::arange(5, 30, at::kLong).unsqueeze(0);
  Recorder full({"blocks.1.attn.hook_pattern", "blocks.1.hook_resid_post"});
  const at::Tensor logits = model->forward(ids, full.hooks, {}, nullptr, Logits::all);
  // Layer 1 observed only: layers 2-3 and the unembedding are skipped, what was observed is the same.
  Recorder partial({"blocks.1.attn.hook_pattern", "blocks.1.hook_resid_post"});
  CHECK_FALSE(model->forward(ids, partial.hooks, {}, nullptr, Logits::none).defined());
  CHECK(test::max_abs_diff(partial.at("blocks.1.attn.hook_pattern"), full.at("blocks.1.attn.hook_pattern")) == 0);
  CHECK(test::max_abs_diff(partial.at("blocks.1.hook_resid_post"), full.at("blocks.1.hook_resid_post")) == 0);
  // Cut inside the last observed layer: after its pattern (no values, no MLP), its values, its MLP.
  Recorder all_points({"blocks.1.attn.hook_pattern", "blocks.1.attn.hook_v", "blocks.1.attn.hook_z",
                       "blocks.1.hook_resid_mid", "blocks.1.mlp.hook_post", "blocks.1.hook_mlp_out"});
  model->forward(ids, all_points.hooks, {}, nullptr, Logits::all);
  for (const char* last : {"blocks.1.attn.hook_pattern", "blocks.1.attn.hook_v", "blocks.1.attn.hook_z",
                           "blocks.1.hook_resid_mid", "blocks.1.mlp.hook_post", "blocks.1.hook_mlp_out"}) {
    CAPTURE(last);
    Recorder cut({last});
    CHECK_FALSE(model->forward(ids, cut.hooks, {}, nullptr, Logits::none).defined());
    CHECK(test::max_abs_diff(cut.at(last), all_points.at(last)) == 0);
  }
  // Someone listening to hook_logits gets every position, and the caller gets them too.
  Recorder logit_hook({"hook_logits"});
  const at::Tensor hooked = model->forward(ids, logit_hook.hooks, {}, nullptr, Logits::none);
  CHECK(test::max_abs_diff(logit_hook.at("hook_logits"), logits) == 0);
  CHECK(test::max_abs_diff(hooked, logits) == 0);
  // Logits::last is the last row of the full logits.
  HookSet none;
  CHECK(test::max_abs_diff(model->forward(ids, none, {}, nullptr, Logits::last), logits.narrow(1, 24, 1)) < 1e-6);
  // With a KV cache every layer runs (the cache must hold them all): the next step is still right.
  auto cache = model->new_state();
  Recorder cached({"blocks.1.attn.hook_pattern"});
  model->forward(ids.narrow(1, 0, 24), cached.hooks, {}, cache.get(), Logits::none);
  const at::Tensor next = model->forward(ids.narrow(1, 24, 1), none, {}, cache.get(), Logits::last);
  CHECK(test::max_abs_diff(next, logits.narrow(1, 24, 1)) < 1e-5);
}

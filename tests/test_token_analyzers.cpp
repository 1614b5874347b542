// The token_influence, neurons and compare_prompts analyzers, driven through the plugin interface:
// hand-made captures with values computed here, and real runs written by `hooklens capture|generate`
// analysed offline, checked against the captures read directly from the run.
#include "test_util.h"

#include <hooklens/analyzer.h>
#include <hooklens/plugin.h>
#include <hooklens/run.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <memory>

namespace {

using hooklens::Analyzer;
using hooklens::Phase;
using nlohmann::json;

std::shared_ptr<Analyzer> load(const std::string& name) {
  return std::static_pointer_cast<Analyzer>(hooklens::PluginRegistry::create_from(test::plugin_file(name), "analyzer"));
}

// A small model description for synthetic runs.
json model_json(int layers, int heads, const std::string& attention, int d_mlp = 6) {
  return {{"adapter", "synthetic"}, {"architecture", "Synthetic"}, {"path", "none"}, {"n_layers", layers},
          {"n_heads", heads}, {"n_kv_heads", heads}, {"d_model", 8}, {"d_head", 4}, {"d_mlp", d_mlp},
          {"vocab_size", 100}, {"n_ctx", 64}, {"layer_attention", std::vector<std::string>(std::size_t(layers), attention)},
          {"window_size", 0}, {"bos_id", nullptr}, {"eos_id", nullptr}, {"mask_id", nullptr}, {"weight_dtype", "F32"}};
}

json prompt_json(const std::vector<std::int64_t>& ids) {
  std::vector<std::string> tokens;
  for (auto id : ids) tokens.push_back("t" + std::to_string(id));
  return {{"text", ""}, {"ids", ids}, {"tokens", tokens}, {"source", "prompt"}};
}

// Random attention rows: [1, heads, rows, keys], each row summing to 1 over its first `visible(r)` keys.
at::Tensor random_pattern(std::int64_t heads, std::int64_t rows, std::int64_t keys, std::int64_t query_offset, bool causal) {
  at::Tensor p = at::rand({1, heads, rows, keys}, at::kDouble) + 0.05;
  if (causal)
    for (std::int64_t r = 0; r < rows; ++r) p.select(2, r).narrow(-1, 0, keys).slice(-1, query_offset + r + 1).zero_();
  return (p / p.sum(-1, true)).to(at::kFloat);
}

double entropy_of_rows(const at::Tensor& rows_by_keys) {  // mean over rows of -sum w log w, rows [n, keys]
  const at::Tensor w = rows_by_keys.to(at::kDouble);
  return (-(w * w.clamp_min(1e-300).log()).sum(-1)).mean().item<double>();
}

// Runs `name` offline over a run directory, as `hooklens analyze` does: begin, every matching
// capture in manifest order, finish.
json analyze_run(const test::fs::path& run, const std::string& name, const json& options = json::object()) {
  auto analyzer = load(name);
  hooklens::RunReader reader(run);
  const json& m = reader.manifest();
  analyzer->begin({{"model", m["model"]}, {"prompts", m["prompts"]}, {"mode", m["generation"].value("mode", "none")}, {"options", options}});
  for (std::size_t i = 0; i < reader.capture_count(); ++i) {
    const json& c = reader.capture(i);
    const std::string hook = c["hook"];
    bool wanted = false;
    for (const auto& pattern : analyzer->hooks()) wanted = wanted || hooklens::hook_name_matches(pattern, hook);
    if (!wanted) continue;
    hooklens::CaptureContext ctx = test::context(c["prompt"], *hooklens::parse_phase(c["phase"].get<std::string>()), c["step"],
                                                 c["block"], c["layer"], c["query_offset"], c["pass"]);
    ctx.key_offset = c["key_offset"];
    analyzer->observe(hook, ctx, reader.load(i).to(at::kFloat));
  }
  return analyzer->finish(m);
}


// Finds the capture of `hook` at (prompt, step); -1 if none.
long find_capture(const hooklens::RunReader& reader, const std::string& hook, int prompt, int step) {
  for (std::size_t i = 0; i < reader.capture_count(); ++i) {
    const json& c = reader.capture(i);
    if (c["hook"] == hook && c["prompt"] == prompt && c["step"] == step && c["pass"] == 0) return long(i);
  }
  return -1;
}

}  // namespace

TEST_CASE("token_influence on hand-made autoregressive patterns") {
  at::manual_seed(1);
  const int L = 2, H = 3, P = 3;
  auto analyzer = load("token_influence");
  REQUIRE(analyzer->hooks() == std::vector<std::string>{"blocks.*.attn.hook_pattern"});
  const json run = {{"model", model_json(L, H, "causal")}, {"prompts", {prompt_json({5, 6, 7})}},
                    {"mode", "autoregressive"}, {"options", {{"target", "1"}}}};
  analyzer->begin(run);
  // Prefill (ignored), then steps 1 and 2 with one query row each (KV cache).
  std::map<std::pair<int, int>, at::Tensor> rows;  // (step, layer) -> [H, keys]
  for (int l = 0; l < L; ++l) analyzer->observe("blocks.x.attn.hook_pattern", test::context(0, Phase::prefill, 0, -1, l, 0),
                                                random_pattern(H, P, P, 0, true));
  for (int step = 1; step <= 2; ++step)
    for (int l = 0; l < L; ++l) {
      const std::int64_t q = P + step - 1;
      const at::Tensor p = random_pattern(H, 1, q + 1, q, true);
      rows[{step, l}] = p[0].select(1, 0).to(at::kDouble);
      analyzer->observe("blocks.x.attn.hook_pattern", test::context(0, Phase::decode, step, -1, l, q), p);
    }
  json manifest = run;
  manifest["generation"] = {{"mode", "autoregressive"},
                            {"steps", {{{"step", 0}, {"token", 11}, {"token_string", " a"}},
                                       {{"step", 1}, {"token", 12}, {"token_string", " b"}},
                                       {{"step", 2}, {"token", 13}, {"token_string", " c"}}}}};
  const json report = analyzer->finish(manifest);
  CHECK(report["analyzer"] == "token_influence");
  CHECK(report["definitions"].contains("attention_to_prompt"));
  REQUIRE(report["generated"].size() == 2);  // the token chosen at step 2 is never fed
  for (int i = 0; i < 2; ++i) {
    const json& g = report["generated"][i];
    CHECK(g["position"] == P + i);
    CHECK(g["token_string"] == (i == 0 ? " a" : " b"));
    at::Tensor over_layers = at::zeros({P}, at::kDouble);
    for (int l = 0; l < L; ++l) {
      const at::Tensor expected = rows[{i + 1, l}].narrow(1, 0, P).mean(0);
      over_layers += expected / L;
      for (int k = 0; k < P; ++k) CHECK(g["layers"][l]["attention_to_prompt"][k].get<double>() == Approx(expected[k].item<double>()).margin(1e-6));
      const at::Tensor to_target = rows[{i + 1, l}].select(1, 1);
      for (int h = 0; h < H; ++h)
        CHECK(g["attention_to_target"][l]["heads"][h].get<double>() == Approx(to_target[h].item<double>()).margin(1e-6));
      CHECK(g["attention_to_target"][l]["head_mean"].get<double>() == Approx(to_target.mean().item<double>()).margin(1e-6));
    }
    for (int k = 0; k < P; ++k) CHECK(g["mean_over_layers"][k].get<double>() == Approx(over_layers[k].item<double>()).margin(1e-6));
  }
  REQUIRE(report["heads"].size() == std::size_t(L * H));
  for (const json& head : report["heads"]) {
    const int l = head["layer"], h = head["head"];
    const at::Tensor a = rows[{1, l}][h], b = rows[{2, l}][h];
    const at::Tensor mean = (a.narrow(0, 0, P) + b.narrow(0, 0, P)) / 2;
    for (int k = 0; k < P; ++k) CHECK(head["mean_attention_to_prompt"][k].get<double>() == Approx(mean[k].item<double>()).margin(1e-6));
    CHECK(head["prompt_mass"].get<double>() == Approx(mean.sum().item<double>()).margin(1e-6));
    CHECK(head["rows"] == 2);
    CHECK(head["entropy"].get<double>() == Approx((entropy_of_rows(a.unsqueeze(0)) + entropy_of_rows(b.unsqueeze(0))) / 2).margin(1e-6));
  }
  CHECK(report["target"]["position"] == 1);
  CHECK(report["target"]["token"] == "t6");
}

TEST_CASE("token_influence on hand-made masked-diffusion patterns") {
  at::manual_seed(2);
  const int L = 1, H = 2, P = 2, T = 5;
  auto analyzer = load("token_influence");
  const json run = {{"model", model_json(L, H, "bidirectional")}, {"prompts", {prompt_json({1, 2})}}, {"mode", "masked_diffusion"}};
  analyzer->begin(run);
  std::vector<at::Tensor> patterns;
  for (int step = 0; step < 3; ++step) {
    patterns.push_back(random_pattern(H, T, T, 0, false));
    analyzer->observe("blocks.0.attn.hook_pattern", test::context(0, Phase::denoise, step, step / 2, 0, 0), patterns.back());
    // The unconditional CFG pass must not count.
    analyzer->observe("blocks.0.attn.hook_pattern", test::context(0, Phase::denoise, step, step / 2, 0, 0, 1), random_pattern(H, T, T, 0, false));
  }
  json manifest = run;
  manifest["generation"] = {{"mode", "masked_diffusion"}, {"output_ids", {1, 2, 9, 9, 9}}, {"steps", json::array()}};
  const json report = analyzer->finish(manifest);
  REQUIRE(report["steps"].size() == 3);
  std::vector<at::Tensor> expected;
  for (int s = 0; s < 3; ++s) {
    expected.push_back(patterns[std::size_t(s)][0].to(at::kDouble).narrow(1, P, T - P).narrow(2, 0, P).mean(at::IntArrayRef{0, 1}));
    const json& layer = report["steps"][s]["layers"][0];
    CHECK(report["steps"][s]["block"] == s / 2);
    for (int k = 0; k < P; ++k) CHECK(layer["attention_to_prompt"][k].get<double>() == Approx(expected.back()[k].item<double>()).margin(1e-6));
    if (s == 0) {
      CHECK(layer["change"].is_null());
    } else {
      const at::Tensor change = expected[std::size_t(s)] - expected[std::size_t(s) - 1];
      for (int k = 0; k < P; ++k) CHECK(layer["change"][k].get<double>() == Approx(change[k].item<double>()).margin(1e-6));
      CHECK(layer["change_l1"].get<double>() == Approx(change.abs().sum().item<double>()).margin(1e-6));
    }
  }
  CHECK(report["target"].is_null());
}

TEST_CASE("token_influence without generation, and bad options") {
  auto analyzer = load("token_influence");
  const json run = {{"model", model_json(1, 1, "causal")}, {"prompts", {prompt_json({1, 2})}}, {"mode", "none"}};
  analyzer->begin(run);
  analyzer->observe("blocks.0.attn.hook_pattern", test::context(0, Phase::prefill, 0, -1, 0, 0), random_pattern(1, 2, 2, 0, true));
  const json report = analyzer->finish(run);
  CHECK(report["note"].get<std::string>().find("needs a generation run") != std::string::npos);
  CHECK(report["heads"].empty());

  const auto begin_with = [](const std::string& name, const json& options) {
    auto a = load(name);
    a->begin({{"model", model_json(1, 1, "causal")}, {"prompts", {prompt_json({1, 2})}}, {"mode", "none"}, {"options", options}});
  };
  CHECK_THROWS_AS(begin_with("token_influence", {{"target", "abc"}}), hooklens::UsageError);
  CHECK_THROWS_AS(begin_with("token_influence", {{"target", "-1"}}), hooklens::UsageError);
  CHECK_THROWS_AS(begin_with("token_influence", {{"target", "64"}}), hooklens::UsageError);  // past n_ctx
  CHECK_THROWS_AS(begin_with("token_influence", {{"k", "3"}}), hooklens::UsageError);
  CHECK_THROWS_AS(begin_with("neurons", {{"k", "0"}}), hooklens::UsageError);
  CHECK_THROWS_AS(begin_with("neurons", {{"k", "3x"}}), hooklens::UsageError);
  CHECK_THROWS_AS(begin_with("compare_prompts", {{"top", ""}}), hooklens::UsageError);
  CHECK_THROWS_AS(begin_with("compare_prompts", {{"bogus", "1"}}), hooklens::UsageError);
  CHECK(test::error_of([&] { begin_with("neurons", {{"k", "zero"}}); }).find("neurons.k") != std::string::npos);
  CHECK_NOTHROW(begin_with("neurons", {{"k", "3"}}));
}

TEST_CASE("neurons on hand-made activations") {
  at::manual_seed(3);
  auto analyzer = load("neurons");
  const int D = 6;
  const json run = {{"model", model_json(1, 1, "causal", D)}, {"prompts", {prompt_json({1, 2, 3, 4}), prompt_json({5, 6, 7})}},
                    {"mode", "none"}, {"options", {{"k", "2"}}}};
  analyzer->begin(run);
  const at::Tensor a = at::randn({1, 4, D}) * at::arange(1, D + 1).to(at::kFloat);
  const at::Tensor b = at::randn({1, 3, D}) + 3 * at::arange(D).to(at::kFloat);
  analyzer->observe("blocks.0.mlp.hook_post", test::context(0, Phase::prefill, 0, -1, 0, 0), a);
  analyzer->observe("blocks.0.mlp.hook_post", test::context(1, Phase::prefill, 0, -1, 0, 0), b);
  // A repeated position (as a later diffusion step would show it) is not counted twice.
  analyzer->observe("blocks.0.mlp.hook_post", test::context(1, Phase::prefill, 1, -1, 0, 0), b * 10);
  const json report = analyzer->finish(run);
  CHECK(report["analyzer"] == "neurons");

  const auto check_top = [](const json& top, const at::Tensor& rows) {
    const at::Tensor var = rows.to(at::kDouble).var(0, false);
    const at::Tensor order = std::get<1>(var.topk(2));
    REQUIRE(top.size() == 2);
    for (int j = 0; j < 2; ++j) {
      const std::int64_t n = order[j].item<std::int64_t>();
      CHECK(top[j]["neuron"] == n);
      CHECK(top[j]["variance"].get<double>() == Approx(var[n].item<double>()).epsilon(1e-9));
      CHECK(top[j]["mean"].get<double>() == Approx(rows.to(at::kDouble).select(1, n).mean().item<double>()).margin(1e-9));
    }
  };
  REQUIRE(report["per_prompt"].size() == 2);
  check_top(report["per_prompt"][0]["layers"][0]["top"], a[0]);
  check_top(report["per_prompt"][1]["layers"][0]["top"], b[0]);
  const json& first = report["per_prompt"][0]["layers"][0]["top"][0];
  for (int r = 0; r < 4; ++r) CHECK(first["activations"][r].get<double>() == Approx(a[0][r][first["neuron"].get<int>()].item<double>()));
  CHECK(report["per_prompt"][1]["tokens"] == json({"t5", "t6", "t7"}));
  check_top(report["pooled"]["layers"][0]["top"], at::cat({a[0], b[0]}));
  CHECK(report["pooled"]["positions"] == 7);

  const at::Tensor diff = (b[0].to(at::kDouble).mean(0) - a[0].to(at::kDouble).mean(0)).abs();
  const json& across = report["across_prompts"]["layers"][0]["top"];
  const std::int64_t best = std::get<1>(diff.topk(1))[0].item<std::int64_t>();
  CHECK(across[0]["neuron"] == best);
  CHECK(across[0]["difference"].get<double>() == Approx(diff[best].item<double>()).epsilon(1e-9));
  CHECK(across[0]["means"][1].get<double>() == Approx(b[0].to(at::kDouble).select(1, best).mean().item<double>()).epsilon(1e-9));
}

TEST_CASE("token_influence and neurons on a real autoregressive run", "[fixtures]") {
  test::TempDir dir;
  const auto run = dir / "run";
  test::require_hooklens(fmt::format("generate --model '{}' --prompt 'Once upon a time' --max-new-tokens 6 "
                                     "--hooks 'blocks.*.attn.hook_pattern,blocks.*.mlp.hook_post' --out '{}'",
                                     (test::fixtures() / "tiny-neo-a").string(), run.string()), dir / "log.txt");
  const json report = analyze_run(run, "token_influence", {{"target", "0"}});
  hooklens::RunReader reader(run);
  const json& m = reader.manifest();
  const int P = int(m["prompts"][0]["ids"].size()), L = m["model"]["n_layers"];
  REQUIRE(report["generated"].size() == 5);  // 6 tokens; the last is never fed
  for (int i = 0; i < 5; ++i) {
    const json& g = report["generated"][i];
    CHECK(g["token"] == m["generation"]["steps"][i]["token"]);
    CHECK(g["token_string"] == m["generation"]["steps"][i]["token_string"]);
    REQUIRE(g["layers"].size() == std::size_t(L));
    for (int l = 0; l < L; ++l) {
      const long c = find_capture(reader, fmt::format("blocks.{}.attn.hook_pattern", l), 0, i + 1);
      REQUIRE(c >= 0);
      const at::Tensor row = reader.load(std::size_t(c)).to(at::kDouble)[0].select(1, 0);  // [H, keys]
      const at::Tensor expected = row.narrow(1, 0, P).mean(0);
      for (int k = 0; k < P; ++k) CHECK(g["layers"][l]["attention_to_prompt"][k].get<double>() == Approx(expected[k].item<double>()).margin(1e-6));
      CHECK(g["attention_to_target"][l]["head_mean"].get<double>() == Approx(row.select(1, 0).mean().item<double>()).margin(1e-6));
    }
  }
  CHECK(report["target"]["token"] == m["prompts"][0]["tokens"][0]);
  CHECK(json::parse(report.dump()) == report);

  // neurons: positions 0..P-1 from the prefill, then one per decode step; variance against torch.
  const json neurons = analyze_run(run, "neurons", {{"k", "3"}});
  std::vector<at::Tensor> rows;
  for (int step = 0; step <= 5; ++step) rows.push_back(reader.load(std::size_t(find_capture(reader, "blocks.2.mlp.hook_post", 0, step)))[0]);
  const at::Tensor all = at::cat(rows).to(at::kDouble);
  REQUIRE(all.size(0) == P + 5);
  const json& layer2 = neurons["per_prompt"][0]["layers"][2];
  CHECK(layer2["positions"].size() == std::size_t(P + 5));
  const at::Tensor var = all.var(0, false);
  const at::Tensor top = std::get<1>(var.topk(3));
  for (int j = 0; j < 3; ++j) {
    const std::int64_t n = top[j].item<std::int64_t>();
    CHECK(layer2["top"][j]["neuron"] == n);
    CHECK(layer2["top"][j]["variance"].get<double>() == Approx(var[n].item<double>()).epsilon(1e-6));
    for (int r = 0; r < P + 5; ++r) CHECK(layer2["top"][j]["activations"][r].get<double>() == Approx(all[r][n].item<double>()).margin(1e-6));
  }
  CHECK(neurons["per_prompt"][0]["tokens"][P] == m["generation"]["steps"][0]["token_string"]);
  CHECK(neurons["across_prompts"].is_null());
}

TEST_CASE("token_influence per denoising step of a real masked-diffusion run", "[fixtures]") {
  test::TempDir dir;
  const auto run = dir / "run";
  // The fixture's generate call (llada-tiny-a/README.md).
  test::require_hooklens(fmt::format("generate --model '{}' --prompt-ids 85,294,223,181,193,390,258,97,335,300,120,241 "
                                     "--gen-length 16 --steps 8 --block-length 8 --hooks 'blocks.*.attn.hook_pattern' --out '{}'",
                                     (test::fixtures() / "llada-tiny-a").string(), run.string()), dir / "log.txt");
  const json report = analyze_run(run, "token_influence", {{"target", "20"}});
  hooklens::RunReader reader(run);
  const int P = 12;
  REQUIRE(report["steps"].size() == 8);
  std::map<int, at::Tensor> previous;
  for (int s = 0; s < 8; ++s) {
    const json& step = report["steps"][s];
    CHECK(step["block"] == s / 4);
    CHECK(step["ids"] == reader.manifest()["generation"]["steps"][s]["ids"]);
    for (int l = 0; l < 2; ++l) {
      const at::Tensor p = reader.load(std::size_t(find_capture(reader, fmt::format("blocks.{}.attn.hook_pattern", l), 0, s))).to(at::kDouble)[0];
      const at::Tensor expected = p.narrow(1, P, 16).narrow(2, 0, P).mean(at::IntArrayRef{0, 1});
      const json& layer = step["layers"][l];
      for (int k = 0; k < P; ++k) CHECK(layer["attention_to_prompt"][k].get<double>() == Approx(expected[k].item<double>()).margin(1e-6));
      if (s > 0) CHECK(layer["change_l1"].get<double>() == Approx((expected - previous[l]).abs().sum().item<double>()).margin(1e-6));
      const at::Tensor to_target = p.narrow(1, P, 16).select(2, 20).mean(1);
      for (int h = 0; h < 4; ++h) CHECK(step["attention_to_target"][l]["heads"][h].get<double>() == Approx(to_target[h].item<double>()).margin(1e-6));
      previous[l] = expected;
    }
  }
  CHECK(report["target"]["token"] == "<mask>");
}

TEST_CASE("compare_prompts on two prompts of a real run", "[fixtures]") {
  test::TempDir dir;
  const auto run = dir / "run";
  test::require_hooklens(fmt::format("capture --model '{}' --prompt 'Once upon a time there' --prompt 'The cat sat' "
                                     "--hooks 'blocks.*.attn.hook_pattern,blocks.*.mlp.hook_post' --out '{}'",
                                     (test::fixtures() / "tiny-neo-a").string(), run.string()), dir / "log.txt");
  const json report = analyze_run(run, "compare_prompts", {{"k", "4"}, {"top", "5"}});
  hooklens::RunReader reader(run);
  CHECK(report["analyzer"] == "compare_prompts");
  REQUIRE(report["heads"].size() == 16);
  // Entropy of each head computed directly: the prompts are shorter than the local window, so every
  // layer is causal here; rows 1.. see >= 2 keys.
  std::map<std::pair<int, int>, double> spread;
  for (const json& head : report["heads"]) {
    const int l = head["layer"], h = head["head"];
    std::vector<double> entropies;
    for (int p = 0; p < 2; ++p) {
      const at::Tensor pattern = reader.load(std::size_t(find_capture(reader, fmt::format("blocks.{}.attn.hook_pattern", l), p, 0)))[0][h];
      entropies.push_back(entropy_of_rows(pattern.narrow(0, 1, pattern.size(0) - 1)));
      CHECK(head["per_prompt"][p]["entropy"].get<double>() == Approx(entropies.back()).margin(1e-6));
    }
    CHECK(head["entropy"].get<double>() == Approx((entropies[0] + entropies[1]) / 2).margin(1e-6));
    CHECK(head["spread"]["entropy"].get<double>() == Approx(std::abs(entropies[0] - entropies[1])).margin(1e-6));
    spread[{l, h}] = std::abs(entropies[0] - entropies[1]);
  }
  REQUIRE(report["most_different_heads"].size() == 5);
  double largest = 0;
  for (const auto& [key, v] : spread) largest = std::max(largest, v);
  CHECK(report["most_different_heads"][0]["entropy_spread"].get<double>() == Approx(largest).margin(1e-9));
  for (std::size_t i = 1; i < 5; ++i)
    CHECK(report["most_different_heads"][i - 1]["entropy_spread"].get<double>() >= report["most_different_heads"][i]["entropy_spread"].get<double>());

  // Head-averaged statistics of prompt 1, layer 0: entropy of the head-mean pattern.
  const at::Tensor p1 = reader.load(std::size_t(find_capture(reader, "blocks.0.attn.hook_pattern", 1, 0)))[0].to(at::kDouble).mean(0);
  CHECK(report["per_prompt"][1]["layers"][0]["head_averaged"]["entropy"].get<double>() == Approx(entropy_of_rows(p1.narrow(0, 1, 2))).margin(1e-6));

  // Neurons whose mean differs most between the prompts, against torch.
  const auto mean_of = [&](int p) {
    return reader.load(std::size_t(find_capture(reader, "blocks.1.mlp.hook_post", p, 0)))[0].to(at::kDouble).mean(0);
  };
  const at::Tensor diff = (mean_of(0) - mean_of(1)).abs();
  const at::Tensor order = std::get<1>(diff.topk(4));
  const json& top = report["neurons"]["layers"][1]["top"];
  REQUIRE(top.size() == 4);
  for (int j = 0; j < 4; ++j) {
    CHECK(top[j]["neuron"] == order[j].item<std::int64_t>());
    CHECK(top[j]["difference"].get<double>() == Approx(diff[order[j]].item<double>()).margin(1e-6));
  }
}

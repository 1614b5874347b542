// The attention_stats analyzer: how sharp each head's attention is (entropy, row std, max weight,
// self mass), pooled over every capture of blocks.*.attn.hook_pattern, and how averaging a layer's
// heads hides sharp heads. Statistics come from summarize_heads (attention_stats.h); this file only
// pools them and writes the report (docs/analyzers-attention.md).
#include <hooklens/analyzer.h>
#include <hooklens/attention_stats.h>
#include <hooklens/error.h>
#include <hooklens/hook_names.h>
#include <hooklens/plugin_define.h>
#include <hooklens/plugin_options.h>

#include <ATen/ops/mean.h>
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <string>

namespace hooklens {
namespace {

using nlohmann::json;
constexpr const char* kName = "attention_stats";

// The "steps" option: "all" (default) or step numbers (3, [0, 3] or "0,3").
std::optional<std::set<int>> parse_steps(const PluginOptions& options) {
  if (!options.has("steps") || options.value("steps") == "all") return std::nullopt;
  const std::vector<int> steps = *options.int_list("steps", 0);
  return std::set<int>(steps.begin(), steps.end());
}

// The statistics of one layer: per model head, and of the head-averaged pattern.
struct LayerStats {
  std::map<int, AttentionSummary> heads;
  AttentionSummary averaged;
  std::set<int> averaged_heads;  // the model heads the averaged pattern was taken over
};

json definitions() {
  return {
      {"row", "one query's attention weights over the keys it may see (causal: keys <= query; local: also > query - "
              "window; bidirectional: all keys), restricted to the captured keys; only rows seeing >= 2 keys count"},
      {"entropy", "mean over rows of -sum w log w, in nats"},
      {"normalized_entropy", "mean over rows of entropy / log n, n = keys the row sees (0: one key, 1: uniform)"},
      {"row_std", "mean over rows of the population standard deviation of the row's n weights"},
      {"max_weight", "mean over rows of the row's largest weight"},
      {"self_mass", "mean over rows of the weight on the query's own position (0 when that key was not captured)"},
      {"other_mass", "mean over rows of the captured weight on keys other than the query's own position"},
      {"label", "from mean normalized_entropy: sharp below thresholds.sharp_below, uniform above "
                "thresholds.uniform_above, else medium"},
      {"rows", "number of rows pooled (every prompt, step, pass and batch row of the selected captures)"},
      {"mean_*", "per layer: mean over the layer's heads of each head's statistic"},
      {"head_averaged", "the statistics of the layer's pattern averaged over its captured heads (mean over heads of "
                        "the weights, then the statistics)"},
      {"averaging_hides", "true when some head of the layer is sharp but the head-averaged pattern is not"}};
}

class AttentionStats final : public Analyzer {
 public:
  std::vector<std::string> hooks() const override { return {hooklens::hook_names::every_layer(hooklens::hook_names::pattern)}; }

  void begin(const json& run) override {
    steps_ = parse_steps(PluginOptions(kName, run.value("options", json::object()), {"steps"}));
    run_ = PatternRun::of(run, kName);
    layers_.clear();
    captures_ = 0;
  }

  void observe(std::string_view hook, const CaptureContext& ctx, const at::Tensor& tensor) override {
    if (!run_) throw Error(fmt::format("{}: observe() before begin()", kName));
    if (steps_ && !steps_->count(ctx.step)) return;
    const at::Tensor pattern = run_->check(hook, ctx, tensor, kName);
    const std::vector<int> heads = run_->heads_of(pattern.size(1), kName);
    const PatternRows rows = PatternRows::of(pattern, ctx, run_->model);
    LayerStats& layer = layers_[ctx.layer];
    const std::vector<AttentionSummary> per_head = summarize_heads(pattern, rows);
    for (std::size_t h = 0; h < per_head.size(); ++h) layer.heads[heads[h]].add(per_head[h]);
    layer.averaged.add(summarize_heads(at::mean(pattern, -3, /*keepdim=*/true), rows).front());
    layer.averaged_heads.insert(heads.begin(), heads.end());
    ++captures_;
  }

  // Every statistic is a sum over rows, so another rank's layers add to ours.
  bool merges_state() const override { return true; }

  json save_state() const override {
    json layers = json::array();
    for (const auto& [l, layer] : layers_) {
      json heads = json::array();
      for (const auto& [h, summary] : layer.heads) heads.push_back({{"head", h}, {"summary", summary.to_state()}});
      layers.push_back({{"layer", l}, {"heads", std::move(heads)}, {"averaged", layer.averaged.to_state()},
                        {"averaged_heads", layer.averaged_heads}});
    }
    return {{"captures", captures_}, {"layers", std::move(layers)}};
  }

  void merge_state(const json& state) override {
    if (!run_) throw Error(fmt::format("{}: merge_state() before begin()", kName));
    std::map<int, LayerStats> layers;
    std::int64_t captures = 0;
    read_state(kName, [&] {
      captures = state_count(state.at("captures"), "captures");
      for (const json& entry : state_array(state.at("layers"), "layers")) {
        LayerStats& layer = layers[state_index(entry.at("layer"), run_->model.n_layers, "layer")];
        for (const json& head : state_array(entry.at("heads"), "heads"))
          layer.heads[state_index(head.at("head"), run_->model.n_heads, "head")].add(
              AttentionSummary::from_state(head.at("summary")));
        layer.averaged.add(AttentionSummary::from_state(entry.at("averaged")));
        for (const json& h : state_array(entry.at("averaged_heads"), "averaged_heads"))
          layer.averaged_heads.insert(state_index(h, run_->model.n_heads, "head"));
      }
    });
    for (const auto& [l, theirs] : layers) {
      LayerStats& mine = layers_[l];
      for (const auto& [h, summary] : theirs.heads) mine.heads[h].add(summary);
      mine.averaged.add(theirs.averaged);
      mine.averaged_heads.insert(theirs.averaged_heads.begin(), theirs.averaged_heads.end());
    }
    captures_ += captures;
  }

  json finish(const json& manifest) override {
    (void)manifest;
    json report = {{"analyzer", kName},
                   {"definitions", definitions()},
                   {"thresholds", {{"sharp_below", kSharpBelow}, {"uniform_above", kUniformAbove}}},
                   {"steps", steps_ ? json(*steps_) : json("all")},
                   {"captures", captures_},
                   {"heads", json::array()},
                   {"layers", json::array()}};
    for (const auto& [l, layer] : layers_) {
      for (const auto& [h, summary] : layer.heads) {
        json head = summary.to_json();
        head["layer"] = l;
        head["head"] = h;
        report["heads"].push_back(std::move(head));
      }
      report["layers"].push_back(layer_json(l, layer));
    }
    null_non_finite(report);
    return report;
  }

 private:
  static json layer_json(int l, const LayerStats& layer) {
    AttentionSummary sum;  // of the heads' per-row means, so that each head weighs the same
    int counted = 0;
    json labels = {{"sharp", 0}, {"medium", 0}, {"uniform", 0}};
    bool some_sharp = false;
    for (const auto& entry : layer.heads) {
      const AttentionSummary& s = entry.second;
      if (s.rows == 0) continue;
      AttentionSummary m = s.mean();
      m.rows = 1;
      sum.add(m);
      ++counted;
      const std::string label = sharpness_label(m.normalized_entropy);
      labels[label] = labels[label].get<int>() + 1;
      some_sharp = some_sharp || label == "sharp";
    }
    const AttentionSummary mean = sum.mean();
    const auto stat = [&](double v) { return counted > 0 ? json(v) : json(); };
    const json averaged = layer.averaged.to_json();
    return {{"layer", l},
            {"heads", counted},
            {"mean_entropy", stat(mean.entropy)},
            {"mean_normalized_entropy", stat(mean.normalized_entropy)},
            {"mean_row_std", stat(mean.row_std)},
            {"mean_max_weight", stat(mean.max_weight)},
            {"mean_self_mass", stat(mean.self_mass)},
            {"mean_other_mass", stat(mean.other_mass)},
            {"labels", labels},
            {"head_averaged", averaged},
            {"head_averaged_over", layer.averaged_heads},
            {"averaging_hides", some_sharp && averaged["label"] != "sharp"}};
  }

  std::optional<PatternRun> run_;
  std::optional<std::set<int>> steps_;
  std::map<int, LayerStats> layers_;
  std::int64_t captures_ = 0;
};

}  // namespace
}  // namespace hooklens

HOOKLENS_DEFINE_PLUGIN(hooklens::Analyzer, hooklens::AttentionStats, "analyzer", "attention_stats", "1.0",
                       "attention sharpness per head and layer: entropy, row std, max weight, self mass")

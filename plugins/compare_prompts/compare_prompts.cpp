// The "compare_prompts" analyzer: several prompts side by side. Reads each prompt's first forward
// (step 0, conditional pass): attention statistics per prompt, layer and head (attention_stats.h),
// which heads behave most differently between prompts, and, when the run captured
// blocks.*.mlp.hook_post, which neurons' mean activation differs most (analysis_common's
// NeuronStats, as the neurons analyzer computes it).
#include "neuron_stats.h"

#include <hooklens/analyzer.h>
#include <hooklens/attention_stats.h>
#include <hooklens/error.h>
#include <hooklens/hook_names.h>
#include <hooklens/plugin_define.h>
#include <hooklens/plugin_options.h>
#include <hooklens/text.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <tuple>

namespace {

using hooklens::AttentionSummary;
using hooklens::ends_with;
using hooklens::finite_or_null;
using nlohmann::json;

constexpr std::array<const char*, 6> kStatistics = {"entropy", "normalized_entropy", "row_std",
                                                    "max_weight", "self_mass", "other_mass"};

std::array<double, 6> statistics_of(const AttentionSummary& sum) {
  const AttentionSummary m = sum.mean();
  return {m.entropy, m.normalized_entropy, m.row_std, m.max_weight, m.self_mass, m.other_mass};
}

// The statistics averaged over the summaries that counted rows (null when none did).
json mean_statistics(const std::vector<AttentionSummary>& summaries) {
  std::array<double, 6> total{};
  int n = 0;
  for (const AttentionSummary& s : summaries) {
    if (s.rows == 0) continue;
    const auto v = statistics_of(s);
    for (std::size_t i = 0; i < v.size(); ++i) total[i] += v[i];
    ++n;
  }
  json out = {{"heads", n}};
  for (std::size_t i = 0; i < total.size(); ++i) out[kStatistics[i]] = n > 0 ? finite_or_null(total[i] / n) : json();
  out["label"] = n > 0 ? json(hooklens::sharpness_label(total[1] / n)) : json();
  return out;
}

class ComparePrompts : public hooklens::Analyzer {
 public:
  std::vector<std::string> hooks() const override { return {hooklens::hook_names::every_layer(hooklens::hook_names::pattern), hooklens::hook_names::every_layer(hooklens::hook_names::mlp_post)}; }

  void begin(const json& run) override {
    const hooklens::PluginOptions options("compare_prompts", run.value("options", json::object()), {"k", "top"});
    k_ = std::size_t(options.integer("k", 10, 1));
    top_ = std::size_t(options.integer("top", 10, 1));
    model_ = hooklens::ModelInfo::from_json(run.at("model"));
    prompt_count_ = int(run.value("prompts", json::array()).size());
    heads_.clear();
    averaged_.clear();
    neurons_ = hooklens::analysis::NeuronStats();
  }

  void observe(std::string_view hook, const hooklens::CaptureContext& ctx, const at::Tensor& tensor) override {
    if (ctx.step != 0 || ctx.pass != 0 || ctx.layer < 0) return;  // each prompt's first, conditional forward only
    if (hooklens::hook_names::layer_of(hook, hooklens::hook_names::mlp_post)) {
      neurons_.add(ctx.prompt, ctx.layer, ctx.query_offset, tensor);
      return;
    }
    const at::Tensor pattern = tensor.to(at::kFloat);
    const hooklens::PatternRows rows = hooklens::PatternRows::of(pattern, ctx, model_);
    const std::vector<AttentionSummary> per_head = hooklens::summarize_heads(pattern, rows);
    for (std::size_t h = 0; h < per_head.size(); ++h) heads_[{ctx.layer, int(h), ctx.prompt}].add(per_head[h]);
    averaged_[{ctx.prompt, ctx.layer}].add(hooklens::summarize_heads(pattern.mean({-3}, true), rows)[0]);
  }

  // Everything is kept per prompt index (sums of rows, and NeuronStats), so another rank's prompts
  // join ours whatever the split; finish() orders by prompt index.
  bool merges_state() const override { return true; }

  json save_state() const override {
    json heads = json::array(), averaged = json::array();
    for (const auto& [key, s] : heads_)
      heads.push_back({{"layer", std::get<0>(key)}, {"head", std::get<1>(key)}, {"prompt", std::get<2>(key)}, {"summary", s.to_state()}});
    for (const auto& [key, s] : averaged_)
      averaged.push_back({{"prompt", key.first}, {"layer", key.second}, {"summary", s.to_state()}});
    return {{"heads", std::move(heads)}, {"averaged", std::move(averaged)}, {"neurons", neurons_.to_state()}};
  }

  void merge_state(const json& state) override {
    decltype(heads_) heads;
    decltype(averaged_) averaged;
    hooklens::analysis::NeuronStats neurons;
    hooklens::read_state("compare_prompts", [&] {
      for (const json& e : hooklens::state_array(state.at("heads"), "heads"))
        heads[{hooklens::state_index(e.at("layer"), model_.n_layers, "layer"),
               hooklens::state_index(e.at("head"), model_.n_heads, "head"),
               hooklens::state_index(e.at("prompt"), prompt_count_, "prompt")}]
            .add(AttentionSummary::from_state(e.at("summary")));
      for (const json& e : hooklens::state_array(state.at("averaged"), "averaged"))
        averaged[{hooklens::state_index(e.at("prompt"), prompt_count_, "prompt"),
                  hooklens::state_index(e.at("layer"), model_.n_layers, "layer")}]
            .add(AttentionSummary::from_state(e.at("summary")));
      neurons = hooklens::analysis::NeuronStats::from_state(state.at("neurons"), prompt_count_, model_.n_layers);
      neurons_.merge(neurons);  // refuses before changing anything, so it goes first
    });
    for (const auto& [key, s] : heads) heads_[key].add(s);
    for (const auto& [key, s] : averaged) averaged_[key].add(s);
  }

  json finish(const json& manifest) override {
    json prompts = json::array();
    const json& listed = manifest.value("prompts", json::array());
    for (int p : prompt_indices()) {
      const json& entry = std::size_t(p) < listed.size() ? listed[std::size_t(p)] : json::object();
      prompts.push_back({{"prompt", p}, {"text", entry.value("text", "")}, {"tokens", entry.value("tokens", json::array())}});
    }
    json heads = heads_json();
    json neurons = neurons_.empty() ? json() : neurons_.mean_differences_json(k_);
    return {{"analyzer", "compare_prompts"},
            {"k", k_},
            {"top", top_},
            {"definitions", definitions()},
            {"prompts", std::move(prompts)},
            {"per_prompt", per_prompt_json()},
            {"heads", heads},
            {"most_different_heads", most_different(heads)},
            {"neurons", std::move(neurons)},
            {"neurons_note", neurons_.empty() ? json("no blocks.*.mlp.hook_post captures in this run")
                             : prompt_indices().size() < 2 ? json("fewer than two prompts") : json()}};
  }

 private:
  std::vector<int> prompt_indices() const {
    std::vector<int> out;
    for (const auto& [key, s] : averaged_) out.push_back(key.first);
    for (int p : neurons_.prompts()) out.push_back(p);
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
  }

  json per_prompt_json() const {
    std::map<int, json> by_prompt;
    for (const auto& [key, averaged] : averaged_) {
      const auto [prompt, layer] = key;
      std::vector<AttentionSummary> per_head;
      for (const auto& [hkey, s] : heads_)
        if (std::get<0>(hkey) == layer && std::get<2>(hkey) == prompt) per_head.push_back(s);
      by_prompt[prompt].push_back({{"layer", layer}, {"head_mean", mean_statistics(per_head)}, {"head_averaged", averaged.to_json()}});
    }
    json out = json::array();
    for (auto& [prompt, layers] : by_prompt) out.push_back({{"prompt", prompt}, {"layers", std::move(layers)}});
    return out;
  }

  // Per (layer, head): each prompt's statistics, their mean and their spread (max - min) over prompts.
  json heads_json() const {
    std::map<std::pair<int, int>, std::vector<std::pair<int, const AttentionSummary*>>> grouped;
    for (const auto& [key, s] : heads_) grouped[{std::get<0>(key), std::get<1>(key)}].push_back({std::get<2>(key), &s});
    json out = json::array();
    for (const auto& [key, prompts] : grouped) {
      json per_prompt = json::array();
      std::vector<std::array<double, 6>> values;
      for (const auto& [prompt, s] : prompts) {
        json entry = s->to_json();
        entry["prompt"] = prompt;
        per_prompt.push_back(std::move(entry));
        if (s->rows > 0) values.push_back(statistics_of(*s));
      }
      json entry = {{"layer", key.first}, {"head", key.second}, {"prompts_counted", values.size()}};
      json spread = json::object();
      for (std::size_t i = 0; i < kStatistics.size(); ++i) {
        double lo = INFINITY, hi = -INFINITY, sum = 0;
        for (const auto& v : values) lo = std::min(lo, v[i]), hi = std::max(hi, v[i]), sum += v[i];
        entry[kStatistics[i]] = values.empty() ? json() : finite_or_null(sum / double(values.size()));
        spread[kStatistics[i]] = values.size() < 2 ? json() : finite_or_null(hi - lo);
      }
      entry["spread"] = std::move(spread);
      entry["per_prompt"] = std::move(per_prompt);
      out.push_back(std::move(entry));
    }
    return out;
  }

  // The `top_` heads of largest entropy spread, largest first.
  json most_different(const json& heads) const {
    std::vector<const json*> ranked;
    for (const json& h : heads)
      if (!h["spread"]["entropy"].is_null()) ranked.push_back(&h);
    std::stable_sort(ranked.begin(), ranked.end(), [](const json* a, const json* b) {
      return (*a)["spread"]["entropy"].get<double>() > (*b)["spread"]["entropy"].get<double>();
    });
    json out = json::array();
    for (std::size_t i = 0; i < std::min(top_, ranked.size()); ++i) {
      json entropies = json::array();
      for (const json& p : (*ranked[i])["per_prompt"]) entropies.push_back(p["entropy"]);
      out.push_back({{"layer", (*ranked[i])["layer"]}, {"head", (*ranked[i])["head"]},
                     {"entropy_spread", (*ranked[i])["spread"]["entropy"]}, {"entropy_per_prompt", std::move(entropies)}});
    }
    return out;
  }

  static json definitions() {
    return {
        {"captures", "each prompt's step-0, pass-0 captures (the prompt's forward or prefill, or the first denoising step)"},
        {"entropy", "per attention row that sees >= 2 keys, -sum w log w (nats), averaged over rows; normalized_entropy, "
                    "row_std, max_weight, self_mass, other_mass and label as defined in attention_stats.h"},
        {"per_prompt.head_mean", "per prompt and layer: each statistic averaged over the heads' row means"},
        {"per_prompt.head_averaged", "per prompt and layer: the statistics of the head-averaged pattern (mean over heads of the weights)"},
        {"heads", "per layer and head: each statistic averaged over the prompts (per_prompt lists each prompt's); "
                  "spread is max - min over prompts (null with fewer than two prompts)"},
        {"most_different_heads", "the `top` heads of largest spread.entropy, largest first"},
        {"neurons.difference", "per layer the k neurons of largest max - min over prompts of the mean hook_post activation "
                               "over the prompt's positions; means[j] is the mean on prompts[j]"},
        {"head", "index of the head in the captured pattern (the model's head index unless the run sliced heads)"}};
  }

  std::size_t k_ = 10, top_ = 10;
  hooklens::ModelInfo model_;
  int prompt_count_ = 0;  // in the whole run
  std::map<std::tuple<int, int, int>, AttentionSummary> heads_;   // (layer, head, prompt)
  std::map<std::pair<int, int>, AttentionSummary> averaged_;      // (prompt, layer)
  hooklens::analysis::NeuronStats neurons_;
};

}  // namespace

HOOKLENS_DEFINE_PLUGIN(hooklens::Analyzer, ComparePrompts, "analyzer", "compare_prompts", "1.0",
                       "prompts side by side: attention statistics per head, the heads and neurons that differ most")

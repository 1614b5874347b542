// The "neurons" analyzer: which MLP neurons vary most within a prompt, over all prompts, and which
// differ most between prompts. Statistics live in analysis_common's NeuronStats; this file keeps the
// current prompt's activations (positions x d_mlp per layer) only until the prompt ends, to report
// the activation of its top neurons at every token.
#include "position_tokens.h"
#include "neuron_stats.h"

#include <hooklens/analyzer.h>
#include <hooklens/error.h>
#include <hooklens/hook_names.h>
#include <hooklens/plugin_define.h>
#include <hooklens/plugin_options.h>

#include <fmt/format.h>

#include <map>
#include <optional>

namespace {

using hooklens::finite_or_null;
using hooklens::GenerationMode;
using hooklens::generation_mode_name;
using hooklens::analysis::NeuronStats;
using nlohmann::json;

class Neurons : public hooklens::Analyzer {
 public:
  std::vector<std::string> hooks() const override { return {hooklens::hook_names::every_layer(hooklens::hook_names::mlp_post)}; }

  void begin(const json& run) override {
    const hooklens::PluginOptions options("neurons", run.value("options", json::object()), {"k"});
    k_ = std::size_t(options.integer("k", 10, 1));
    mode_ = hooklens::analysis::run_mode(run);
    stats_ = NeuronStats();
    current_.reset();
    rows_.clear();
    per_prompt_ = json::array();
  }

  void observe(std::string_view, const hooklens::CaptureContext& ctx, const at::Tensor& tensor) override {
    if (ctx.pass != 0 || ctx.layer < 0) return;  // the unconditional CFG pass is not the prompt's text
    if (current_ && *current_ != ctx.prompt) flush_prompt();
    current_ = ctx.prompt;
    const auto [begin, end] = stats_.add(ctx.prompt, ctx.layer, ctx.query_offset, tensor);
    const at::Tensor acts = (tensor.dim() == 3 ? tensor.select(0, 0) : tensor).to(at::kFloat).contiguous();
    const std::int64_t d = acts.size(1);
    Rows& kept = rows_[ctx.layer];
    for (std::int64_t r = begin; r < end; ++r) {
      kept.positions.push_back(ctx.query_offset + r);
      const float* row = acts.data_ptr<float>() + r * d;
      kept.values.insert(kept.values.end(), row, row + d);
    }
  }

  json finish(const json& manifest) override {
    flush_prompt();
    for (json& entry : per_prompt_) entry["tokens"] = hooklens::analysis::position_tokens(manifest, entry["prompt"].get<int>());
    json report = {{"analyzer", "neurons"},
                   {"mode", generation_mode_name(mode_)},
                   {"k", k_},
                   {"definitions", definitions()},
                   {"heads", json::array()},
                   {"per_prompt", per_prompt_},
                   {"pooled", NeuronStats::top_variance_json(stats_.pooled(), k_)},
                   {"across_prompts", stats_.mean_differences_json(k_)}};
    return report;
  }

 private:
  struct Rows {
    std::vector<std::int64_t> positions;
    std::vector<float> values;  // positions x d_mlp
  };

  // Top-k of the prompt that just ended, with each neuron's activation at every position kept.
  void flush_prompt() {
    if (!current_) return;
    json layers = json::array();
    for (const auto& [layer, rows] : rows_) {
      const hooklens::analysis::Welford* stats = stats_.of_prompt(*current_, layer);
      if (!stats || stats->n == 0) continue;
      const std::size_t d = stats->mean.size();
      const std::vector<double> var = stats->variances();
      json top = json::array();
      for (std::size_t i : hooklens::analysis::top_k(var, k_)) {
        json activations = json::array();
        for (std::size_t r = 0; r < rows.positions.size(); ++r) activations.push_back(finite_or_null(rows.values[r * d + i]));
        top.push_back({{"neuron", i}, {"variance", finite_or_null(var[i])}, {"mean", finite_or_null(stats->mean[i])},
                       {"activations", std::move(activations)}});
      }
      layers.push_back({{"layer", layer}, {"positions", rows.positions}, {"top", std::move(top)}});
    }
    per_prompt_.push_back({{"prompt", *current_}, {"layers", std::move(layers)}});
    rows_.clear();
    current_.reset();
  }

  static json definitions() {
    return {
        {"positions", "each absolute token position of a prompt counts once per layer, from the first pass-0 capture of "
                      "blocks.L.mlp.hook_post that shows it (prompt forward or prefill, then one new position per decode step)"},
        {"variance", "population variance (divide by n) of a neuron's hook_post activation over the counted positions"},
        {"mean", "mean of a neuron's hook_post activation over the counted positions"},
        {"per_prompt.top", "per prompt and layer the k neurons of largest variance over that prompt's positions; "
                           "activations[i] is the activation at positions[i], whose token is tokens[positions[i]]"},
        {"pooled.top", "per layer the k neurons of largest variance over the counted positions of all prompts together"},
        {"across_prompts.difference", "max - min over prompts of the neuron's per-prompt mean activation; "
                                      "means[j] is the mean on prompts[j]; null with fewer than two prompts"},
        {"heads", "empty: this analyzer reads no attention"}};
  }

  std::size_t k_ = 10;
  GenerationMode mode_ = GenerationMode::none;
  NeuronStats stats_;
  std::optional<int> current_;
  std::map<int, Rows> rows_;  // layer -> the current prompt's counted rows
  json per_prompt_ = json::array();
};

}  // namespace

HOOKLENS_DEFINE_PLUGIN(hooklens::Analyzer, Neurons, "analyzer", "neurons", "1.0",
                       "top-variance MLP neurons per prompt and pooled, and neurons that differ most between prompts")

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
    model_ = hooklens::ModelInfo::from_json(run.at("model"));
    prompt_count_ = int(run.value("prompts", json::array()).size());
    stats_ = NeuronStats();
    pending_.clear();
    tops_.clear();
  }

  void observe(std::string_view, const hooklens::CaptureContext& ctx, const at::Tensor& tensor) override {
    if (ctx.pass != 0 || ctx.layer < 0) return;  // the unconditional CFG pass is not the prompt's text
    flush_finished(ctx);
    const auto [begin, end] = stats_.add(ctx.prompt, ctx.layer, ctx.query_offset, tensor);
    const at::Tensor acts = (tensor.dim() == 3 ? tensor.select(0, 0) : tensor).to(at::kFloat).contiguous();
    const std::int64_t d = acts.size(1);
    Pending& pending = pending_[ctx.prompt];
    pending.last_layer = ctx.layer;
    Rows& kept = pending.rows[ctx.layer];
    for (std::int64_t r = begin; r < end; ++r) {
      kept.positions.push_back(ctx.query_offset + r);
      const float* row = acts.data_ptr<float>() + r * d;
      kept.values.insert(kept.values.end(), row, row + d);
    }
  }

  // The statistics are NeuronStats' (per prompt, merged by prompt index); each prompt's top-k
  // activations travel with them, keyed by prompt, and finish() lists prompts by index.
  bool merges_state() const override { return true; }

  json save_state() const override {
    std::map<int, PromptTop> tops = tops_;
    for (const auto& entry : pending_) tops[entry.first] = top_of(entry.first);
    json prompts = json::array();
    for (const auto& [prompt, layers] : tops) {
      json entry = {{"prompt", prompt}, {"layers", json::array()}};
      for (const auto& [layer, top] : layers)
        entry["layers"].push_back({{"layer", layer}, {"positions", top.positions}, {"neurons", top.neurons},
                                   {"activations", top.activations}});
      prompts.push_back(std::move(entry));
    }
    return {{"stats", stats_.to_state()}, {"tops", std::move(prompts)}};
  }

  void merge_state(const json& state) override {
    hooklens::read_state("neurons", [&] {
      const NeuronStats stats = NeuronStats::from_state(state.at("stats"), prompt_count_, model_.n_layers);
      std::map<int, PromptTop> tops;
      for (const json& entry : hooklens::state_array(state.at("tops"), "tops")) {
        const int prompt = hooklens::state_index(entry.at("prompt"), prompt_count_, "prompt");
        if (tops.count(prompt) || tops_.count(prompt) || pending_.count(prompt))
          throw hooklens::Error(fmt::format("prompt {} was observed by both ranks", prompt));
        PromptTop& layers = tops[prompt];
        for (const json& l : hooklens::state_array(entry.at("layers"), "layers")) {
          const int layer = hooklens::state_index(l.at("layer"), model_.n_layers, "layer");
          layers[layer] = layer_top(l, stats.of_prompt(prompt, layer));
        }
      }
      stats_.merge(stats);  // the last check: it refuses before changing anything
      tops_.merge(tops);
    });
  }

  json finish(const json& manifest) override {
    flush_finished(nullptr);
    json per_prompt = json::array();
    for (const auto& [prompt, layers] : tops_) {
      json entry = prompt_json(prompt, layers);
      entry["tokens"] = hooklens::analysis::position_tokens(manifest, prompt);
      per_prompt.push_back(std::move(entry));
    }
    json report = {{"analyzer", "neurons"},
                   {"mode", generation_mode_name(mode_)},
                   {"k", k_},
                   {"definitions", definitions()},
                   {"heads", json::array()},
                   {"per_prompt", std::move(per_prompt)},
                   {"pooled", NeuronStats::top_variance_json(stats_.pooled(), k_)},
                   {"across_prompts", stats_.mean_differences_json(k_)}};
    return report;
  }

 private:
  struct Rows {
    std::vector<std::int64_t> positions;
    std::vector<float> values;  // positions x d_mlp
  };

  // A prompt's layer: its k neurons of largest variance, and their activation at each position.
  struct LayerTop {
    std::vector<std::int64_t> positions;
    std::vector<std::size_t> neurons;  // top_k of the prompt's variances
    std::vector<double> activations;   // neurons x positions
  };
  using PromptTop = std::map<int, LayerTop>;  // by layer

  // A pending prompt's top-k, from its statistics and the rows kept.
  PromptTop top_of(int prompt) const {
    PromptTop out;
    for (const auto& [layer, rows] : pending_.at(prompt).rows) {
      const hooklens::analysis::Welford* stats = stats_.of_prompt(prompt, layer);
      if (!stats || stats->n == 0) continue;
      const std::size_t d = stats->mean.size();
      LayerTop& top = out[layer];
      top.positions = rows.positions;
      top.neurons = hooklens::analysis::top_k(stats->variances(), k_);
      for (std::size_t i : top.neurons)
        for (std::size_t r = 0; r < rows.positions.size(); ++r) top.activations.push_back(rows.values[r * d + i]);
    }
    return out;
  }

  // Keeps the top-k of each prompt whose captures have all been seen; their rows are dropped. A
  // batched forward pass interleaves its prompts layer by layer (p2 L0, p3 L0, p2 L1, ...), so a
  // prompt has ended when a capture of another prompt comes at a layer below the prompt's last one
  // (the next pass began), or one of a prompt past any batch it could share (a run captured at one
  // layer only). `ctx` null: the run ended.
  void flush_finished(const hooklens::CaptureContext* ctx) {
    for (auto it = pending_.begin(); it != pending_.end();) {
      const bool ended = !ctx || (it->first != ctx->prompt && (it->second.last_layer > ctx->layer ||
                                                                ctx->prompt >= it->first + kMaxBatchRows));
      if (!ended) {
        ++it;
        continue;
      }
      tops_[it->first] = top_of(it->first);
      it = pending_.erase(it);
    }
  }
  void flush_finished(const hooklens::CaptureContext& ctx) { flush_finished(&ctx); }

  // A LayerTop from another rank's state, checked against that prompt's statistics (`stats`).
  LayerTop layer_top(const json& state, const hooklens::analysis::Welford* stats) const {
    if (!stats || stats->n == 0) throw hooklens::Error("top neurons of a layer without statistics");
    LayerTop top;
    for (const json& p : hooklens::state_array(state.at("positions"), "positions"))
      top.positions.push_back(hooklens::state_count(p, "position"));
    if (std::int64_t(top.positions.size()) != stats->n)
      throw hooklens::Error(fmt::format("{} positions for {} counted", top.positions.size(), stats->n));
    for (const json& n : hooklens::state_array(state.at("neurons"), "neurons"))
      top.neurons.push_back(std::size_t(hooklens::state_index(n, std::int64_t(stats->mean.size()), "neuron")));
    if (top.neurons.size() != std::min(k_, stats->mean.size())) throw hooklens::Error("not the k top neurons");
    top.activations = hooklens::state_numbers(state.at("activations"), top.neurons.size() * top.positions.size(), "activations");
    return top;
  }

  json prompt_json(int prompt, const PromptTop& layers) const {
    json out = json::array();
    for (const auto& [layer, top] : layers) {
      const hooklens::analysis::Welford* stats = stats_.of_prompt(prompt, layer);
      const std::vector<double> var = stats->variances();
      const std::size_t n = top.positions.size();
      json neurons = json::array();
      for (std::size_t j = 0; j < top.neurons.size(); ++j) {
        const std::size_t i = top.neurons[j];
        json activations = json::array();
        for (std::size_t r = 0; r < n; ++r) activations.push_back(finite_or_null(top.activations[j * n + r]));
        neurons.push_back({{"neuron", i}, {"variance", finite_or_null(var[i])}, {"mean", finite_or_null(stats->mean[i])},
                           {"activations", std::move(activations)}});
      }
      out.push_back({{"layer", layer}, {"positions", top.positions}, {"top", std::move(neurons)}});
    }
    return {{"prompt", prompt}, {"layers", std::move(out)}};
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
  hooklens::ModelInfo model_;
  int prompt_count_ = 0;  // in the whole run
  NeuronStats stats_;
  // The rows of prompts still being captured (one, or a batch's), by prompt.
  struct Pending {
    std::map<int, Rows> rows;  // layer -> the prompt's counted rows
    int last_layer = -1;
  };
  static constexpr int kMaxBatchRows = 4096;  // `hooklens capture --batch-size` at most
  std::map<int, Pending> pending_;
  std::map<int, PromptTop> tops_;  // prompt -> its top-k, once it ended
};

}  // namespace

HOOKLENS_DEFINE_PLUGIN(hooklens::Analyzer, Neurons, "analyzer", "neurons", "1.0",
                       "top-variance MLP neurons per prompt and pooled, and neurons that differ most between prompts")

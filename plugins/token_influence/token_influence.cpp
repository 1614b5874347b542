// The "token_influence" analyzer: how much each generated token (autoregressive) or each denoising
// step's generated positions (masked diffusion) attend to each prompt token, per layer and head.
//
// A "unit" is one generated token (autoregressive: token i is fed at step i + 1, its query row is
// position P + i) or one denoising step (masked diffusion: the rows of positions P..T-1). Per unit
// and layer it keeps the head mean of the attention to each prompt position (units x layers x P
// numbers), per layer and head a running sum over units (layers x heads x P), and, with target=K,
// one number per unit, layer and head. No pattern is kept.
#include "position_tokens.h"

#include <hooklens/analyzer.h>
#include <hooklens/attention_stats.h>
#include <hooklens/error.h>
#include <hooklens/hook_names.h>
#include <hooklens/plugin_define.h>
#include <hooklens/plugin_options.h>

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <map>
#include <optional>

namespace {

using hooklens::finite_or_null;
using hooklens::GenerationMode;
using hooklens::generation_mode_name;
using nlohmann::json;

constexpr double kMissing = std::numeric_limits<double>::quiet_NaN();  // a key column the run did not capture

// Per head, the attention of query rows [r0, r1) averaged over those rows: to each prompt position
// and to the target position.
struct RowsAttention {
  std::vector<std::vector<double>> to_prompt;  // head -> prompt position
  std::vector<double> to_target;               // head
};

RowsAttention attend(const at::Tensor& hqk, std::int64_t r0, std::int64_t r1, std::int64_t key_offset,
                     std::int64_t prompt_length, std::optional<std::int64_t> target) {
  const std::int64_t H = hqk.size(0), Q = hqk.size(1), K = hqk.size(2);
  const float* data = hqk.data_ptr<float>();
  const auto mean_at = [&](std::int64_t h, std::int64_t position) {
    const std::int64_t c = position - key_offset;
    if (c < 0 || c >= K) return kMissing;
    double sum = 0;
    for (std::int64_t r = r0; r < r1; ++r) sum += data[(h * Q + r) * K + c];
    return sum / double(r1 - r0);
  };
  RowsAttention out;
  for (std::int64_t h = 0; h < H; ++h) {
    std::vector<double> row(std::size_t(prompt_length), 0.0);
    for (std::int64_t k = 0; k < prompt_length; ++k) row[std::size_t(k)] = mean_at(h, k);
    out.to_prompt.push_back(std::move(row));
    out.to_target.push_back(target ? mean_at(h, *target) : kMissing);
  }
  return out;
}

std::vector<double> mean_of(const std::vector<std::vector<double>>& rows) {
  std::vector<double> out(rows.empty() ? 0 : rows[0].size(), 0.0);
  for (const auto& r : rows)
    for (std::size_t k = 0; k < out.size(); ++k) out[k] += r[k] / double(rows.size());
  return out;
}

double mean_of(const std::vector<double>& values) {
  double sum = 0;
  for (double v : values) sum += v;
  return values.empty() ? kMissing : sum / double(values.size());
}

// One generated token or one denoising step.
struct Unit {
  int block = -1;
  std::map<int, std::vector<double>> to_prompt;     // layer -> head-mean attention to each prompt position
  std::map<int, std::vector<double>> target_heads;  // layer -> per head attention to the target
};

// Per (layer, head): sums over units.
struct HeadTotals {
  std::vector<double> sum;
  std::vector<std::int64_t> count;
  hooklens::AttentionSummary summary;
};

class TokenInfluence : public hooklens::Analyzer {
 public:
  std::vector<std::string> hooks() const override { return {hooklens::hook_names::every_layer(hooklens::hook_names::pattern)}; }

  void begin(const json& run) override {
    const hooklens::PluginOptions options("token_influence", run.value("options", json::object()), {"target"});
    model_ = hooklens::ModelInfo::from_json(run.at("model"));
    target_ = options.optional_integer("target", 0);
    if (target_ && model_.n_ctx > 0 && *target_ >= model_.n_ctx)
      throw hooklens::UsageError(fmt::format("--analyze-option token_influence.target={}: past the model's context of {} positions",
                                             *target_, model_.n_ctx));
    mode_ = hooklens::analysis::run_mode(run);
    const json& prompts = run.at("prompts");
    prompt_length_ = prompts.empty() ? 0 : std::int64_t(prompts[0].at("ids").size());
    units_.clear();
    heads_.clear();
  }

  void observe(std::string_view hook, const hooklens::CaptureContext& ctx, const at::Tensor& tensor) override {
    if (mode_ == GenerationMode::none) return;
    if (ctx.pass != 0 || ctx.layer < 0) return;
    if (ctx.prompt != 0)
      throw hooklens::Error(fmt::format("token_influence: a generation run has one prompt, got {} of prompt {}", hook, ctx.prompt));
    if (!(tensor.dim() == 3 || (tensor.dim() == 4 && tensor.size(0) == 1)))
      throw hooklens::Error(fmt::format("token_influence: {} should be [1, head, query, key], got {} dims", hook, tensor.dim()));
    const at::Tensor hqk = (tensor.dim() == 4 ? tensor.select(0, 0) : tensor).to(at::kFloat).contiguous();
    const std::int64_t rows = hqk.size(1);
    std::int64_t r0 = 0, r1 = 0;
    int unit = 0;
    if (mode_ == GenerationMode::autoregressive) {
      if (ctx.step < 1) return;  // the prefill holds no generated token
      unit = ctx.step - 1;
      r0 = prompt_length_ + unit - ctx.query_offset;
      r1 = r0 + 1;
    } else {
      unit = ctx.step;
      r0 = std::max<std::int64_t>(0, prompt_length_ - ctx.query_offset);
      r1 = rows;
    }
    if (r0 < 0 || r1 > rows || r0 >= r1) return;  // the rows were sliced away
    record(unit, ctx, hqk, r0, r1);
  }

  // Units are keyed by their index (generated token or denoising step) and the per-head totals
  // are sums, so another rank's join ours; a (unit, layer) both ranks saw is refused.
  bool merges_state() const override { return true; }

  json save_state() const override {
    json units = json::array(), heads = json::array();
    for (const auto& [index, unit] : units_) {
      json to_prompt = json::array(), target = json::array();
      for (const auto& [layer, values] : unit.to_prompt) to_prompt.push_back({{"layer", layer}, {"values", values}});
      for (const auto& [layer, values] : unit.target_heads) target.push_back({{"layer", layer}, {"values", values}});
      units.push_back({{"unit", index}, {"block", unit.block}, {"to_prompt", std::move(to_prompt)}, {"target_heads", std::move(target)}});
    }
    for (const auto& [key, totals] : heads_)
      heads.push_back({{"layer", key.first}, {"head", key.second}, {"sum", totals.sum}, {"count", totals.count},
                       {"summary", totals.summary.to_state()}});
    return {{"units", std::move(units)}, {"heads", std::move(heads)}};
  }

  void merge_state(const json& state) override {
    std::map<int, Unit> units;
    std::map<std::pair<int, int>, HeadTotals> heads;
    const std::size_t P = std::size_t(prompt_length_);
    hooklens::read_state("token_influence", [&] {
      for (const json& entry : hooklens::state_array(state.at("units"), "units")) {
        const int index = hooklens::state_index(entry.at("unit"), std::numeric_limits<int>::max(), "unit");
        Unit& unit = units[index];
        const json& block = entry.at("block");
        unit.block = block == -1 ? -1 : hooklens::state_index(block, std::numeric_limits<int>::max(), "block");
        for (const json& l : hooklens::state_array(entry.at("to_prompt"), "to_prompt")) {
          const int layer = hooklens::state_index(l.at("layer"), model_.n_layers, "layer");
          const auto mine = units_.find(index);
          if (mine != units_.end() && mine->second.to_prompt.count(layer))
            throw hooklens::Error(fmt::format("unit {} layer {} was observed by both ranks", index, layer));
          unit.to_prompt[layer] = hooklens::state_numbers(l.at("values"), P, "attention to the prompt");
        }
        for (const json& l : hooklens::state_array(entry.at("target_heads"), "target_heads")) {
          const int layer = hooklens::state_index(l.at("layer"), model_.n_layers, "layer");
          if (!unit.to_prompt.count(layer)) throw hooklens::Error(fmt::format("unit {} layer {} has a target only", index, layer));
          const json& values = hooklens::state_array(l.at("values"), "attention to the target");
          if (values.size() > std::size_t(model_.n_heads)) throw hooklens::Error("attention to the target of more heads than the model has");
          unit.target_heads[layer] = hooklens::state_numbers(values, values.size(), "attention to the target");
        }
      }
      for (const json& entry : hooklens::state_array(state.at("heads"), "heads")) {
        HeadTotals& totals = heads[{hooklens::state_index(entry.at("layer"), model_.n_layers, "layer"),
                                    hooklens::state_index(entry.at("head"), model_.n_heads, "head")}];
        totals.sum = hooklens::state_numbers(entry.at("sum"), P, "sum");
        for (const json& c : hooklens::state_array(entry.at("count"), "count")) totals.count.push_back(hooklens::state_count(c, "count"));
        if (totals.count.size() != P) throw hooklens::Error(fmt::format("count should hold {} counts", P));
        totals.summary = hooklens::AttentionSummary::from_state(entry.at("summary"));
      }
    });
    for (auto& [index, theirs] : units) {
      Unit& mine = units_[index];
      if (mine.block < 0) mine.block = theirs.block;
      mine.to_prompt.merge(theirs.to_prompt);
      mine.target_heads.merge(theirs.target_heads);
    }
    for (const auto& [key, theirs] : heads) {
      HeadTotals& totals = heads_[key];
      if (totals.sum.empty()) totals.sum.assign(P, 0.0), totals.count.assign(P, 0);
      for (std::size_t k = 0; k < P; ++k) totals.sum[k] += theirs.sum[k], totals.count[k] += theirs.count[k];
      totals.summary.add(theirs.summary);
    }
  }

  json finish(const json& manifest) override {
    json report = {{"analyzer", "token_influence"}, {"mode", generation_mode_name(mode_)}, {"definitions", definitions()}};
    if (mode_ == GenerationMode::none) {
      report["note"] = "token_influence needs a generation run (hooklens generate); this run has mode none";
      report["heads"] = json::array();
      return report;
    }
    const std::vector<std::string> tokens = hooklens::analysis::position_tokens(manifest, 0);
    const json& prompts = manifest.at("prompts");
    report["prompt"] = prompts.empty() ? json() : json{{"ids", prompts[0].at("ids")}, {"tokens", prompts[0].value("tokens", json::array())}};
    report["prompt_length"] = prompt_length_;
    const json generation = manifest.value("generation", json::object());
    report[mode_ == GenerationMode::autoregressive ? "generated" : "steps"] =
        mode_ == GenerationMode::autoregressive ? generated_json(generation) : steps_json(generation);
    report["layers"] = layers_json();
    report["heads"] = heads_json();
    if (target_) {
      const std::size_t t = std::size_t(*target_);
      report["target"] = {{"position", *target_}, {"token", t < tokens.size() ? json(tokens[t]) : json()}};
    } else {
      report["target"] = nullptr;
    }
    return report;
  }

 private:
  void record(int unit_index, const hooklens::CaptureContext& ctx, const at::Tensor& hqk, std::int64_t r0, std::int64_t r1) {
    const RowsAttention a = attend(hqk, r0, r1, ctx.key_offset, prompt_length_, target_);
    Unit& unit = units_[unit_index];
    unit.block = ctx.block;
    unit.to_prompt[ctx.layer] = mean_of(a.to_prompt);
    if (target_) unit.target_heads[ctx.layer] = a.to_target;

    hooklens::CaptureContext rows_ctx = ctx;
    rows_ctx.query_offset = ctx.query_offset + r0;
    const at::Tensor kept = hqk.narrow(1, r0, r1 - r0);
    const std::vector<hooklens::AttentionSummary> summaries =
        hooklens::summarize_heads(kept, hooklens::PatternRows::of(kept, rows_ctx, model_));
    for (std::size_t h = 0; h < a.to_prompt.size(); ++h) {
      HeadTotals& totals = heads_[{ctx.layer, int(h)}];
      if (totals.sum.empty()) totals.sum.assign(std::size_t(prompt_length_), 0.0), totals.count.assign(std::size_t(prompt_length_), 0);
      for (std::size_t k = 0; k < totals.sum.size(); ++k)
        if (!std::isnan(a.to_prompt[h][k])) totals.sum[k] += a.to_prompt[h][k], totals.count[k] += 1;
      totals.summary.add(summaries[h]);
    }
  }

  // Per unit: the head mean per layer, and its mean over the layers.
  json unit_json(const Unit& unit) const {
    json layers = json::array();
    std::vector<std::vector<double>> all;
    for (const auto& [layer, values] : unit.to_prompt) {
      layers.push_back({{"layer", layer}, {"attention_to_prompt", finite_or_null(values)}});
      all.push_back(values);
    }
    json out = {{"layers", std::move(layers)}, {"mean_over_layers", finite_or_null(mean_of(all))}};
    if (target_) {
      json target = json::array();
      for (const auto& [layer, heads] : unit.target_heads)
        target.push_back({{"layer", layer}, {"head_mean", finite_or_null(mean_of(heads))}, {"heads", finite_or_null(heads)}});
      out["attention_to_target"] = std::move(target);
    }
    return out;
  }

  json generated_json(const json& generation) const {
    const json steps = generation.value("steps", json::array());
    json out = json::array();
    for (const auto& [index, unit] : units_) {
      json entry = {{"index", index}, {"step", index + 1}, {"position", prompt_length_ + index}};
      const bool known = std::size_t(index) < steps.size();
      entry["token"] = known ? steps[std::size_t(index)].value("token", json()) : json();
      entry["token_string"] = known ? steps[std::size_t(index)].value("token_string", json()) : json();
      entry.update(unit_json(unit));
      out.push_back(std::move(entry));
    }
    return out;
  }

  json steps_json(const json& generation) const {
    const json steps = generation.value("steps", json::array());
    json out = json::array();
    const Unit* previous = nullptr;
    int previous_index = -2;
    for (const auto& [index, unit] : units_) {
      json entry = {{"step", index}, {"block", unit.block}};
      const bool known = std::size_t(index) < steps.size();
      entry["committed"] = known ? steps[std::size_t(index)].value("committed", json()) : json();
      entry["ids"] = known ? steps[std::size_t(index)].value("ids", json()) : json();
      entry.update(unit_json(unit));
      for (json& layer : entry["layers"]) layer.update(change_json(previous_index == index - 1 ? previous : nullptr, unit, layer["layer"]));
      out.push_back(std::move(entry));
      previous = &unit, previous_index = index;
    }
    return out;
  }

  // Change of a layer's attention to the prompt since the previous step (null without one).
  static json change_json(const Unit* previous, const Unit& unit, int layer) {
    const auto before = previous ? previous->to_prompt.find(layer) : std::map<int, std::vector<double>>::const_iterator();
    if (!previous || before == previous->to_prompt.end()) return {{"change", nullptr}, {"change_l1", nullptr}};
    const std::vector<double>& now = unit.to_prompt.at(layer);
    std::vector<double> change(now.size());
    double l1 = 0;
    for (std::size_t k = 0; k < now.size(); ++k) change[k] = now[k] - before->second[k], l1 += std::abs(change[k]);
    return {{"change", finite_or_null(change)}, {"change_l1", finite_or_null(l1)}};
  }

  std::vector<double> head_mean_attention(const HeadTotals& totals) const {
    std::vector<double> out(totals.sum.size());
    for (std::size_t k = 0; k < out.size(); ++k) out[k] = totals.count[k] > 0 ? totals.sum[k] / double(totals.count[k]) : kMissing;
    return out;
  }

  json heads_json() const {
    json out = json::array();
    for (const auto& [key, totals] : heads_) {
      json entry = {{"layer", key.first}, {"head", key.second}};
      entry.update(totals.summary.to_json());
      const std::vector<double> mean = head_mean_attention(totals);
      double mass = 0;
      for (double v : mean) mass += v;
      entry["mean_attention_to_prompt"] = finite_or_null(mean);
      entry["prompt_mass"] = finite_or_null(mass);
      out.push_back(std::move(entry));
    }
    return out;
  }

  json layers_json() const {
    std::map<int, std::vector<std::vector<double>>> by_layer;
    for (const auto& [key, totals] : heads_) by_layer[key.first].push_back(head_mean_attention(totals));
    json out = json::array();
    for (const auto& [layer, heads] : by_layer) out.push_back({{"layer", layer}, {"mean_attention_to_prompt", finite_or_null(mean_of(heads))}});
    return out;
  }

  static json definitions() {
    return {
        {"unit", "autoregressive: generated token i, fed at step i+1, whose attention is the pattern row of query position "
                 "P+i (P = prompt length; the last generated token is never fed, so it has no row); masked diffusion: "
                 "denoising step s, whose attention is the rows of the generated positions P..T-1"},
        {"attention_to_prompt", "per unit and layer, for each prompt position k: the attention weight on key k, averaged "
                                "over heads and over the unit's query rows (null where key k was not captured)"},
        {"mean_over_layers", "per unit: attention_to_prompt averaged over the captured layers"},
        {"change", "masked diffusion, per step s and layer: attention_to_prompt of step s minus that of step s-1 "
                   "(null when step s-1 was not captured); change_l1 is the sum of its absolute values"},
        {"attention_to_target", "with target=K: per unit and layer, the attention weight on key K averaged over the "
                                "unit's query rows, per head (heads) and averaged over heads (head_mean)"},
        {"heads.mean_attention_to_prompt", "per layer and head: the head's attention to each prompt position, averaged "
                                           "over the unit's rows and then over units; prompt_mass is its sum"},
        {"layers.mean_attention_to_prompt", "per layer: heads.mean_attention_to_prompt averaged over heads"},
        {"heads.entropy", "mean over the units' query rows that see >= 2 keys of -sum w log w (nats); normalized_entropy, "
                          "row_std, max_weight, self_mass, other_mass and label as in attention_stats.h"},
        {"head", "index of the head in the captured pattern (the model's head index unless the run sliced heads)"}};
  }

  hooklens::ModelInfo model_;
  GenerationMode mode_ = GenerationMode::none;
  std::optional<std::int64_t> target_;
  std::int64_t prompt_length_ = 0;
  std::map<int, Unit> units_;
  std::map<std::pair<int, int>, HeadTotals> heads_;
};

}  // namespace

HOOKLENS_DEFINE_PLUGIN(hooklens::Analyzer, TokenInfluence, "analyzer", "token_influence", "1.0",
                       "attention from generated tokens (or diffusion steps) to each prompt token, per layer and head")

// attention_distance: a complete analyzer plugin, written as a template for your own.
//
// It reports, per layer and head, how far back the head looks: the mean attention distance
//   mean_distance = mean over rows of  sum over visible keys k of  w[q, k] * (q - k)
// where q and k are absolute positions and a row is one query's weights over the keys it may see
// (PatternRows::visible; rows that see no captured key are skipped). For causal attention it is
// >= 0; a bidirectional model's heads may score below 0 (they look ahead).
//
// Build it with hooklens_add_plugin (see CMakeLists.txt beside this file); it lands in the build's
// plugins/ directory, where `hooklens capture ... --analyze attention_distance` and
// `hooklens analyze RUN --analyze attention_distance` find it. The report goes to RUN/reports/.
#include <hooklens/analyzer.h>
#include <hooklens/attention_stats.h>
#include <hooklens/error.h>
#include <hooklens/hook_names.h>
#include <hooklens/plugin_define.h>
#include <hooklens/plugin_options.h>

#include <fmt/format.h>

#include <cmath>
#include <map>
#include <utility>

namespace {

using nlohmann::json;

// What we keep per (layer, head): sums, never tensors, so memory stays bounded however long the run.
struct HeadTotals {
  double distance = 0;  // sum over counted rows of the row's weighted distance
  std::int64_t rows = 0;
  hooklens::AttentionSummary summary;  // entropy & co., from the shared implementation
};

class AttentionDistance final : public hooklens::Analyzer {
 public:
  // 1. Which hook points to read: every layer's attention pattern [batch, head, query, key].
  std::vector<std::string> hooks() const override { return {hooklens::hook_names::every_layer(hooklens::hook_names::pattern)}; }

  // 2. A run starts: read the model description (needed to know which keys each row may see) and
  //    reject options we do not have, so a typo in --analyze-option fails loudly. PluginOptions
  //    refuses keys not in its list (this analyzer has none); list yours and read them with its
  //    getters, e.g. options.integer("k", 10, 1) (hooklens/plugin_options.h).
  void begin(const json& run) override {
    const hooklens::PluginOptions options("attention_distance", run.value("options", json::object()), {});
    model_ = hooklens::ModelInfo::from_json(run.at("model"));
    heads_.clear();
  }

  // 3. One capture: the tensor is only valid during this call, so fold it into the totals now.
  //    Patterns may be sliced; PatternRows places row 0 / column 0 at their absolute positions.
  void observe(std::string_view hook, const hooklens::CaptureContext& ctx, const at::Tensor& tensor) override {
    if (tensor.dim() != 3 && tensor.dim() != 4)
      throw hooklens::Error(fmt::format("attention_distance: {} is not [batch, head, query, key]", hook));
    const at::Tensor pattern = (tensor.dim() == 3 ? tensor.unsqueeze(0) : tensor).to(at::kDouble).contiguous();
    const hooklens::PatternRows rows = hooklens::PatternRows::of(pattern, ctx, model_);
    const std::vector<hooklens::AttentionSummary> summaries = hooklens::summarize_heads(pattern, rows);
    const std::int64_t batch = pattern.size(0), n_heads = pattern.size(1);
    const double* w = pattern.data_ptr<double>();
    for (std::int64_t h = 0; h < n_heads; ++h) {
      HeadTotals& totals = heads_[{ctx.layer, int(h)}];
      totals.summary.add(summaries[std::size_t(h)]);
      for (std::int64_t b = 0; b < batch; ++b)
        for (std::int64_t r = 0; r < rows.rows; ++r) {
          const auto [first, last] = rows.visible(r);
          if (first >= last) continue;
          const double* row = w + ((b * n_heads + h) * rows.rows + r) * rows.cols;
          double distance = 0;
          for (std::int64_t c = first; c < last; ++c)
            distance += row[c] * double(rows.query_position(r) - (rows.key_offset + c));
          totals.distance += distance;
          ++totals.rows;
        }
    }
  }

  // 4. Runs over several processes: each process observes some of the prompts, then the first one
  //    adds the others' save_state() to its own with merge_state() before finish(). Totals that
  //    are sums merge by adding, so the report is the one a single process would write. The state
  //    comes from another process: read it with the checked hooklens::state_* readers inside
  //    read_state (a bad one becomes a one-line Error), into a copy first, then add the copy.
  bool merges_state() const override { return true; }

  json save_state() const override {
    json heads = json::array();
    for (const auto& [key, totals] : heads_)
      heads.push_back({{"layer", key.first}, {"head", key.second}, {"distance", totals.distance},
                       {"rows", totals.rows}, {"summary", totals.summary.to_state()}});
    return {{"heads", std::move(heads)}};
  }

  void merge_state(const json& state) override {
    std::map<std::pair<int, int>, HeadTotals> theirs;
    hooklens::read_state("attention_distance", [&] {
      for (const json& head : hooklens::state_array(state.at("heads"), "heads")) {
        HeadTotals& totals = theirs[{hooklens::state_index(head.at("layer"), model_.n_layers, "layer"),
                                     hooklens::state_index(head.at("head"), model_.n_heads, "head")}];
        totals.distance += hooklens::state_number(head.at("distance"), "distance");
        totals.rows += hooklens::state_count(head.at("rows"), "rows");
        totals.summary.add(hooklens::AttentionSummary::from_state(head.at("summary")));
      }
    });
    for (const auto& [key, totals] : theirs) {
      HeadTotals& mine = heads_[key];
      mine.distance += totals.distance;
      mine.rows += totals.rows;
      mine.summary.add(totals.summary);
    }
  }

  // 5. The run ended: turn the totals into the report (written to RUN/reports/attention_distance.json).
  //    Every report names its analyzer, defines each score in one line, and is JSON-finite.
  json finish(const json& manifest) override {
    (void)manifest;  // the run's prompts and generation, should a report need them
    json heads = json::array();
    for (const auto& [key, totals] : heads_) {
      const hooklens::AttentionSummary mean = totals.summary.mean();
      heads.push_back({{"layer", key.first},
                       {"head", key.second},
                       {"rows", totals.rows},
                       {"entropy", finite_or_null(totals.summary.rows > 0, mean.entropy)},
                       {"mean_distance", finite_or_null(totals.rows > 0, totals.distance / double(totals.rows))}});
    }
    return {{"analyzer", "attention_distance"},
            {"definitions",
             {{"row", "one query's attention weights over the captured keys it may see (causal, local or bidirectional)"},
              {"mean_distance", "mean over rows that see >= 1 captured key of sum_k w[q,k] * (q - k), positions absolute"},
              {"entropy", "mean over rows that see >= 2 keys of -sum w log w, in nats (attention_stats.h)"},
              {"rows", "rows counted for mean_distance, over every capture, batch row and step"}}},
            {"heads", std::move(heads)}};
  }

 private:
  static json finite_or_null(bool counted, double v) { return counted && std::isfinite(v) ? json(v) : json(); }

  hooklens::ModelInfo model_;
  std::map<std::pair<int, int>, HeadTotals> heads_;  // (layer, head) -> totals
};

}  // namespace

// 6. The plugin's entry point: interface, class, kind, name (what --analyze takes), version, description.
HOOKLENS_DEFINE_PLUGIN(hooklens::Analyzer, AttentionDistance, "analyzer", "attention_distance", "1.0",
                       "mean attention distance per head: how far back each head looks")

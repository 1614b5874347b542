// Statistics of attention rows: what the attention_stats analyzer reports and the report and
// viewer show. A row is one query's weights over the keys it may see (PatternRows::visible).
// Only rows that see at least two keys count: a row with one key has no choice to make.
//
// Per row, with n visible keys and weights w:
//   entropy             -sum w log w (nats)
//   normalized_entropy  entropy / log n (0: all weight on one key, 1: uniform)
//   row_std             population standard deviation of the n weights
//   max_weight          max w
//   self_mass           w at the key of the query's own position (0 if that key was not captured)
//   other_mass          sum w - self_mass over the captured visible keys
// A head is labelled by its mean normalized entropy: "sharp" below kSharpBelow, "uniform" above
// kUniformAbove, else "medium".
#pragma once
#include <hooklens/analyzer.h>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <vector>

namespace hooklens {

constexpr double kSharpBelow = 0.3;
constexpr double kUniformAbove = 0.85;
const char* sharpness_label(double normalized_entropy);

// Sums over rows, so summaries of several captures (prompts, steps) add up; mean() divides.
struct AttentionSummary {
  std::int64_t rows = 0;
  double entropy = 0, normalized_entropy = 0, row_std = 0, max_weight = 0, self_mass = 0, other_mass = 0;

  void add(const AttentionSummary& other);
  AttentionSummary mean() const;  // per-row averages (rows kept); all zero when rows == 0
  // The means and the label: {"rows", "entropy", "normalized_entropy", "row_std", "max_weight",
  // "self_mass", "other_mass", "label"}; the statistics are null when no row counted.
  nlohmann::json to_json() const;
  // The sums as they are, for Analyzer::save_state: [rows, entropy, normalized_entropy, row_std,
  // max_weight, self_mass, other_mass]. from_state reads that back (Error for anything else).
  nlohmann::json to_state() const;
  static AttentionSummary from_state(const nlohmann::json& state);
};

// One summary per head of `pattern` ([batch, head, query, key] or [head, query, key]; batch rows
// pooled). For the head-averaged pattern pass pattern.mean(-3, true).
std::vector<AttentionSummary> summarize_heads(const at::Tensor& pattern, const PatternRows& rows);

}  // namespace hooklens

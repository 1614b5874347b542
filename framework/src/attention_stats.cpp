#include <hooklens/attention_stats.h>
#include <hooklens/error.h>
#include <hooklens/json_read.h>

#include <fmt/format.h>

#include <cmath>

namespace hooklens {

const char* sharpness_label(double normalized_entropy) {
  if (normalized_entropy < kSharpBelow) return "sharp";
  if (normalized_entropy > kUniformAbove) return "uniform";
  return "medium";
}

void AttentionSummary::add(const AttentionSummary& o) {
  rows += o.rows;
  entropy += o.entropy;
  normalized_entropy += o.normalized_entropy;
  row_std += o.row_std;
  max_weight += o.max_weight;
  self_mass += o.self_mass;
  other_mass += o.other_mass;
}

AttentionSummary AttentionSummary::mean() const {
  AttentionSummary m;
  m.rows = rows;
  if (rows == 0) return m;
  const double n = double(rows);
  m.entropy = entropy / n;
  m.normalized_entropy = normalized_entropy / n;
  m.row_std = row_std / n;
  m.max_weight = max_weight / n;
  m.self_mass = self_mass / n;
  m.other_mass = other_mass / n;
  return m;
}

nlohmann::json AttentionSummary::to_json() const {
  const AttentionSummary m = mean();
  const auto stat = [&](double v) { return rows > 0 ? nlohmann::json(v) : nlohmann::json(); };
  return {{"rows", rows},
          {"entropy", stat(m.entropy)},
          {"normalized_entropy", stat(m.normalized_entropy)},
          {"row_std", stat(m.row_std)},
          {"max_weight", stat(m.max_weight)},
          {"self_mass", stat(m.self_mass)},
          {"other_mass", stat(m.other_mass)},
          {"label", rows > 0 ? nlohmann::json(sharpness_label(m.normalized_entropy)) : nlohmann::json()}};
}

nlohmann::json AttentionSummary::to_state() const {
  return {rows, entropy, normalized_entropy, row_std, max_weight, self_mass, other_mass};
}

AttentionSummary AttentionSummary::from_state(const nlohmann::json& state) {
  if (!state.is_array() || state.size() != 7)
    throw Error(fmt::format("an attention summary should be [rows and 6 sums], got {}", brief_json(state)));
  AttentionSummary s;
  s.rows = state_count(state[0], "an attention summary's rows");
  double* sums[] = {&s.entropy, &s.normalized_entropy, &s.row_std, &s.max_weight, &s.self_mass, &s.other_mass};
  for (std::size_t i = 0; i < 6; ++i) *sums[i] = state_number(state[i + 1], "an attention summary's sum");
  return s;
}

std::vector<AttentionSummary> summarize_heads(const at::Tensor& pattern, const PatternRows& rows) {
  if (pattern.dim() != 3 && pattern.dim() != 4)
    throw Error(fmt::format("an attention pattern is [batch, head, query, key], got {} dims", pattern.dim()));
  const at::Tensor p = (pattern.dim() == 3 ? pattern.unsqueeze(0) : pattern).to(at::kFloat).contiguous();
  const std::int64_t B = p.size(0), H = p.size(1), Q = p.size(2), K = p.size(3);
  if (Q != rows.rows || K != rows.cols)
    throw Error(fmt::format("pattern of {}x{} rows and keys described as {}x{}", Q, K, rows.rows, rows.cols));
  const float* data = p.data_ptr<float>();
  std::vector<AttentionSummary> heads(static_cast<std::size_t>(H));
  for (std::int64_t q = 0; q < Q; ++q) {
    const auto [first, last] = rows.visible(q);
    const std::int64_t n = last - first;
    if (n < 2) continue;
    const std::int64_t self = rows.query_position(q) - rows.key_offset;  // column of the query's own key
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t h = 0; h < H; ++h) {
        const float* w = data + ((b * H + h) * Q + q) * K;
        double entropy = 0, sum = 0, sum_sq = 0, max = 0;
        for (std::int64_t k = first; k < last; ++k) {
          const double v = w[k];
          if (v > 0) entropy -= v * std::log(v);
          sum += v;
          sum_sq += v * v;
          max = std::max(max, v);
        }
        const double mean = sum / double(n);
        const double self_w = self >= first && self < last ? double(w[self]) : 0.0;
        AttentionSummary& s = heads[std::size_t(h)];
        s.rows += 1;
        s.entropy += entropy;
        s.normalized_entropy += entropy / std::log(double(n));
        s.row_std += std::sqrt(std::max(0.0, sum_sq / double(n) - mean * mean));
        s.max_weight += max;
        s.self_mass += self_w;
        s.other_mass += sum - self_w;
      }
  }
  return heads;
}

}  // namespace hooklens

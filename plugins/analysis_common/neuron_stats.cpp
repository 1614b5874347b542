#include "neuron_stats.h"

#include <hooklens/analyzer.h>

#include <hooklens/error.h>

#include <fmt/format.h>

#include <algorithm>
#include <numeric>

namespace hooklens::analysis {

void Welford::add(const float* values, std::size_t d) {
  if (mean.empty()) mean.assign(d, 0.0), m2.assign(d, 0.0);
  ++n;
  for (std::size_t i = 0; i < d; ++i) {
    const double x = values[i];
    const double delta = x - mean[i];
    mean[i] += delta / double(n);
    m2[i] += delta * (x - mean[i]);
  }
}

std::vector<double> Welford::variances() const {
  std::vector<double> out(mean.size());
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = variance(i);
  return out;
}

std::vector<std::size_t> top_k(const std::vector<double>& scores, std::size_t k) {
  std::vector<std::size_t> order(scores.size());
  std::iota(order.begin(), order.end(), std::size_t(0));
  k = std::min(k, order.size());
  std::partial_sort(order.begin(), order.begin() + std::ptrdiff_t(k), order.end(),
                    [&](std::size_t a, std::size_t b) { return scores[a] > scores[b] || (scores[a] == scores[b] && a < b); });
  order.resize(k);
  return order;
}

std::pair<std::int64_t, std::int64_t> NeuronStats::add(int prompt, int layer, std::int64_t first_position,
                                                       const at::Tensor& acts) {
  if (!(acts.dim() == 2 || (acts.dim() == 3 && acts.size(0) == 1)))
    throw Error(fmt::format("an mlp.hook_post capture of layer {} should be [1, pos, d_mlp], got {} dims", layer, acts.dim()));
  const at::Tensor a = (acts.dim() == 3 ? acts.select(0, 0) : acts).to(at::kFloat).contiguous();
  const std::int64_t rows = a.size(0), d = a.size(1);
  Welford& pooled = pooled_[layer];
  if (!pooled.mean.empty() && std::int64_t(pooled.mean.size()) != d)
    throw Error(fmt::format("layer {}'s mlp.hook_post has {} neurons, earlier captures had {}", layer, d, pooled.mean.size()));
  std::int64_t& next = next_position_[{prompt, layer}];
  const std::int64_t begin = std::clamp<std::int64_t>(next - first_position, 0, rows);
  Welford& own = prompts_[prompt][layer];
  const float* data = a.data_ptr<float>();
  for (std::int64_t r = begin; r < rows; ++r) {
    pooled.add(data + r * d, std::size_t(d));
    own.add(data + r * d, std::size_t(d));
  }
  next = std::max(next, first_position + rows);
  return {begin, rows};
}

std::vector<int> NeuronStats::prompts() const {
  std::vector<int> out;
  for (const auto& [p, layers] : prompts_) out.push_back(p);
  return out;
}

const Welford* NeuronStats::of_prompt(int prompt, int layer) const {
  const auto p = prompts_.find(prompt);
  if (p == prompts_.end()) return nullptr;
  const auto l = p->second.find(layer);
  return l == p->second.end() ? nullptr : &l->second;
}

nlohmann::json NeuronStats::top_variance_json(const std::map<int, Welford>& by_layer, std::size_t k) {
  nlohmann::json layers = nlohmann::json::array();
  std::int64_t positions = 0;
  for (const auto& [layer, stats] : by_layer) {
    positions = std::max(positions, stats.n);
    const std::vector<double> var = stats.variances();
    nlohmann::json top = nlohmann::json::array();
    for (std::size_t i : top_k(var, k))
      top.push_back({{"neuron", i}, {"variance", finite_or_null(var[i])}, {"mean", finite_or_null(stats.mean[i])}});
    layers.push_back({{"layer", layer}, {"positions", stats.n}, {"top", std::move(top)}});
  }
  return {{"positions", positions}, {"layers", std::move(layers)}};
}

nlohmann::json NeuronStats::mean_differences_json(std::size_t k) const {
  if (prompts_.size() < 2) return nullptr;
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& [layer, pooled] : pooled_) {
    std::vector<const Welford*> each;
    for (const auto& [p, by_layer] : prompts_) {
      const Welford* w = of_prompt(p, layer);
      if (w && w->n > 0) each.push_back(w);
    }
    if (each.size() != prompts_.size()) continue;  // a layer some prompt never showed: nothing to compare
    std::vector<double> spread(pooled.mean.size());
    for (std::size_t i = 0; i < spread.size(); ++i) {
      double lo = each[0]->mean[i], hi = lo;
      for (const Welford* w : each) lo = std::min(lo, w->mean[i]), hi = std::max(hi, w->mean[i]);
      spread[i] = hi - lo;
    }
    nlohmann::json top = nlohmann::json::array();
    for (std::size_t i : top_k(spread, k)) {
      nlohmann::json means = nlohmann::json::array();
      for (const Welford* w : each) means.push_back(finite_or_null(w->mean[i]));
      top.push_back({{"neuron", i}, {"difference", finite_or_null(spread[i])}, {"means", std::move(means)}});
    }
    layers.push_back({{"layer", layer}, {"top", std::move(top)}});
  }
  return {{"prompts", prompts()}, {"layers", std::move(layers)}};
}

}  // namespace hooklens::analysis

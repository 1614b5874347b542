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

void Welford::add(const Welford& other) {
  if (other.n == 0) return;
  if (n == 0) {
    *this = other;
    return;
  }
  const double na = double(n), nb = double(other.n), total = na + nb;
  for (std::size_t i = 0; i < mean.size(); ++i) {
    const double delta = other.mean[i] - mean[i];
    mean[i] += delta * nb / total;
    m2[i] += other.m2[i] + delta * delta * na * nb / total;
  }
  n += other.n;
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
  const auto width = widths_.emplace(layer, std::size_t(d)).first->second;
  if (std::int64_t(width) != d)
    throw Error(fmt::format("layer {}'s mlp.hook_post has {} neurons, earlier captures had {}", layer, d, width));
  std::int64_t& next = next_position_[{prompt, layer}];
  const std::int64_t begin = std::clamp<std::int64_t>(next - first_position, 0, rows);
  Welford& own = prompts_[prompt][layer];
  const float* data = a.data_ptr<float>();
  for (std::int64_t r = begin; r < rows; ++r) own.add(data + r * d, std::size_t(d));
  next = std::max(next, first_position + rows);
  return {begin, rows};
}

std::vector<int> NeuronStats::prompts() const {
  std::vector<int> out;
  for (const auto& [p, layers] : prompts_) out.push_back(p);
  return out;
}

std::map<int, Welford> NeuronStats::pooled() const {
  std::map<int, Welford> out;
  for (const auto& [p, layers] : prompts_)
    for (const auto& [layer, stats] : layers) out[layer].add(stats);
  return out;
}

nlohmann::json NeuronStats::to_state() const {
  nlohmann::json entries = nlohmann::json::array();
  for (const auto& [p, layers] : prompts_)
    for (const auto& [layer, w] : layers)
      entries.push_back({{"prompt", p}, {"layer", layer}, {"width", widths_.at(layer)}, {"n", w.n}, {"mean", w.mean},
                         {"m2", w.m2}, {"next_position", next_position_.at({p, layer})}});
  return entries;
}

NeuronStats NeuronStats::from_state(const nlohmann::json& state, int prompts, int layers) {
  NeuronStats out;
  for (const nlohmann::json& entry : state_array(state, "neuron statistics")) {
    const int p = state_index(entry.at("prompt"), prompts, "prompt");
    const int layer = state_index(entry.at("layer"), layers, "layer");
    const std::size_t width = std::size_t(state_count(entry.at("width"), "width"));
    if (out.widths_.emplace(layer, width).first->second != width)
      throw Error(fmt::format("layer {} has two widths, {} and {}", layer, out.widths_[layer], width));
    if (out.next_position_.count({p, layer})) throw Error(fmt::format("prompt {} layer {} is listed twice", p, layer));
    Welford w;
    w.n = state_count(entry.at("n"), "n");
    const std::size_t size = w.n > 0 ? width : 0;
    w.mean = state_numbers(entry.at("mean"), size, "mean");
    w.m2 = state_numbers(entry.at("m2"), size, "m2");
    out.next_position_[{p, layer}] = state_count(entry.at("next_position"), "next_position");
    out.prompts_[p][layer] = std::move(w);
  }
  return out;
}

void NeuronStats::merge(const NeuronStats& other) {
  for (const auto& [layer, width] : other.widths_) {
    const auto mine = widths_.find(layer);
    if (mine != widths_.end() && mine->second != width)
      throw Error(fmt::format("layer {}'s mlp.hook_post has {} neurons here and {} in the other state", layer,
                              mine->second, width));
  }
  for (const auto& [key, next] : other.next_position_)
    if (next_position_.count(key))
      throw Error(fmt::format("prompt {} layer {} was observed by both ranks", key.first, key.second));
  widths_.insert(other.widths_.begin(), other.widths_.end());
  next_position_.insert(other.next_position_.begin(), other.next_position_.end());
  for (const auto& [p, layers] : other.prompts_) prompts_[p].insert(layers.begin(), layers.end());
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
  for (const auto& [layer, width] : widths_) {
    std::vector<const Welford*> each;
    for (const auto& [p, by_layer] : prompts_) {
      const Welford* w = of_prompt(p, layer);
      if (w && w->n > 0) each.push_back(w);
    }
    if (each.size() != prompts_.size()) continue;  // a layer some prompt never showed: nothing to compare
    std::vector<double> spread(width);
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

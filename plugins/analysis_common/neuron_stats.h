// Streaming statistics of MLP neurons (blocks.L.mlp.hook_post, [batch, pos, d_mlp]): the one home of
// what the neurons and compare_prompts analyzers compute about neurons.
//
// Each absolute position of a prompt counts once per layer: the first capture that shows it (a
// prompt's forward, an autoregressive prefill then one new position per decode step; later
// captures of a position already seen, e.g. further diffusion steps, are skipped). Memory is
// layers x d_mlp per prompt, whatever the number of positions. The statistics over all prompts
// combine the prompts' in prompt order, so they do not depend on which process saw which prompt
// (runs over several processes: to_state, from_state, merge).
#pragma once
#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <utility>
#include <vector>

namespace hooklens::analysis {

// Welford's running mean and population variance of each of d values.
struct Welford {
  std::int64_t n = 0;
  std::vector<double> mean, m2;

  void add(const float* values, std::size_t d);
  // Adds another sample's statistics (Chan et al.'s pairwise update): as if its values had been added.
  void add(const Welford& other);
  double variance(std::size_t i) const { return n > 0 ? m2[i] / double(n) : 0.0; }
  std::vector<double> variances() const;
};

// Indices of the k largest scores, largest first (ties: lower index first).
std::vector<std::size_t> top_k(const std::vector<double>& scores, std::size_t k);

class NeuronStats {
 public:
  // `acts` is [1, pos, d_mlp] or [pos, d_mlp] float32; row r is position first_position + r.
  // Returns the rows [begin, end) of `acts` that were new for (prompt, layer) and were counted.
  // Throws Error for another shape or a layer whose width changed.
  std::pair<std::int64_t, std::int64_t> add(int prompt, int layer, std::int64_t first_position, const at::Tensor& acts);

  bool empty() const { return prompts_.empty(); }
  std::vector<int> prompts() const;
  std::map<int, Welford> pooled() const;  // by layer: every prompt's, combined in prompt order
  const Welford* of_prompt(int prompt, int layer) const;

  // For Analyzer::save_state: every (prompt, layer)'s statistics and next position.
  nlohmann::json to_state() const;
  // Reads to_state()'s output back, prompts in [0, prompts) and layers in [0, layers); Error otherwise.
  static NeuronStats from_state(const nlohmann::json& state, int prompts, int layers);
  // Adds the prompts of `other` (another rank's). A (prompt, layer) both hold, or a layer of another
  // width, is an Error (positions count once, from the first capture that shows them: a prompt
  // is one rank's), and nothing is added.
  void merge(const NeuronStats& other);

  // {"positions": n, "layers": [{"layer", "top": [{"neuron", "variance", "mean"}]}]} for the k
  // neurons of largest variance in each layer of `by_layer`.
  static nlohmann::json top_variance_json(const std::map<int, Welford>& by_layer, std::size_t k);
  // Across prompts (null with fewer than two): per layer the k neurons whose mean activation differs
  // most between prompts (max - min of the per-prompt means), each with every prompt's mean:
  // {"prompts": [p...], "layers": [{"layer", "top": [{"neuron", "difference", "means": [...]}]}]}.
  nlohmann::json mean_differences_json(std::size_t k) const;

 private:
  std::map<int, std::size_t> widths_;                // layer -> d_mlp
  std::map<int, std::map<int, Welford>> prompts_;  // prompt -> layer -> stats
  std::map<std::pair<int, int>, std::int64_t> next_position_;  // (prompt, layer) -> first position not seen
};

}  // namespace hooklens::analysis

// Generation loops every adapter gets: autoregressive with a KV cache (greedy, temperature,
// top-k, top-p sampling).
#pragma once
#include <hooklens/model.h>

#include <cstdint>
#include <functional>
#include <vector>

namespace hooklens {

struct SamplingOptions {
  int max_new_tokens = 16;
  bool greedy = true;
  double temperature = 1.0;  // > 0; used when !greedy
  int top_k = 0;             // 0 = off
  double top_p = 1.0;        // 1 = off
  std::uint64_t seed = 0;
  bool stop_at_eos = true;
  void validate() const;     // throws UsageError
};

struct GenerationResult {
  std::vector<std::int64_t> output_ids;  // prompt followed by the new tokens
  std::vector<std::int64_t> new_ids;
  bool stopped_on_eos = false;
};

// Step 0 is the prefill over the prompt (phase prefill); step s > 0 consumes the token chosen at
// step s-1 (phase decode, one query row at query_offset = prompt length + s - 1). `on_token` is
// called after each new token (for progress).
GenerationResult generate_autoregressive(Model& model, const std::vector<std::int64_t>& prompt,
                                         const SamplingOptions& options, const HookSet& hooks,
                                         int prompt_index = 0,
                                         const std::function<void(int step, std::int64_t token)>& on_token = {});

}  // namespace hooklens

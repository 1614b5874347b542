// Generation loops every adapter gets: autoregressive with a KV cache (greedy, temperature,
// top-k, top-p sampling), and masked diffusion for bidirectional models (LLaDA, MMaDA).
#pragma once
#include <hooklens/model.h>

#include <cstdint>
#include <optional>
#include <string_view>
#include <functional>
#include <string>
#include <vector>

namespace hooklens {

// Refuses (UsageError) a generation whose prompt and new positions do not fit the model's context:
// "prompt of 4 tokens + --gen-length 300 exceeds the model's context of 256 tokens". `option`
// names the setting that asked for the new positions (--max-new-tokens, --gen-length).
void check_context(const ModelInfo& model, std::size_t prompt_tokens, std::int64_t new_positions,
                   std::string_view option);

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

// Masked diffusion as LLaDA's sampler does it: the prompt is followed by gen_length mask tokens;
// the generated region is split into gen_length / block_length blocks filled left to right, each in
// steps / num_blocks denoising steps. Each step runs a full forward pass, predicts every position
// (argmax of the logits, with Gumbel noise when temperature > 0), and commits the k most confident
// still-masked positions of the current block, where per block k = masked // steps_per_block and
// the first masked % steps_per_block steps commit one more.
struct DiffusionOptions {
  enum class Remasking { low_confidence, random };
  int gen_length = 64;
  int steps = 64;
  int block_length = 0;        // 0 = gen_length (one block)
  double temperature = 0.0;    // Gumbel noise exp(logits) / (-log u)^T in float64; 0 = none
  double cfg_scale = 0.0;      // classifier-free guidance: un + (cfg + 1) * (cond - un), prompt masked in un
  Remasking remasking = Remasking::low_confidence;
  // LLaDA ranks by the softmax of the logits in their own dtype (float32 here); MMaDA in float64.
  bool confidence_float64 = false;
  bool stop_at_eos = false;    // stop after the first block in which end-of-text was committed
  std::uint64_t seed = 0;      // noise for temperature > 0 and random remasking (torch's CPU generator)
  std::optional<std::int64_t> mask_id;  // default: the model's
  int block_length_or_all() const { return block_length > 0 ? block_length : gen_length; }
  void validate() const;       // throws UsageError
};
const char* remasking_name(DiffusionOptions::Remasking remasking);
std::optional<DiffusionOptions::Remasking> parse_remasking(std::string_view name);

struct DiffusionStep {
  int step = 0;                            // global denoising step
  int block = 0;
  std::vector<std::int64_t> ids;           // the whole sequence after this step
  std::vector<std::int64_t> committed;     // positions unmasked at this step (ascending; a position
                                           // whose prediction was the mask id stays masked)
  std::vector<double> confidences;         // their confidences, in the same order
};

struct DiffusionResult {
  std::vector<std::int64_t> output_ids;    // prompt followed by the generated region
  std::vector<DiffusionStep> steps;
  std::int64_t mask_id = 0;
  bool stopped_on_eos = false;
};

// Every forward pass fires its hook points with phase denoise, the global step and the block;
// with classifier-free guidance the unconditional pass has ctx.pass == 1. `on_step` is called after
// each step (for progress and live viewers).
DiffusionResult generate_masked_diffusion(Model& model, const std::vector<std::int64_t>& prompt,
                                          const DiffusionOptions& options, const HookSet& hooks,
                                          int prompt_index = 0,
                                          const std::function<void(const DiffusionStep&)>& on_step = {});

}  // namespace hooklens

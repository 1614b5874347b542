#include <hooklens/error.h>
#include <hooklens/generate.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include <cmath>
#include <limits>

namespace hooklens {

void SamplingOptions::validate() const {
  if (max_new_tokens < 1) throw UsageError(fmt::format("max new tokens must be at least 1, not {}", max_new_tokens));
  if (greedy) return;
  if (!(temperature > 0) || !std::isfinite(temperature))
    throw UsageError(fmt::format("temperature must be a positive number, not {}", temperature));
  if (top_k < 0) throw UsageError(fmt::format("top-k must be 0 (off) or positive, not {}", top_k));
  if (!(top_p > 0 && top_p <= 1)) throw UsageError(fmt::format("top-p must lie in (0, 1], not {}", top_p));
}

namespace {

// Temperature, then top-k, then top-p (nucleus), then a draw: the order Hugging Face applies them.
std::int64_t sample(at::Tensor logits, const SamplingOptions& o, at::Generator& gen) {
  const float minus_inf = -std::numeric_limits<float>::infinity();
  logits = logits / o.temperature;
  if (o.top_k > 0 && o.top_k < logits.size(0)) {
    at::Tensor kth = std::get<0>(at::topk(logits, o.top_k)).select(0, o.top_k - 1);
    logits = logits.masked_fill(logits < kth, minus_inf);
  }
  if (o.top_p < 1.0) {
    auto [sorted, order] = at::sort(logits, /*dim=*/0, /*descending=*/true);
    at::Tensor cumulative = at::softmax(sorted, 0).cumsum(0);
    // Drop a token when the tokens ranked before it already reach top_p; the first always stays.
    at::Tensor drop_sorted = (cumulative - at::softmax(sorted, 0)) >= o.top_p;
    at::Tensor drop = at::zeros_like(drop_sorted).scatter(0, order, drop_sorted);
    logits = logits.masked_fill(drop, minus_inf);
  }
  return at::multinomial(at::softmax(logits, 0), 1, false, gen).item<std::int64_t>();
}

at::Tensor as_row(const std::vector<std::int64_t>& ids) {
  return at::tensor(at::ArrayRef<std::int64_t>(ids), at::kLong).unsqueeze(0);
}

}  // namespace

void check_context(const ModelInfo& model, std::size_t prompt_tokens, std::int64_t new_positions,
                   std::string_view option) {
  if (std::int64_t(prompt_tokens) + new_positions > model.n_ctx)
    throw UsageError(fmt::format("prompt of {} tokens + {} {} exceeds the model's context of {} tokens", prompt_tokens,
                                 option, new_positions, model.n_ctx));
}

GenerationResult generate_autoregressive(Model& model, const std::vector<std::int64_t>& prompt,
                                         const SamplingOptions& options, const HookSet& hooks, int prompt_index,
                                         const std::function<void(int, std::int64_t)>& on_token) {
  options.validate();
  const ModelInfo& info = model.info();
  if (prompt.empty()) throw UsageError("the prompt has no tokens");
  check_context(info, prompt.size(), options.max_new_tokens, "--max-new-tokens");

  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  std::unique_ptr<ModelState> cache = model.new_state();
  GenerationResult result;
  result.output_ids = prompt;
  at::Tensor input = as_row(prompt);
  for (int step = 0; step < options.max_new_tokens; ++step) {
    CaptureContext ctx;
    ctx.prompt = prompt_index;
    ctx.phase = step == 0 ? Phase::prefill : Phase::decode;
    ctx.step = step;
    at::Tensor logits = model.forward(input, hooks, ctx, cache.get(), Logits::last).reshape({-1});
    const std::int64_t token = options.greedy ? logits.argmax().item<std::int64_t>() : sample(logits, options, gen);
    result.output_ids.push_back(token);
    result.new_ids.push_back(token);
    if (on_token) on_token(step, token);
    if (options.stop_at_eos && info.eos_id && token == *info.eos_id) {
      result.stopped_on_eos = true;
      break;
    }
    // With a KV cache only the new token goes in; without one the whole sequence is recomputed.
    input = cache ? as_row({token}) : as_row(result.output_ids);
  }
  return result;
}

}  // namespace hooklens

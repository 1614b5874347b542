// The masked-diffusion generation loop (LLaDA's sampler, made observable step by step).
#include <hooklens/error.h>
#include <hooklens/generate.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include <cmath>
#include <limits>

namespace hooklens {

const char* remasking_name(DiffusionOptions::Remasking remasking) {
  return remasking == DiffusionOptions::Remasking::random ? "random" : "low_confidence";
}

std::optional<DiffusionOptions::Remasking> parse_remasking(std::string_view name) {
  if (name == "low_confidence") return DiffusionOptions::Remasking::low_confidence;
  if (name == "random") return DiffusionOptions::Remasking::random;
  return std::nullopt;
}

void DiffusionOptions::validate() const {
  const int block = block_length_or_all();
  if (gen_length < 1) throw UsageError(fmt::format("gen length must be at least 1, not {}", gen_length));
  if (block < 1 || block > gen_length)
    throw UsageError(fmt::format("block length must lie in [1, gen length {}], not {}", gen_length, block));
  if (gen_length % block)
    throw UsageError(fmt::format("gen length {} is not a multiple of block length {}", gen_length, block));
  const int blocks = gen_length / block;
  if (steps < 1 || steps % blocks)
    throw UsageError(fmt::format("steps {} must be a positive multiple of the number of blocks ({} = {} / {})", steps,
                                 blocks, gen_length, block));
  if (!(temperature >= 0) || !std::isfinite(temperature))
    throw UsageError(fmt::format("temperature must be 0 or positive, not {}", temperature));
  if (!(cfg_scale >= 0) || !std::isfinite(cfg_scale))
    throw UsageError(fmt::format("cfg scale must be 0 or positive, not {}", cfg_scale));
}

namespace {

// LLaDA's add_gumbel_noise: exp(logits) / (-log u)^T in float64, u uniform from the generator.
at::Tensor with_gumbel_noise(const at::Tensor& logits, double temperature, at::Generator& gen) {
  if (temperature == 0) return logits;
  at::Tensor l = logits.to(at::kDouble);
  at::Tensor u = at::rand(l.sizes(), gen, at::TensorOptions().dtype(at::kDouble));
  return l.exp() / (-u.log()).pow(temperature);
}

}  // namespace

DiffusionResult generate_masked_diffusion(Model& model, const std::vector<std::int64_t>& prompt,
                                          const DiffusionOptions& o, const HookSet& hooks, int prompt_index,
                                          const std::function<void(const DiffusionStep&)>& on_step) {
  o.validate();
  const ModelInfo& info = model.info();
  const std::optional<std::int64_t> mask = o.mask_id ? o.mask_id : info.mask_id;
  if (!mask) throw UsageError(fmt::format("{} has no mask token id; give one", info.path));
  if (*mask < 0 || *mask >= info.vocab_size)
    throw UsageError(fmt::format("mask token id {} is outside the vocabulary of {}", *mask, info.vocab_size));
  const std::int64_t P = std::int64_t(prompt.size()), T = P + o.gen_length;
  check_context(info, prompt.size(), o.gen_length, "--gen-length");
  const float minus_inf = -std::numeric_limits<float>::infinity();

  at::Tensor x = at::full({T}, *mask, at::kLong);
  if (P > 0) x.narrow(0, 0, P).copy_(at::tensor(at::ArrayRef<std::int64_t>(prompt), at::kLong));
  const at::Tensor prompt_positions = x.ne(*mask);  // what the unconditional (CFG) pass masks
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);

  DiffusionResult result;
  result.mask_id = *mask;
  const int block_length = o.block_length_or_all();
  const int blocks = o.gen_length / block_length, steps_per_block = o.steps / blocks;
  for (int b = 0; b < blocks && !result.stopped_on_eos; ++b) {
    const std::int64_t block_begin = P + std::int64_t(b) * block_length, block_end = block_begin + block_length;
    const std::int64_t masked = x.narrow(0, block_begin, block_length).eq(*mask).sum().item<std::int64_t>();
    for (int i = 0; i < steps_per_block; ++i) {
      const std::int64_t k = masked / steps_per_block + (i < masked % steps_per_block ? 1 : 0);
      CaptureContext ctx;
      ctx.prompt = prompt_index;
      ctx.phase = Phase::denoise;
      ctx.step = b * steps_per_block + i;
      ctx.block = b;
      const at::Tensor masked_now = x.eq(*mask);
      at::Tensor logits = model.forward(x.unsqueeze(0), hooks, ctx, nullptr)[0];  // [T, V]
      if (o.cfg_scale > 0) {
        ctx.pass = 1;
        at::Tensor un_logits = model.forward(x.masked_fill(prompt_positions, *mask).unsqueeze(0), hooks, ctx, nullptr)[0];
        logits = un_logits + (o.cfg_scale + 1) * (logits - un_logits);
      }
      at::Tensor x0 = with_gumbel_noise(logits, o.temperature, gen).argmax(-1);
      at::Tensor confidence;
      if (o.remasking == DiffusionOptions::Remasking::low_confidence) {
        at::Tensor p = at::softmax(o.confidence_float64 ? logits.to(at::kDouble) : logits, -1);
        confidence = p.gather(-1, x0.unsqueeze(-1)).squeeze(-1);
      } else {
        confidence = at::rand({T}, gen);
      }
      confidence.narrow(0, block_end, T - block_end).fill_(minus_inf);
      x0 = at::where(masked_now, x0, x);
      confidence = at::where(masked_now, confidence, at::full({}, minus_inf, confidence.options()));
      DiffusionStep step;
      step.step = ctx.step;
      step.block = b;
      if (k > 0) {
        at::Tensor chosen = std::get<0>(std::get<1>(at::topk(confidence, k)).sort());
        const at::Tensor tokens = x0.index({chosen});
        x.index_put_({chosen}, tokens);
        // A position whose prediction is the mask id stays masked (and competes again): only the
        // positions this step unmasked count as committed, as in the upstream trace's `unmasked`.
        const at::Tensor unmasked = tokens.ne(*mask);
        at::Tensor committed = chosen.masked_select(unmasked);
        at::Tensor committed_confidence = confidence.index({chosen}).masked_select(unmasked).to(at::kDouble);
        step.committed.assign(committed.data_ptr<std::int64_t>(), committed.data_ptr<std::int64_t>() + committed.numel());
        step.confidences.assign(committed_confidence.data_ptr<double>(),
                                committed_confidence.data_ptr<double>() + committed_confidence.numel());
      }
      step.ids.assign(x.data_ptr<std::int64_t>(), x.data_ptr<std::int64_t>() + T);
      if (on_step) on_step(step);
      result.steps.push_back(std::move(step));
    }
    if (o.stop_at_eos && info.eos_id) {
      at::Tensor generated = x.narrow(0, P, block_end - P);
      result.stopped_on_eos = generated.eq(*info.eos_id).any().item<bool>();
    }
  }
  result.output_ids.assign(x.data_ptr<std::int64_t>(), x.data_ptr<std::int64_t>() + T);
  return result;
}

}  // namespace hooklens

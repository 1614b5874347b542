#include "toy_architecture.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include <cmath>

namespace hooklens::training {

nlohmann::json toy_config(ToyArchitecture architecture, const ToyShape& s, const ToyVocabulary& v) {
  if (architecture == ToyArchitecture::gpt_neo) {
    nlohmann::json layers = nlohmann::json::array();
    // Local first: a local layer with a short window is where a previous-token head forms quickly
    // (few keys to choose from), and the global layer after it can read that head for induction.
    for (int l = 0; l < s.layers; ++l) layers.push_back(l % 2 ? "global" : "local");
    // Both spellings of the layer kinds: Hugging Face's GPTNeoConfig reads attention_types and
    // derives attention_layers; hooklens reads either.
    nlohmann::json types = nlohmann::json::array();
    for (int l = 0; l < s.layers; ++l) types.push_back(nlohmann::json::array({nlohmann::json::array({layers[l]}), 1}));
    return {{"model_type", "gpt_neo"},
            {"architectures", {"GPTNeoForCausalLM"}},
            {"hidden_size", s.d_model},
            {"num_layers", s.layers},
            {"num_heads", s.heads},
            {"attention_layers", layers},
            {"attention_types", types},
            {"window_size", s.window},
            {"max_position_embeddings", s.context},
            {"vocab_size", v.size},
            {"intermediate_size", s.d_mlp},
            {"activation_function", "gelu_new"},
            {"layer_norm_epsilon", 1e-5},
            {"bos_token_id", v.end_of_text_id},
            {"eos_token_id", v.end_of_text_id},
            {"tie_word_embeddings", true},
            {"torch_dtype", "float32"}};
  }
  return {{"model_type", "llada"},
          {"architectures", {"LLaDAModelLM"}},
          {"d_model", s.d_model},
          {"n_heads", s.heads},
          {"n_kv_heads", s.heads},
          {"n_layers", s.layers},
          {"mlp_hidden_size", s.d_mlp},
          {"max_sequence_length", s.context},
          {"vocab_size", v.size},
          {"embedding_size", v.size},
          {"mask_token_id", v.mask_id.value_or(-1)},
          {"eos_token_id", v.end_of_text_id},
          {"rope", true},
          {"rope_theta", 10000.0},
          {"rms_norm_eps", 1e-5},
          {"block_type", "llama"},
          {"layer_norm_type", "rms"},
          {"activation_type", "silu"},
          {"include_bias", false},
          {"weight_tying", false},
          {"torch_dtype", "float32"}};
}

// The sinusoids of "Attention is all you need" (sin at even, cos at odd dims, wavelengths 2 pi to
// 10000 * 2 pi) with the same RMS as the other embeddings. In them the embedding of position p - k
// is a fixed rotation of that of p, so attention at a fixed offset (a previous-token head, which
// induction heads build on) is linear in them from the start; random learned positions must first
// learn that structure, and in a few thousand steps did not (no previous-token head formed).
at::Tensor sinusoidal_positions(std::int64_t positions, std::int64_t d_model, double rms) {
  at::Tensor pos = at::arange(positions, at::kDouble).unsqueeze(1);
  at::Tensor pair = at::arange(0, d_model, 2, at::kDouble) / double(d_model);
  at::Tensor angle = pos / at::pow(10000.0, pair).unsqueeze(0);  // [positions, ceil(d/2)]
  at::Tensor table = at::stack({angle.sin(), angle.cos()}, 2).flatten(1).narrow(1, 0, d_model);
  return (table * (rms * std::sqrt(2.0))).to(at::kFloat).contiguous();
}

std::vector<std::pair<std::string, at::Tensor>> initial_weights(ToyArchitecture architecture, const ToyShape& s,
                                                                const ToyVocabulary& v, std::uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const std::int64_t D = s.d_model, F = s.d_mlp, V = v.size;
  const double std = 0.02, projection_std = 0.02 / std::sqrt(2.0 * s.layers);
  std::vector<std::pair<std::string, at::Tensor>> w;
  auto normal = [&](const std::string& name, std::vector<std::int64_t> shape, double sd) {
    w.emplace_back(name, at::normal(0.0, sd, shape, gen));
  };
  auto ones = [&](const std::string& name, std::int64_t n) { w.emplace_back(name, at::ones({n})); };
  auto zeros = [&](const std::string& name, std::int64_t n) { w.emplace_back(name, at::zeros({n})); };

  if (architecture == ToyArchitecture::gpt_neo) {
    normal("transformer.wte.weight", {V, D}, std);
    w.emplace_back("transformer.wpe.weight", sinusoidal_positions(s.context, D, std));
    for (int l = 0; l < s.layers; ++l) {
      const std::string p = fmt::format("transformer.h.{}.", l);
      ones(p + "ln_1.weight", D);
      zeros(p + "ln_1.bias", D);
      normal(p + "attn.attention.q_proj.weight", {D, D}, std);
      normal(p + "attn.attention.k_proj.weight", {D, D}, std);
      normal(p + "attn.attention.v_proj.weight", {D, D}, std);
      normal(p + "attn.attention.out_proj.weight", {D, D}, projection_std);
      zeros(p + "attn.attention.out_proj.bias", D);
      ones(p + "ln_2.weight", D);
      zeros(p + "ln_2.bias", D);
      normal(p + "mlp.c_fc.weight", {F, D}, std);
      zeros(p + "mlp.c_fc.bias", F);
      normal(p + "mlp.c_proj.weight", {D, F}, projection_std);
      zeros(p + "mlp.c_proj.bias", D);
    }
    ones("transformer.ln_f.weight", D);
    zeros("transformer.ln_f.bias", D);
    return w;
  }
  const std::string t = "model.transformer.";
  normal(t + "wte.weight", {V, D}, std);
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = fmt::format("{}blocks.{}.", t, l);
    ones(p + "attn_norm.weight", D);
    normal(p + "q_proj.weight", {D, D}, std);
    normal(p + "k_proj.weight", {D, D}, std);
    normal(p + "v_proj.weight", {D, D}, std);
    normal(p + "attn_out.weight", {D, D}, projection_std);
    ones(p + "ff_norm.weight", D);
    normal(p + "ff_proj.weight", {F, D}, std);
    normal(p + "up_proj.weight", {F, D}, std);
    normal(p + "ff_out.weight", {D, F}, projection_std);
  }
  ones(t + "ln_f.weight", D);
  normal(t + "ff_out.weight", {V, D}, std);
  return w;
}

}  // namespace hooklens::training

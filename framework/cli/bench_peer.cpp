// HF transformers' GPT-Neo computation in bare libtorch (see bench_peer.h): modeling_gpt_neo's
// order of operations, written from its documented behaviour.
#include "bench_peer.h"

#include <hooklens/error.h>
#include <hooklens/weights.h>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <limits>

namespace hooklens::cli {

PeerGptNeo::PeerGptNeo(const ModelInfo& info, const std::filesystem::path& model_dir, double layer_norm_eps)
    : info_(info), eps_(layer_norm_eps) {
  if (info.adapter != "gpt_neo") throw Error(fmt::format("the peer computes GPT-Neo only, not {}", info.adapter));
  TensorMap w = load_hf_weights(model_dir);
  const std::string p = w.count("transformer.wte.weight") ? "transformer." : "";
  auto take = [&](const std::string& name) {
    auto it = w.find(p + name);
    if (it == w.end()) throw Error(fmt::format("{}: no tensor {}", model_dir.string(), p + name));
    return it->second.to(at::kFloat).contiguous().clone();  // in memory, as from_pretrained loads it
  };
  wte_ = take("wte.weight");
  wpe_ = take("wpe.weight");
  lnf_w_ = take("ln_f.weight");
  lnf_b_ = take("ln_f.bias");
  const at::Tensor causal = at::ones({info.n_ctx, info.n_ctx}, at::kBool).tril();
  for (int l = 0; l < info.n_layers; ++l) {
    const std::string b = fmt::format("h.{}.", l);
    Layer layer{take(b + "ln_1.weight"), take(b + "ln_1.bias"), take(b + "attn.attention.q_proj.weight"),
                take(b + "attn.attention.k_proj.weight"), take(b + "attn.attention.v_proj.weight"),
                take(b + "attn.attention.out_proj.weight"), take(b + "attn.attention.out_proj.bias"),
                take(b + "ln_2.weight"), take(b + "ln_2.bias"), take(b + "mlp.c_fc.weight"), take(b + "mlp.c_fc.bias"),
                take(b + "mlp.c_proj.weight"), take(b + "mlp.c_proj.bias"), causal};
    // A local layer's buffer: causal and no further back than the window.
    if (info.layer_attention[size_t(l)] == AttentionKind::local)
      layer.allowed = causal.logical_xor(causal.tril(-info.window_size));
    layers_.push_back(std::move(layer));
  }
}

at::Tensor PeerGptNeo::step(const at::Tensor& ids, Cache& past, std::vector<at::Tensor>& attentions) const {
  const std::int64_t T = ids.size(1), H = info_.n_heads, dh = info_.d_head, D = info_.d_model;
  const std::int64_t offset = past.empty() ? 0 : past[0].first.size(2);
  at::Tensor x = at::embedding(wte_, ids) + at::embedding(wpe_, at::arange(offset, offset + T, at::kLong));
  const float masked = std::numeric_limits<float>::lowest();  // torch.finfo(float32).min
  if (past.empty()) past.resize(layers_.size());
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const Layer& w = layers_[l];
    at::Tensor h = at::layer_norm(x, {D}, w.ln1_w, w.ln1_b, eps_);
    auto heads = [&](const at::Tensor& t) { return t.view({1, T, H, dh}).permute({0, 2, 1, 3}); };
    at::Tensor q = heads(at::linear(h, w.W_q)), k = heads(at::linear(h, w.W_k)), v = heads(at::linear(h, w.W_v));
    if (past[l].first.defined()) {
      k = at::cat({past[l].first, k}, -2);
      v = at::cat({past[l].second, v}, -2);
    }
    past[l] = {k, v};
    const std::int64_t S = k.size(2);
    at::Tensor scores = at::matmul(q, k.transpose(-1, -2));  // GPT-Neo does not scale
    const at::Tensor allowed = w.allowed.narrow(0, S - T, T).narrow(1, 0, S);
    scores = at::where(allowed, scores, at::scalar_tensor(masked, scores.options()));
    at::Tensor probs = at::softmax(scores, -1);
    attentions.push_back(probs);
    at::Tensor z = at::matmul(probs, v).permute({0, 2, 1, 3}).contiguous().view({1, T, D});
    x = x + at::linear(z, w.W_o, w.b_o);
    h = at::layer_norm(x, {D}, w.ln2_w, w.ln2_b, eps_);
    x = x + at::linear(at::gelu(at::linear(h, w.W_fc, w.b_fc), "tanh"), w.W_proj, w.b_proj);
  }
  x = at::layer_norm(x, {D}, lnf_w_, lnf_b_, eps_);
  return at::linear(x, wte_);  // lm_head over every position
}

at::Tensor PeerGptNeo::forward(const std::vector<std::int64_t>& ids, std::vector<at::Tensor>& attentions) const {
  Cache past;
  return step(at::tensor(ids, at::kLong).unsqueeze(0), past, attentions);
}

std::vector<std::int64_t> PeerGptNeo::generate(const std::vector<std::int64_t>& prompt, int new_tokens,
                                               std::vector<at::Tensor>& attentions) const {
  Cache past;
  std::vector<std::int64_t> out;
  at::Tensor input = at::tensor(prompt, at::kLong).unsqueeze(0);
  for (int i = 0; i < new_tokens; ++i) {
    const at::Tensor logits = step(input, past, attentions);
    const std::int64_t token = logits.select(1, logits.size(1) - 1).argmax(-1).item<std::int64_t>();
    out.push_back(token);
    input = at::full({1, 1}, token, at::kLong);
  }
  return out;
}

}  // namespace hooklens::cli

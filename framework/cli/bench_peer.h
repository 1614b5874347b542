// The peer's computation for `hooklens bench`: what Hugging Face transformers (4.40) computes for
// GPTNeoForCausalLM with output_attentions=True, written in bare libtorch so that both sides run
// the same kernels (same libtorch, same BLAS, same threads) and only the work done differs. Python's
// own overhead is left out, which flatters the peer.
#pragma once
#include <hooklens/model.h>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace hooklens::cli {

class PeerGptNeo {
 public:
  // A GPT-Neo directory's weights (as float32 in memory) and the shape hooklens read from it.
  PeerGptNeo(const ModelInfo& info, const std::filesystem::path& model_dir, double layer_norm_eps);

  // Greedy generation as generate(do_sample=False, output_attentions=True) does it: the prefill
  // computes logits for every prompt position, every step's projections are full matrix products,
  // keys and values grow by concatenation, and every step's attention is kept. Returns the new ids.
  std::vector<std::int64_t> generate(const std::vector<std::int64_t>& prompt, int new_tokens,
                                     std::vector<at::Tensor>& attentions) const;
  // One forward pass with output_attentions=True: logits for every position, attentions kept.
  at::Tensor forward(const std::vector<std::int64_t>& ids, std::vector<at::Tensor>& attentions) const;

 private:
  using Cache = std::vector<std::pair<at::Tensor, at::Tensor>>;  // per layer: keys, values [1, heads, S, d_head]
  at::Tensor step(const at::Tensor& ids, Cache& past, std::vector<at::Tensor>& attentions) const;

  struct Layer {
    at::Tensor ln1_w, ln1_b, W_q, W_k, W_v, W_o, b_o, ln2_w, ln2_b, W_fc, b_fc, W_proj, b_proj;
    at::Tensor allowed;  // [n_ctx, n_ctx] bool: the registered causal (or local) mask buffer
  };
  ModelInfo info_;
  double eps_;
  at::Tensor wte_, wpe_, lnf_w_, lnf_b_;
  std::vector<Layer> layers_;
};

}  // namespace hooklens::cli

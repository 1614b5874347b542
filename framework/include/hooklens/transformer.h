// The hooked transformer every adapter reuses: a decoder stack described by a spec (norm,
// positions, activation, attention kind per layer, score scale, grouped kv heads) and weights in
// one canonical layout. An adapter only reads its config and maps its tensor names onto
// TransformerWeights; the forward pass, KV cache and every hook point live here.
#pragma once
#include <hooklens/model.h>
#include <hooklens/weights.h>

#include <ATen/core/Tensor.h>

#include <memory>
#include <optional>
#include <string_view>
#include <vector>

namespace hooklens {

struct TransformerSpec {
  enum class Norm { layer_norm, rms_norm };
  // rope_neox rotates dims (i, i + d/2) together; rope_interleaved (llama2.c, Meta's LLaMA) dims (2i, 2i + 1).
  enum class Positions { learned, rope_neox, rope_interleaved, none };
  enum class Activation { gelu_new, gelu, relu, silu };

  Norm norm = Norm::layer_norm;
  double norm_eps = 1e-5;
  Positions positions = Positions::learned;
  double rope_theta = 10000.0;
  Activation activation = Activation::gelu_new;
  bool gated_mlp = false;    // mlp_post = act(x W_gate) * (x W_in)
  double attn_scale = 1.0;   // scores = (q . k) * attn_scale
};

// Linear weights are [out, in] (nn.Linear layout, y = x Wᵀ + b). Optional tensors are undefined.
struct LayerWeights {
  at::Tensor ln1_w, ln1_b;
  at::Tensor W_q, b_q, W_k, b_k, W_v, b_v;   // [heads*d_head, d_model], [kv_heads*d_head, d_model]
  at::Tensor W_o, b_o;                        // [d_model, heads*d_head]
  at::Tensor ln2_w, ln2_b;
  at::Tensor W_in, b_in, W_gate;              // [d_mlp, d_model]; W_gate only with gated_mlp
  at::Tensor W_out, b_out;                    // [d_model, d_mlp]
};

struct TransformerWeights {
  at::Tensor embed;      // [vocab, d_model]
  at::Tensor pos_embed;  // [n_ctx, d_model] with learned positions
  std::vector<LayerWeights> layers;
  at::Tensor lnf_w, lnf_b;
  at::Tensor unembed, unembed_b;  // [vocab, d_model]; may be the same tensor as embed (tied)
};

// `info` must describe the shapes (n_layers, n_heads, n_kv_heads, d_model, d_head, d_mlp,
// vocab_size, n_ctx, layer_attention, window_size). Weights are checked against `info` (a mismatch
// throws Error naming the tensor) but not read: they may be views of a memory-mapped file in any
// floating dtype, and are used as LoadOptions::resident_weights_bytes says. Compute is float32.
std::unique_ptr<Model> make_transformer(ModelInfo info, TransformerSpec spec, TransformerWeights weights,
                                        std::unique_ptr<Tokenizer> tokenizer, const LoadOptions& options = {});

// Hugging Face's activation_function names: "gelu_new", "gelu", "relu", "silu".
std::optional<TransformerSpec::Activation> parse_activation(std::string_view name);

// Adapters call this after taking every tensor they know: leftovers mean the checkpoint is not
// what the adapter thinks it is, so they are an Error listing them (with `what`, the source).
void check_all_weights_used(const TensorMap& rest, const std::string& what);

}  // namespace hooklens

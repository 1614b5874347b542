// GPT-2 (gpt2, distilgpt2, and from-scratch models saved as GPT2LMHeadModel) from a Hugging Face
// model directory. This file is the template for adding an architecture (README "Adding an
// architecture"): read config.json, map the checkpoint's tensors onto the framework's
// TransformerWeights, describe what differs in a TransformerSpec, done. The forward pass, KV
// cache, every hook point and generation come from the framework.
#include <hooklens/error.h>
#include <hooklens/hf_config.h>
#include <hooklens/message_text.h>
#include <hooklens/plugin_define.h>
#include <hooklens/transformer.h>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cmath>

namespace hooklens {
namespace {

// Step 1: the differences from the default spec, read from config.json.
TransformerSpec read_spec(const HfConfig& cfg, int d_head) {
  TransformerSpec spec;
  spec.norm = TransformerSpec::Norm::layer_norm;
  spec.norm_eps = cfg.number("layer_norm_epsilon", 1e-5);
  spec.positions = TransformerSpec::Positions::learned;
  const std::string activation = cfg.string("activation_function", "gelu_new");
  if (auto a = parse_activation(activation)) spec.activation = *a;
  else cfg.fail(fmt::format("activation_function '{}' is not supported", brief_text(activation)));
  const auto& j = cfg.json();
  if (j.value("scale_attn_by_inverse_layer_idx", false) == true)
    cfg.fail("'scale_attn_by_inverse_layer_idx' is not supported");
  // GPT-2 divides scores by sqrt(d_head) unless the config turns it off.
  spec.attn_scale = j.value("scale_attn_weights", true) == false ? 1.0 : 1.0 / std::sqrt(double(d_head));
  return spec;
}

class Gpt2Adapter final : public Adapter {
 public:
  static int score(const std::filesystem::path& model) { return peek_model_type(model) == "gpt2" ? 100 : 0; }

  std::unique_ptr<Model> load(const std::filesystem::path& dir, const LoadOptions& options) const override {
    // Step 2: the model's shape.
    const HfConfig cfg(dir);
    // reorder_and_upcast_attn only changes the dtype of the score matmul under fp16: hooklens is fp32.
    // The summary_* keys configure a classification head that a language model does not have.
    cfg.warn_unknown_keys({"activation_function", "layer_norm_epsilon", "n_ctx", "n_embd", "n_head", "n_inner",
                           "n_layer", "n_positions", "reorder_and_upcast_attn", "scale_attn_by_inverse_layer_idx",
                           "scale_attn_weights", "summary_activation", "summary_proj_to_labels", "summary_type",
                           "summary_use_proj", "summary_first_dropout", "vocab_size"});
    ModelInfo info;
    info.adapter = "gpt2";
    info.architecture = "GPT2LMHeadModel";
    info.path = dir.string();
    info.n_layers = int(cfg.integer("n_layer"));
    info.n_heads = info.n_kv_heads = int(cfg.integer("n_head"));
    info.d_model = int(cfg.integer("n_embd"));
    if (info.d_model % info.n_heads) cfg.fail("'n_embd' is not a multiple of 'n_head'");
    info.d_head = info.d_model / info.n_heads;
    info.d_mlp = int(cfg.integer("n_inner", 4 * info.d_model));
    info.vocab_size = cfg.integer("vocab_size");
    info.n_ctx = cfg.integer("n_positions", cfg.integer("n_ctx", 1024));
    info.bos_id = cfg.optional_id("bos_token_id");
    info.eos_id = cfg.optional_id("eos_token_id");
    const TransformerSpec spec = read_spec(cfg, info.d_head);

    // Step 3: the weights. Hub checkpoints of GPT2Model have no "transformer." prefix.
    TensorMap tensors = load_model_weights(dir, options);
    const std::string what = dir.string();
    const std::string p = tensors.count("transformer.wte.weight") ? "transformer." : "";
    const std::int64_t D = info.d_model, F = info.d_mlp, V = info.vocab_size;
    auto take = [&](const std::string& name, std::vector<std::int64_t> shape) {
      return take_weight(tensors, p + name, std::move(shape), what);
    };
    // Conv1D stores [in, out]; the framework wants nn.Linear's [out, in].
    auto take_conv1d = [&](const std::string& name, std::int64_t in, std::int64_t out) {
      return take(name, {in, out}).t();
    };

    TransformerWeights w;
    w.embed = take("wte.weight", {V, D});
    info.weight_dtype = safetensors_dtype_name(w.embed.scalar_type());
    w.pos_embed = take("wpe.weight", {info.n_ctx, D});
    for (int l = 0; l < info.n_layers; ++l) {
      const std::string b = fmt::format("h.{}.", l);
      LayerWeights lw;
      lw.ln1_w = take(b + "ln_1.weight", {D});
      lw.ln1_b = take(b + "ln_1.bias", {D});
      // c_attn fuses q, k and v along its output dimension, in that order.
      const at::Tensor qkv = take_conv1d(b + "attn.c_attn.weight", D, 3 * D);
      const at::Tensor qkv_bias = take(b + "attn.c_attn.bias", {3 * D});
      lw.W_q = qkv.narrow(0, 0, D);
      lw.W_k = qkv.narrow(0, D, D);
      lw.W_v = qkv.narrow(0, 2 * D, D);
      lw.b_q = qkv_bias.narrow(0, 0, D);
      lw.b_k = qkv_bias.narrow(0, D, D);
      lw.b_v = qkv_bias.narrow(0, 2 * D, D);
      lw.W_o = take_conv1d(b + "attn.c_proj.weight", D, D);
      lw.b_o = take(b + "attn.c_proj.bias", {D});
      lw.ln2_w = take(b + "ln_2.weight", {D});
      lw.ln2_b = take(b + "ln_2.bias", {D});
      lw.W_in = take_conv1d(b + "mlp.c_fc.weight", D, F);
      lw.b_in = take(b + "mlp.c_fc.bias", {F});
      lw.W_out = take_conv1d(b + "mlp.c_proj.weight", F, D);
      lw.b_out = take(b + "mlp.c_proj.bias", {D});
      tensors.erase(p + b + "attn.bias");  // causal-mask buffers, not weights
      tensors.erase(p + b + "attn.masked_bias");
      w.layers.push_back(std::move(lw));
    }
    // Only now that the weights hold n_layers layers: a lying n_layer must not allocate billions.
    info.layer_attention.assign(info.n_layers, AttentionKind::causal);
    w.lnf_w = take("ln_f.weight", {D});
    w.lnf_b = take("ln_f.bias", {D});
    tensors.erase("lm_head.weight");  // tied to wte
    w.unembed = w.embed;
    check_all_weights_used(tensors, what);

    // Step 4: hand everything to the framework.
    return make_transformer(std::move(info), spec, std::move(w), load_model_tokenizer(dir, options), options);
  }
};

}  // namespace
}  // namespace hooklens

HOOKLENS_DEFINE_PLUGIN(hooklens::Adapter, hooklens::Gpt2Adapter, "adapter", "gpt2", "1.0",
                       "GPT-2 (gpt2, distilgpt2) from a Hugging Face directory")

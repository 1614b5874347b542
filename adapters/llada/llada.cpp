// LLaDA and MMaDA masked-diffusion language models from a Hugging Face directory.
//
// The body is a LLaMA-style stack with fully bidirectional attention (LLaDA's "llama" block type):
// RMSNorm (float32), NeoX "rotate half" RoPE with config.rope_theta, scores / sqrt(d_head), grouped kv
// heads when n_kv_heads < n_heads, MLP ff_out(silu(ff_proj(x)) * up_proj(x)) with ff_proj the gate,
// and an untied LM head transformer.ff_out unless weight_tying. MMaDA checkpoints are the same body
// with a larger vocabulary. Generation is the framework's masked-diffusion loop.
#include <hooklens/error.h>
#include <hooklens/hf_config.h>
#include <hooklens/json_read.h>
#include <hooklens/plugin_define.h>
#include <hooklens/transformer.h>

#include <fmt/format.h>

#include <cmath>

namespace hooklens {
namespace {

bool is_llada_type(const std::string& type) { return type == "llada" || type == "mmada"; }

// Options of the reference model that change its computation and that hooklens does not implement:
// refusing them beats running a different model silently.
void refuse_unsupported(const HfConfig& cfg) {
  auto require = [&](const char* key, const nlohmann::json& expected) {
    if (cfg.has(key) && cfg.json()[key] != expected)
      cfg.fail(fmt::format("'{}': {} is not supported (only {})", key, brief_json(cfg.json()[key]), expected.dump()));
  };
  require("block_type", "llama");
  require("layer_norm_type", "rms");
  require("activation_type", "silu");
  require("rope", true);
  require("alibi", false);
  require("attention_layer_norm", false);
  require("input_emb_norm", false);
  require("scale_logits", false);
  require("clip_qkv", nullptr);
  require("bias_for_layer_norm", false);
  require("layer_norm_with_affine", true);
}

class LladaAdapter final : public Adapter {
 public:
  static int score(const std::filesystem::path& model) { return is_llada_type(peek_model_type(model)) ? 100 : 0; }

  std::unique_ptr<Model> load(const std::filesystem::path& dir, const LoadOptions& options) const override {
    const HfConfig cfg(dir);
    refuse_unsupported(cfg);
    // Read below, checked by refuse_unsupported, or without effect on an fp32 forward pass
    // (precision and rope_full_precision: hooklens computes in float32 throughout; flash_attention
    // and block_group_size: kernels and sharding).
    cfg.warn_unknown_keys({"activation_type", "alibi", "alibi_bias_max", "attention_layer_norm",
                           "attention_layer_norm_with_affine", "bias_for_layer_norm", "block_group_size", "block_type",
                           "clip_qkv", "d_model", "embedding_size", "flash_attention", "include_bias",
                           "include_qkv_bias", "input_emb_norm", "layer_norm_type", "layer_norm_with_affine",
                           "mask_token_id", "max_sequence_length", "mlp_hidden_size", "mlp_ratio",
                           "multi_query_attention", "n_heads", "n_kv_heads", "n_layers", "precision", "rms_norm_eps",
                           "rope", "rope_full_precision", "rope_theta", "scale_logits", "vocab_size", "weight_tying"});
    ModelInfo info;
    info.adapter = "diffusion";
    const std::string type = cfg.string("model_type");
    info.architecture = type == "mmada" ? "MMadaModelLM" : "LLaDAModelLM";
    info.path = dir.string();
    info.n_layers = int(cfg.integer("n_layers"));
    info.n_heads = int(cfg.integer("n_heads"));
    info.n_kv_heads = cfg.json().value("multi_query_attention", nlohmann::json()) == true
                          ? 1
                          : int(cfg.integer("n_kv_heads", info.n_heads));
    if (info.n_heads % info.n_kv_heads) cfg.fail("'n_heads' is not a multiple of 'n_kv_heads'");
    info.d_model = int(cfg.integer("d_model"));
    if (info.d_model % info.n_heads) cfg.fail("'d_model' is not a multiple of 'n_heads'");
    info.d_head = info.d_model / info.n_heads;
    info.d_mlp = int(cfg.integer("mlp_hidden_size", cfg.integer("mlp_ratio", 4) * info.d_model));
    // The embedding may be padded past the tokenizer's vocabulary; logits cover all of it.
    info.vocab_size = cfg.integer("embedding_size", cfg.integer("vocab_size"));
    if (info.vocab_size < cfg.integer("vocab_size")) cfg.fail("'embedding_size' is smaller than 'vocab_size'");
    info.n_ctx = cfg.integer("max_sequence_length");
    info.eos_id = cfg.optional_id("eos_token_id");
    info.mask_id = cfg.has("mask_token_id") ? cfg.token_id("mask_token_id") : 126336;  // LLaDA's, when unstated
    TransformerSpec spec;
    spec.norm = TransformerSpec::Norm::rms_norm;
    spec.norm_eps = cfg.number("rms_norm_eps", 1e-5);
    spec.positions = TransformerSpec::Positions::rope_neox;
    spec.rope_theta = cfg.number("rope_theta", 10000.0);
    spec.activation = TransformerSpec::Activation::silu;
    spec.gated_mlp = true;
    spec.attn_scale = 1.0 / std::sqrt(double(info.d_head));
    const bool bias = cfg.json().value("include_bias", false) == true;
    const bool qkv_bias = bias || cfg.json().value("include_qkv_bias", false) == true;

    TensorMap tensors = load_model_weights(dir, options);
    const std::string what = dir.string();
    const std::string p = tensors.count("model.transformer.wte.weight") ? "model.transformer." : "transformer.";
    const std::int64_t D = info.d_model, F = info.d_mlp, V = info.vocab_size;
    const std::int64_t HQ = std::int64_t(info.n_heads) * info.d_head, HKV = std::int64_t(info.n_kv_heads) * info.d_head;
    auto take = [&](const std::string& name, std::vector<std::int64_t> shape) {
      return take_weight(tensors, p + name, std::move(shape), what);
    };
    auto take_if = [&](bool present, const std::string& name, std::vector<std::int64_t> shape) {
      return present ? take(name, std::move(shape)) : at::Tensor();
    };

    TransformerWeights w;
    w.embed = take("wte.weight", {V, D});
    info.weight_dtype = safetensors_dtype_name(w.embed.scalar_type());
    for (int l = 0; l < info.n_layers; ++l) {
      const std::string b = fmt::format("blocks.{}.", l);
      LayerWeights lw;
      lw.ln1_w = take(b + "attn_norm.weight", {D});
      lw.W_q = take(b + "q_proj.weight", {HQ, D});
      lw.W_k = take(b + "k_proj.weight", {HKV, D});
      lw.W_v = take(b + "v_proj.weight", {HKV, D});
      lw.b_q = take_if(qkv_bias, b + "q_proj.bias", {HQ});
      lw.b_k = take_if(qkv_bias, b + "k_proj.bias", {HKV});
      lw.b_v = take_if(qkv_bias, b + "v_proj.bias", {HKV});
      lw.W_o = take(b + "attn_out.weight", {D, HQ});
      lw.b_o = take_if(bias, b + "attn_out.bias", {D});
      lw.ln2_w = take(b + "ff_norm.weight", {D});
      lw.W_gate = take(b + "ff_proj.weight", {F, D});
      lw.W_in = take(b + "up_proj.weight", {F, D});
      lw.W_out = take(b + "ff_out.weight", {D, F});
      lw.b_out = take_if(bias, b + "ff_out.bias", {D});
      if (bias && (tensors.count(p + b + "ff_proj.bias") || tensors.count(p + b + "up_proj.bias")))
        cfg.fail("biases on ff_proj/up_proj are not supported");
      w.layers.push_back(std::move(lw));
    }
    info.layer_attention.assign(info.n_layers, AttentionKind::bidirectional);
    w.lnf_w = take("ln_f.weight", {D});
    if (cfg.json().value("weight_tying", false) == true) {
      w.unembed = w.embed;
    } else {
      w.unembed = take("ff_out.weight", {V, D});
      w.unembed_b = take_if(bias, "ff_out.bias", {V});
    }
    check_all_weights_used(tensors, what);
    return make_transformer(std::move(info), spec, std::move(w), load_model_tokenizer(dir, options), options);
  }
};

}  // namespace
}  // namespace hooklens

// The adapter is named "diffusion" (--adapter diffusion, and "adapter" in run manifests) though its
// file is hooklens_llada.so: the name predates the folder's.
HOOKLENS_DEFINE_PLUGIN(hooklens::Adapter, hooklens::LladaAdapter, "adapter", "diffusion", "1.0",
                       "LLaDA / MMaDA masked-diffusion models from a Hugging Face directory")

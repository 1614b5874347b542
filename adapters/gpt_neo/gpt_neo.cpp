// GPT-Neo (EleutherAI; TinyStories-1M...33M, gpt-neo-125M) from a Hugging Face model directory.
//
// What matters for exactness (Hugging Face modeling_gpt_neo): attention scores are NOT scaled by
// 1/sqrt(d_head); layers alternate global and local attention as config.attention_types says, a
// local query i sees keys j with i - window_size < j <= i; q/k/v have no bias, out_proj has one;
// activation gelu_new; lm_head is tied to wte.
#include <hooklens/error.h>
#include <hooklens/hf_config.h>
#include <hooklens/message_text.h>
#include <hooklens/plugin_define.h>
#include <hooklens/transformer.h>

#include <fmt/format.h>

namespace hooklens {
namespace {

// attention_layers ["global", "local", ...], or attention_types [[["global", "local"], 2]]
// which repeats the inner list 2 times.
std::vector<AttentionKind> attention_layers(const HfConfig& cfg, int n_layers) {
  std::vector<std::string> kinds;
  const auto& j = cfg.json();
  if (cfg.has("attention_layers") && j["attention_layers"].is_array()) {
    for (const auto& k : j["attention_layers"])
      if (k.is_string()) kinds.push_back(k.get<std::string>());
      else cfg.fail("'attention_layers' must list strings");
  } else if (cfg.has("attention_types") && j["attention_types"].is_array()) {
    for (const auto& group : j["attention_types"]) {
      if (!group.is_array() || group.size() != 2 || !group[0].is_array() || !group[1].is_number_integer() ||
          group[1].get<std::int64_t>() < 0)
        cfg.fail("'attention_types' entries must look like [[\"global\", \"local\"], 2]");
      // A huge repeat count must fail here, not after expanding into billions of entries.
      const auto& names = group[0];
      const std::uint64_t repeats = group[1].get<std::uint64_t>();
      if (!names.empty() && repeats > (std::size_t(n_layers) - kinds.size()) / names.size())
        cfg.fail(fmt::format("'attention_types' names more layers than 'num_layers' ({})", n_layers));
      for (std::uint64_t r = 0; r < repeats && !names.empty(); ++r)
        for (const auto& k : names)
          if (k.is_string()) kinds.push_back(k.get<std::string>());
          else cfg.fail("'attention_types' must list strings");
    }
  } else {
    cfg.fail("missing 'attention_layers' or 'attention_types'");
  }
  if (kinds.size() != size_t(n_layers))
    cfg.fail(fmt::format("attention types name {} layers, 'num_layers' is {}", kinds.size(), n_layers));
  std::vector<AttentionKind> result;
  for (const auto& k : kinds) {
    if (k == "global") result.push_back(AttentionKind::causal);
    else if (k == "local") result.push_back(AttentionKind::local);
    else cfg.fail(fmt::format("unknown attention type '{}' (expected global or local)", brief_text(k)));
  }
  return result;
}

class GptNeoAdapter final : public Adapter {
 public:
  static int score(const std::filesystem::path& model) { return peek_model_type(model) == "gpt_neo" ? 100 : 0; }

  std::unique_ptr<Model> load(const std::filesystem::path& dir, const LoadOptions& options) const override {
    const HfConfig cfg(dir);
    cfg.warn_unknown_keys({"activation_function", "attention_layers", "attention_types", "hidden_size",
                           "intermediate_size", "layer_norm_epsilon", "max_position_embeddings", "num_heads",
                           "num_layers", "vocab_size", "window_size"});
    ModelInfo info;
    info.adapter = "gpt_neo";
    info.architecture = "GPTNeoForCausalLM";
    info.path = dir.string();
    info.n_layers = int(cfg.integer("num_layers"));
    info.n_heads = info.n_kv_heads = int(cfg.integer("num_heads"));
    info.d_model = int(cfg.integer("hidden_size"));
    if (info.d_model % info.n_heads) cfg.fail("'hidden_size' is not a multiple of 'num_heads'");
    info.d_head = info.d_model / info.n_heads;
    info.d_mlp = int(cfg.integer("intermediate_size", 4 * info.d_model));
    info.vocab_size = cfg.integer("vocab_size");
    info.n_ctx = cfg.integer("max_position_embeddings");
    info.window_size = int(cfg.integer("window_size", 256));
    info.layer_attention = attention_layers(cfg, info.n_layers);
    info.bos_id = cfg.optional_id("bos_token_id");
    info.eos_id = cfg.optional_id("eos_token_id");

    TransformerSpec spec;
    spec.norm_eps = cfg.number("layer_norm_epsilon", 1e-5);
    const std::string activation = cfg.string("activation_function", "gelu_new");
    if (auto a = parse_activation(activation)) spec.activation = *a;
    else cfg.fail(fmt::format("activation_function '{}' is not supported", brief_text(activation)));
    spec.attn_scale = 1.0;  // GPT-Neo does not scale attention scores

    TensorMap tensors = load_model_weights(dir, options);
    const std::string what = dir.string();
    const std::string p = tensors.count("transformer.wte.weight") ? "transformer." : "";
    const std::int64_t D = info.d_model, F = info.d_mlp, V = info.vocab_size;
    auto take = [&](const std::string& name, std::vector<std::int64_t> shape) {
      return take_weight(tensors, p + name, std::move(shape), what);
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
      lw.W_q = take(b + "attn.attention.q_proj.weight", {D, D});
      lw.W_k = take(b + "attn.attention.k_proj.weight", {D, D});
      lw.W_v = take(b + "attn.attention.v_proj.weight", {D, D});
      lw.W_o = take(b + "attn.attention.out_proj.weight", {D, D});
      lw.b_o = take(b + "attn.attention.out_proj.bias", {D});
      lw.ln2_w = take(b + "ln_2.weight", {D});
      lw.ln2_b = take(b + "ln_2.bias", {D});
      lw.W_in = take(b + "mlp.c_fc.weight", {F, D});
      lw.b_in = take(b + "mlp.c_fc.bias", {F});
      lw.W_out = take(b + "mlp.c_proj.weight", {D, F});
      lw.b_out = take(b + "mlp.c_proj.bias", {D});
      // Causal-mask buffers that older transformers versions saved with the weights.
      tensors.erase(p + b + "attn.attention.bias");
      tensors.erase(p + b + "attn.attention.masked_bias");
      w.layers.push_back(std::move(lw));
    }
    w.lnf_w = take("ln_f.weight", {D});
    w.lnf_b = take("ln_f.bias", {D});
    // The LM head is tied to the embedding (Hugging Face ties it even when the file has a copy).
    if (cfg.has("tie_word_embeddings") && !cfg.json()["tie_word_embeddings"].is_boolean())
      cfg.fail("'tie_word_embeddings' must be true or false");
    if (cfg.json().value("tie_word_embeddings", true)) {
      tensors.erase("lm_head.weight");
      w.unembed = w.embed;
    } else {
      w.unembed = take_weight(tensors, "lm_head.weight", {V, D}, what);
    }
    check_all_weights_used(tensors, what);
    return make_transformer(std::move(info), spec, std::move(w), load_model_tokenizer(dir, options), options);
  }
};

}  // namespace
}  // namespace hooklens

HOOKLENS_DEFINE_PLUGIN(hooklens::Adapter, hooklens::GptNeoAdapter, "adapter", "gpt_neo", "1.0",
                       "GPT-Neo (TinyStories, gpt-neo-125M) from a Hugging Face directory")

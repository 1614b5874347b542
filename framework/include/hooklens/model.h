// A running model as the framework sees it, whatever its architecture. Adapters implement Model.
#pragma once
#include <hooklens/hooks.h>
#include <hooklens/json_read.h>  // read_json_file, which model code has always reached through here
#include <hooklens/tensor_map.h>
#include <hooklens/tokenizer.h>

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <iosfwd>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace hooklens {

class PluginRegistry;

enum class AttentionKind { causal, local, bidirectional };
const char* attention_kind_name(AttentionKind kind);
std::ostream& operator<<(std::ostream& out, AttentionKind kind);

struct ModelInfo {
  std::string adapter;        // plugin name, e.g. "gpt_neo"
  std::string architecture;   // e.g. "GPTNeoForCausalLM"
  std::string path;           // the model directory or file
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int d_model = 0;
  int d_head = 0;
  int d_mlp = 0;
  std::int64_t vocab_size = 0;
  std::int64_t n_ctx = 0;     // longest sequence the model accepts
  std::vector<AttentionKind> layer_attention;  // one per layer
  int window_size = 0;        // for local layers
  std::optional<std::int64_t> bos_id, eos_id, mask_id;
  std::string weight_dtype = "F32";  // as stored on disk; compute is float32

  nlohmann::json to_json() const;
  static ModelInfo from_json(const nlohmann::json& j);  // throws Error on a malformed object
};

struct HookPointInfo {
  std::string name;               // e.g. "blocks.0.attn.hook_pattern"
  std::vector<std::string> dims;  // e.g. {"batch", "head", "query", "key"}
  int layer = -1;
};

// How listings and messages show a point: a per-layer one as "blocks.{L}.SUFFIX".
std::string listed_name(const HookPointInfo& point);
// Each listed name once, in the model's order, of the points `keep` accepts (all without it).
std::vector<std::string> listed_names(const std::vector<HookPointInfo>& points,
                                      const std::function<bool(const HookPointInfo&)>& keep = {});

// Per-sequence state kept between forward passes (the KV cache).
class ModelState {
 public:
  virtual ~ModelState() = default;
  virtual std::int64_t length() const = 0;  // positions already consumed
};

// Which logits a forward pass must return. Hooks see what they ask for regardless: hook_logits
// fires over every position whenever someone listens.
enum class Logits {
  all,   // [batch, positions, vocab]
  last,  // [batch, 1, vocab]: generation needs the last position only
  // None: the caller reads hooks only (capture). The model may skip the unembedding and, without a
  // KV cache, every layer after the last one a hook listens to (TransformerLens' stop_at_layer);
  // the result is undefined unless hook_logits made the model compute the logits anyway.
  none,
};

class Model {
 public:
  virtual ~Model() = default;
  virtual const ModelInfo& info() const = 0;
  virtual std::vector<HookPointInfo> hook_points() const = 0;
  virtual const Tokenizer* tokenizer() const = 0;  // null when the model ships none
  // A fresh KV cache, or null if the model has none (every forward then recomputes everything).
  virtual std::unique_ptr<ModelState> new_state() const = 0;
  // ids: int64 [batch, positions]. With `state`, the positions follow those already cached and
  // the state is extended; `ctx.query_offset` is set by the model. Returns float32 logits as
  // `logits` says. Fires hook points through `hooks` with `ctx` (layer filled in). Throws
  // UsageError for ids outside the vocabulary or past n_ctx.
  virtual at::Tensor forward(const at::Tensor& ids, const HookSet& hooks, CaptureContext ctx,
                             ModelState* state, Logits logits = Logits::all) = 0;

  // The logit lens: the model's final norm and unembedding (with its bias), exactly as forward()
  // applies them, on a residual stream x, float32 [..., d_model] -> logits [..., vocab]; so the
  // final hook_resid_post gives the model's logits.
  // With `norm_from` (a residual stream broadcastable to x): the linear part of that map for direct
  // logit attribution, the norm's scale frozen at norm_from's: LayerNorm (x - mean(x)) /
  // sqrt(var(norm_from) + eps) * gamma, RMSNorm x / sqrt(mean(norm_from^2) + eps) * gamma, then
  // W_U, without the norm's bias and the unembedding's. The parts of a final residual x_final then
  // give terms that sum to logits - unembed(0) (unembed(0) = beta W_U + b_U).
  // Models that cannot (TorchScript) throw UsageError.
  virtual at::Tensor unembed(const at::Tensor& x, const at::Tensor& norm_from = {}) const;
};

struct LoadOptions {
  std::filesystem::path tokenizer;  // overrides the tokenizer found beside the model
  std::string spec;  // architecture spec of a state dict: a JSON file or a shipped spec's name (docs/architecture-spec.md)
  // Weights are memory-mapped as stored. When all weight matrices take at most this many bytes as
  // float32, they are converted once (first forward pass) and kept: fastest. Larger models stream:
  // float32 matrices are used in place, BF16/F16 ones converted chunk by chunk just before use.
  std::uint64_t resident_weights_bytes = std::uint64_t(1) << 30;
  // Streaming converts BF16/F16 matrices in row chunks of about this many float32 bytes: large
  // enough for full-speed matrix products, small enough to stay in cache (32 MiB measured best
  // here: within 15 % of float32 weights at 2 threads, on par at 1).
  std::uint64_t conversion_chunk_bytes = std::uint64_t(32) << 20;
  // The model's tensors, given instead of read from its directory's weight files (adapters get
  // them through load_model_weights). Training hands in its parameters this way, so that what it
  // trains is what the adapter makes of them: the adapter's names, ties and shape checks, and the
  // framework's forward pass. Shared, not copied: in-place updates to these tensors are what the
  // model computes with (with resident_weights_bytes = 0, so that no converted copy is made).
  std::shared_ptr<const TensorMap> weights;
};

// What an adapter plugin creates: loads the models it reads.
//
// Each adapter class also has `static int score(const std::filesystem::path& model)` (checked at
// compile time by HOOKLENS_DEFINE_PLUGIN), so that choosing an adapter creates only the chosen
// one: how well it reads `model`, judged from the path and a look at the files, never a load.
//   0 (or less)  it does not read it;
//   100          the model names this adapter's own architecture (config.json's model_type);
//   1..99        a generic reader that recognises the format but not the architecture (the
//                custom adapter scores 50), so that a dedicated adapter wins over it.
// The highest score wins; on a tie, the adapter found first (PluginRegistry::plugins() order).
class Adapter {
 public:
  virtual ~Adapter() = default;
  virtual std::unique_ptr<Model> load(const std::filesystem::path& model, const LoadOptions& options) const = 0;
};

// Loads a model through its adapter plugin: the one named (whatever its score), or the one that
// scores it highest (PluginRegistry::adapter_for). The model keeps its plugin library loaded.
// `adapter_used` receives the adapter's name.
std::shared_ptr<Model> open_model(const PluginRegistry& plugins, const std::filesystem::path& model,
                                  const std::string& adapter = {}, const LoadOptions& options = {},
                                  std::string* adapter_used = nullptr);

// The tokenizer for a model: `options.tokenizer` if given (a Hugging Face directory or file, or
// llama2.c's tokenizer.bin), else the Hugging Face tokenizer files in
// `model_dir`, else null (the model then takes token ids only). Malformed files throw Error.
std::unique_ptr<Tokenizer> load_model_tokenizer(const std::filesystem::path& model_dir, const LoadOptions& options);

// The weights for a model: `options.weights` if given, else load_hf_weights(model_dir).
TensorMap load_model_weights(const std::filesystem::path& model_dir, const LoadOptions& options);

}  // namespace hooklens

#include <hooklens/error.h>
#include <hooklens/hook_names.h>
#include <hooklens/transformer.h>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <mutex>

namespace hooklens {
namespace {

using Spec = TransformerSpec;

// Hook point names of one block, built once so the forward pass does no string formatting.
// Indices into LayerNames::all().
constexpr int kPointResidPre = 0, kPointRotK = 5, kPointPattern = 7, kPointZ = 8, kPointResult = 9, kPointResidMid = 11,
              kPointMlpPost = 14, kPointMlpOut = 15, kPointResidPost = 16;

struct LayerNames {
  std::string resid_pre, q, k, v, rot_q, rot_k, scores, pattern, z, result, attn_out, resid_mid;
  std::string mlp_pre, mlp_pre_linear, mlp_post, mlp_out, resid_post;

  explicit LayerNames(int l) {
    namespace hn = hook_names;
    auto n = [l](std::string_view suffix) { return hn::in_layer(l, suffix); };
    resid_pre = n(hn::resid_pre);
    q = n(hn::q);
    k = n(hn::k);
    v = n(hn::v);
    rot_q = n(hn::rot_q);
    rot_k = n(hn::rot_k);
    scores = n(hn::attn_scores);
    pattern = n(hn::pattern);
    z = n(hn::z);
    result = n(hn::result);
    attn_out = n(hn::attn_out);
    resid_mid = n(hn::resid_mid);
    mlp_pre = n(hn::mlp_pre);
    mlp_pre_linear = n(hn::mlp_pre_linear);
    mlp_post = n(hn::mlp_post);
    mlp_out = n(hn::mlp_out);
    resid_post = n(hn::resid_post);
  }
  // Execution order: a layer run up to point i (kPoint*) fires exactly all()[0..i].
  std::array<const std::string*, 17> all() const {
    return {&resid_pre, &q,      &k,        &v,         &rot_q,   &rot_k,          &scores,   &pattern, &z,
            &result,    &attn_out, &resid_mid, &mlp_pre, &mlp_pre_linear, &mlp_post, &mlp_out, &resid_post};
  }
};

// The KV cache: per layer, keys and values after positional rotation, [batch, kv_heads, capacity,
// d_head]; the first `len` positions are valid. Capacity doubles so appending is amortised O(1).
class KvCache final : public ModelState {
 public:
  explicit KvCache(size_t n_layers) : k_(n_layers), v_(n_layers) {}
  std::int64_t length() const override { return len_; }

  // Appends this forward's keys/values for `layer`; returns views over every cached position.
  std::pair<at::Tensor, at::Tensor> append(size_t layer, const at::Tensor& k, const at::Tensor& v) {
    return {append_one(k_[layer], k), append_one(v_[layer], v)};
  }
  void advance(std::int64_t n) { len_ += n; }

 private:
  at::Tensor append_one(at::Tensor& buffer, const at::Tensor& x) {
    const std::int64_t needed = len_ + x.size(2);
    if (!buffer.defined() || buffer.size(2) < needed) {
      const std::int64_t capacity = std::max<std::int64_t>(needed, buffer.defined() ? 2 * buffer.size(2) : 64);
      at::Tensor grown = at::empty({x.size(0), x.size(1), capacity, x.size(3)}, x.options());
      if (len_ > 0) grown.narrow(2, 0, len_).copy_(buffer.narrow(2, 0, len_));
      buffer = grown;
    }
    buffer.narrow(2, len_, x.size(2)).copy_(x);
    return buffer.narrow(2, 0, needed);
  }

  std::vector<at::Tensor> k_, v_;
  std::int64_t len_ = 0;
};

// Weight matrices [out, in] are kept as the checkpoint stores them (often views of a memory-mapped
// file). A float32 matrix is used in place. Any other dtype is converted to float32 one row chunk
// at a time (LoadOptions::conversion_chunk_bytes), right before that chunk's product: no float32
// copy of a whole matrix (let alone the model) ever exists, and the chunk is still in cache when
// the product reads it. There is no fast BF16 GEMM on this CPU, so compute stays float32.
// Up to this many rows (a decode step's one new token, or two) are multiplied as matrix-vector
// products: addmm packs the whole weight matrix on every call, which made the one-row products of
// a decode step 2-6x slower than gemv (a 50257x768 unembedding: 27 ms as addmm, 12 ms as addmv at
// one thread). From four rows on, the packed product wins.
constexpr std::int64_t kMatrixVectorRows = 2;

// out[r] = W x[r] (+ b) for each row r of x2: W is [out, in] float32, out rows contiguous.
void rows_times_matrix(const at::Tensor& x2, const at::Tensor& W, const at::Tensor& b, at::Tensor& out) {
  for (std::int64_t r = 0; r < x2.size(0); ++r) {
    at::Tensor row = out.select(0, r);
    if (b.defined()) at::addmv_out(row, b, W, x2.select(0, r));
    else at::mv_out(row, W, x2.select(0, r));
  }
}

// Computes y = x Wᵀ + b for W [out, in] in any floating dtype; x is float32 [..., in].
at::Tensor linear_any_dtype(const at::Tensor& x, const at::Tensor& W, const at::Tensor& b, std::uint64_t chunk_bytes) {
  const std::int64_t out_features = W.size(0), in_features = W.size(1);
  const at::Tensor x2 = x.reshape({-1, in_features});
  const bool few_rows = x2.size(0) <= kMatrixVectorRows;
  std::vector<std::int64_t> shape = x.sizes().vec();
  shape.back() = out_features;
  if (W.scalar_type() == at::kFloat && !few_rows) return b.defined() ? at::linear(x, W, b) : at::linear(x, W);
  at::Tensor y = at::empty({x2.size(0), out_features}, x.options());
  if (W.scalar_type() == at::kFloat) {
    rows_times_matrix(x2, W, b, y);
    return y.view(shape);
  }
  const std::uint64_t row_bytes = 4 * std::uint64_t(std::max<std::int64_t>(in_features, 1));
  const std::int64_t rows = std::clamp<std::int64_t>(std::int64_t(std::min<std::uint64_t>(chunk_bytes / row_bytes, INT64_MAX)),
                                                     1, std::max<std::int64_t>(out_features, 1));
  at::Tensor buffer = at::empty({rows, in_features}, x.options());
  for (std::int64_t r = 0; r < out_features; r += rows) {
    const std::int64_t n = std::min(rows, out_features - r);
    at::Tensor chunk = buffer.narrow(0, 0, n);
    chunk.copy_(W.narrow(0, r, n));
    at::Tensor out = y.narrow(1, r, n);  // a column block: BLAS writes it in place (ldc = out_features)
    if (few_rows) rows_times_matrix(x2, chunk, {}, out);
    else at::mm_out(out, x2, chunk.t());
  }
  if (b.defined()) y.add_(b);
  return y.view(shape);
}

// Rows `ids` of an embedding table stored in any floating dtype, as float32.
at::Tensor embedding_rows(const at::Tensor& table, const at::Tensor& ids) {
  at::Tensor rows = at::embedding(table, ids);
  return rows.scalar_type() == at::kFloat ? rows : rows.to(at::kFloat);
}

struct Layer {
  LayerWeights w;
  at::Tensor W_qkv, b_qkv;  // resident weights only: q, k and v fused into one matmul
  AttentionKind attention;
  LayerNames names;
};

class HookedTransformer final : public Model {
 public:
  HookedTransformer(ModelInfo info, Spec spec, TransformerWeights weights, std::unique_ptr<Tokenizer> tokenizer,
                    const LoadOptions& options);

  const ModelInfo& info() const override { return info_; }
  const Tokenizer* tokenizer() const override { return tokenizer_.get(); }
  std::unique_ptr<ModelState> new_state() const override { return std::make_unique<KvCache>(layers_.size()); }
  std::vector<HookPointInfo> hook_points() const override;
  at::Tensor forward(const at::Tensor& ids, const HookSet& hooks, CaptureContext ctx, ModelState* state,
                     Logits wanted) override;
  at::Tensor unembed(const at::Tensor& x, const at::Tensor& norm_from) const override;

 private:
  at::Tensor norm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) const;
  at::Tensor activation(const at::Tensor& x) const;
  at::Tensor linear(const at::Tensor& x, const at::Tensor& W, const at::Tensor& b = {}) const {
    return linear_any_dtype(x, W, b, chunk_bytes_);
  }
  bool uses_rope() const {
    return spec_.positions == Spec::Positions::rope_neox || spec_.positions == Spec::Positions::rope_interleaved;
  }
  at::Tensor rotate(const at::Tensor& x, std::int64_t offset) const;  // RoPE on [batch, pos, head, d_head]
  at::Tensor allowed_keys(AttentionKind kind, std::int64_t offset, std::int64_t queries, std::int64_t keys) const;
  // Runs one layer up to and including its hook point `last_point` (LayerNames::all() order); a
  // layer cut short returns an undefined tensor.
  at::Tensor block(Layer& layer, size_t index, at::Tensor x, const HookSet& hooks, const CaptureContext& ctx,
                   KvCache* cache, int last_point = kPointResidPost) const;

  void make_resident();
  // The resident conversion, once, from forward() or unembed() (which may come first, or from
  // another thread): both read the matrices it replaces.
  void ensure_resident() const {
    if (resident_) std::call_once(resident_once_, [this] { const_cast<HookedTransformer*>(this)->make_resident(); });
  }
  struct ObservedPoint {
    int layer = -1, point = -1;  // -1: nothing observed
  };
  ObservedPoint last_observed_point(const HookSet& hooks, CaptureContext ctx) const;

  ModelInfo info_;
  Spec spec_;
  TransformerWeights w_;
  std::vector<Layer> layers_;
  std::unique_ptr<Tokenizer> tokenizer_;
  at::Tensor rope_inv_freq_;
  bool resident_ = false;  // small enough to convert every matrix to float32 once and keep it
  mutable std::once_flag resident_once_;
  std::uint64_t chunk_bytes_;  // streaming conversion chunk (LoadOptions::conversion_chunk_bytes)
};

// Checks a weight's shape and dtype. Vectors (norms, biases) become float32 here: they are small.
// Matrices stay as stored until used (see linear) or until make_resident.
at::Tensor checked(const at::Tensor& t, std::vector<std::int64_t> shape, const std::string& what, bool required = true) {
  if (!t.defined()) {
    if (required) throw Error(fmt::format("model weights: missing {}", what));
    return t;
  }
  if (t.sizes() != at::IntArrayRef(shape))
    throw Error(fmt::format("model weights: {} has shape [{}], expected [{}]", what, fmt::join(t.sizes(), ", "),
                            fmt::join(shape, ", ")));
  if (!at::isFloatingType(t.scalar_type()))
    throw Error(fmt::format("model weights: {} is {}, not a floating-point tensor", what, c10::toString(t.scalar_type())));
  return shape.size() == 1 ? t.to(at::kFloat).contiguous() : t;
}

// float32 and contiguous: the tensor itself when it already is (no copy of a mapped float32 file).
at::Tensor float32(const at::Tensor& t) { return t.defined() ? t.to(at::kFloat).contiguous() : t; }

std::uint64_t float32_bytes(const at::Tensor& t) { return t.defined() ? std::uint64_t(t.numel()) * 4 : 0; }

HookedTransformer::HookedTransformer(ModelInfo info, Spec spec, TransformerWeights weights,
                                     std::unique_ptr<Tokenizer> tokenizer, const LoadOptions& options)
    : info_(std::move(info)), spec_(spec), w_(std::move(weights)), tokenizer_(std::move(tokenizer)),
      chunk_bytes_(options.conversion_chunk_bytes) {
  const std::int64_t D = info_.d_model, V = info_.vocab_size, F = info_.d_mlp;
  const std::int64_t HQ = std::int64_t(info_.n_heads) * info_.d_head;
  const std::int64_t HKV = std::int64_t(info_.n_kv_heads) * info_.d_head;
  if (info_.n_layers <= 0 || info_.n_heads <= 0 || info_.n_kv_heads <= 0 || info_.n_heads % info_.n_kv_heads ||
      D <= 0 || info_.d_head <= 0 || V <= 0 || F <= 0 || info_.n_ctx <= 0)
    throw Error(fmt::format("{}: inconsistent model shape (layers {}, heads {}, kv heads {}, d_model {}, d_head {})",
                            info_.path, info_.n_layers, info_.n_heads, info_.n_kv_heads, D, info_.d_head));
  if (info_.layer_attention.size() != size_t(info_.n_layers))
    throw Error(fmt::format("{}: {} attention kinds for {} layers", info_.path, info_.layer_attention.size(),
                            info_.n_layers));
  // Hugging Face ignores bos/eos ids the forward pass never sees (real configs have them outside a
  // small trained vocabulary); they are dropped with a warning so nothing can emit or stop on them.
  for (auto [what, id] : {std::pair{"bos", &info_.bos_id}, {"eos", &info_.eos_id}})
    if (*id && *id >= V) {
      warn(fmt::format("{}: the {} token id {} is outside the vocabulary of {}; ignoring it", info_.path, what, **id, V));
      id->reset();
    }
  if (info_.mask_id && *info_.mask_id >= V)  // fed to the model as input: generation could not run
    throw Error(fmt::format("{}: the mask token id {} is outside the vocabulary of {}", info_.path, *info_.mask_id, V));
  if (w_.layers.size() != size_t(info_.n_layers))
    throw Error(fmt::format("{}: weights for {} layers, config says {}", info_.path, w_.layers.size(), info_.n_layers));

  const bool tied = w_.unembed.defined() && w_.unembed.is_same(w_.embed);
  w_.embed = checked(w_.embed, {V, D}, "embedding");
  w_.unembed = tied ? w_.embed : checked(w_.unembed, {V, D}, "unembedding");
  w_.unembed_b = checked(w_.unembed_b, {V}, "unembedding bias", false);
  if (spec_.positions == Spec::Positions::learned) w_.pos_embed = checked(w_.pos_embed, {info_.n_ctx, D}, "position embedding");
  const bool layer_norm = spec_.norm == Spec::Norm::layer_norm;
  w_.lnf_w = checked(w_.lnf_w, {D}, "final norm weight");
  w_.lnf_b = checked(w_.lnf_b, {D}, "final norm bias", false);

  std::uint64_t matrix_bytes = float32_bytes(w_.embed) + (tied ? 0 : float32_bytes(w_.unembed)) + float32_bytes(w_.pos_embed);
  for (int l = 0; l < info_.n_layers; ++l) {
    LayerWeights& lw = w_.layers[l];
    auto what = [l](const char* name) { return fmt::format("layer {} {}", l, name); };
    lw.ln1_w = checked(lw.ln1_w, {D}, what("attention norm weight"));
    lw.ln1_b = checked(lw.ln1_b, {D}, what("attention norm bias"), false);
    lw.ln2_w = checked(lw.ln2_w, {D}, what("mlp norm weight"));
    lw.ln2_b = checked(lw.ln2_b, {D}, what("mlp norm bias"), false);
    lw.W_q = checked(lw.W_q, {HQ, D}, what("W_q"));
    lw.W_k = checked(lw.W_k, {HKV, D}, what("W_k"));
    lw.W_v = checked(lw.W_v, {HKV, D}, what("W_v"));
    lw.b_q = checked(lw.b_q, {HQ}, what("b_q"), false);
    lw.b_k = checked(lw.b_k, {HKV}, what("b_k"), false);
    lw.b_v = checked(lw.b_v, {HKV}, what("b_v"), false);
    lw.W_o = checked(lw.W_o, {D, HQ}, what("W_o"));
    lw.b_o = checked(lw.b_o, {D}, what("b_o"), false);
    lw.W_in = checked(lw.W_in, {F, D}, what("W_in"));
    lw.b_in = checked(lw.b_in, {F}, what("b_in"), false);
    lw.W_gate = checked(lw.W_gate, {F, D}, what("W_gate"), spec_.gated_mlp);
    lw.W_out = checked(lw.W_out, {D, F}, what("W_out"));
    lw.b_out = checked(lw.b_out, {D}, what("b_out"), false);
    if (layer_norm && (!lw.ln1_b.defined() || !lw.ln2_b.defined()))
      throw Error(fmt::format("model weights: layer {} LayerNorm without bias", l));
    for (const at::Tensor* m : {&lw.W_q, &lw.W_k, &lw.W_v, &lw.W_o, &lw.W_in, &lw.W_gate, &lw.W_out})
      matrix_bytes += float32_bytes(*m);
    layers_.push_back(Layer{lw, {}, {}, info_.layer_attention[l], LayerNames(l)});
  }
  resident_ = matrix_bytes <= options.resident_weights_bytes;
  if (uses_rope()) {
    if (info_.d_head % 2) throw Error(fmt::format("{}: RoPE needs an even head size, not {}", info_.path, info_.d_head));
    // As the reference computes it: theta ** (arange(0, d_head, 2) / d_head) in float32.
    at::Tensor exponent = at::arange(0, info_.d_head, 2, at::kFloat) / float(info_.d_head);
    rope_inv_freq_ = 1.0 / at::pow(at::scalar_tensor(spec_.rope_theta, at::kFloat), exponent);
  }
}

// A model whose float32 weights fit the resident limit converts every matrix once (on the first
// forward pass, so that loading and `info` never touch the weights) and fuses q, k and v.
void HookedTransformer::make_resident() {
  const bool tied = w_.unembed.is_same(w_.embed);
  w_.embed = float32(w_.embed);
  w_.unembed = tied ? w_.embed : float32(w_.unembed);
  w_.pos_embed = float32(w_.pos_embed);
  const std::int64_t HQ = std::int64_t(info_.n_heads) * info_.d_head;
  const std::int64_t HKV = std::int64_t(info_.n_kv_heads) * info_.d_head;
  for (Layer& layer : layers_) {
    LayerWeights& lw = layer.w;
    for (at::Tensor* m : {&lw.W_o, &lw.W_in, &lw.W_gate, &lw.W_out}) *m = float32(*m);
    layer.W_qkv = at::cat({lw.W_q.to(at::kFloat), lw.W_k.to(at::kFloat), lw.W_v.to(at::kFloat)}, 0);
    lw.W_q = lw.W_k = lw.W_v = at::Tensor();  // only the fused copy is used
    if (lw.b_q.defined() || lw.b_k.defined() || lw.b_v.defined()) {
      auto or_zero = [](const at::Tensor& b, std::int64_t n) { return b.defined() ? b : at::zeros({n}, at::kFloat); };
      layer.b_qkv = at::cat({or_zero(lw.b_q, HQ), or_zero(lw.b_k, HKV), or_zero(lw.b_v, HKV)}, 0);
    }
  }
}

std::vector<HookPointInfo> HookedTransformer::hook_points() const {
  const std::vector<std::string> resid{"batch", "pos", "d_model"}, heads{"batch", "pos", "head", "d_head"},
      pattern{"batch", "head", "query", "key"}, mlp{"batch", "pos", "d_mlp"};
  std::vector<HookPointInfo> points{{std::string(hook_names::embed), resid, -1}};
  if (spec_.positions == Spec::Positions::learned) points.push_back({std::string(hook_names::pos_embed), resid, -1});
  for (const auto& layer : layers_) {
    const int l = int(&layer - layers_.data());
    const LayerNames& n = layer.names;
    points.push_back({n.resid_pre, resid, l});
    for (const auto* name : {&n.q, &n.k, &n.v}) points.push_back({*name, heads, l});
    if (uses_rope()) {
      points.push_back({n.rot_q, heads, l});
      points.push_back({n.rot_k, heads, l});
    }
    points.push_back({n.scores, pattern, l});
    points.push_back({n.pattern, pattern, l});
    points.push_back({n.z, heads, l});
    points.push_back({n.result, {"batch", "pos", "head", "d_model"}, l});
    points.push_back({n.attn_out, resid, l});
    points.push_back({n.resid_mid, resid, l});
    points.push_back({n.mlp_pre, mlp, l});
    if (spec_.gated_mlp) points.push_back({n.mlp_pre_linear, mlp, l});
    points.push_back({n.mlp_post, mlp, l});
    points.push_back({n.mlp_out, resid, l});
    points.push_back({n.resid_post, resid, l});
  }
  points.push_back({std::string(hook_names::final_norm), resid, -1});
  points.push_back({std::string(hook_names::logits), {"batch", "pos", "vocab"}, -1});
  return points;
}

at::Tensor HookedTransformer::norm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) const {
  if (spec_.norm == Spec::Norm::layer_norm) return at::layer_norm(x, {x.size(-1)}, w, b, spec_.norm_eps);
  at::Tensor normed = x * at::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + spec_.norm_eps);
  normed = normed * w;
  return b.defined() ? normed + b : normed;
}

// The final norm and unembedding as forward() applies them; with `norm_from`, their linear part
// with the norm's scale frozen at norm_from (direct logit attribution), see Model::unembed.
at::Tensor HookedTransformer::unembed(const at::Tensor& x, const at::Tensor& norm_from) const {
  const std::int64_t D = info_.d_model;
  if (!x.defined() || x.dim() < 1 || x.size(-1) != D || x.scalar_type() != at::kFloat)
    throw UsageError(fmt::format("unembed: the residual stream must be float32 [..., {}]", D));
  if (norm_from.defined() && (norm_from.dim() < 1 || norm_from.size(-1) != D || norm_from.scalar_type() != at::kFloat))
    throw UsageError(fmt::format("unembed: norm_from must be a float32 residual stream [..., {}]", D));
  ensure_resident();
  if (!norm_from.defined()) return linear(norm(x, w_.lnf_w, w_.lnf_b), w_.unembed, w_.unembed_b);
  at::Tensor scaled;
  if (spec_.norm == Spec::Norm::layer_norm) {
    const at::Tensor var = norm_from.var(-1, /*unbiased=*/false, /*keepdim=*/true);
    scaled = (x - x.mean(-1, /*keepdim=*/true)) * at::rsqrt(var + spec_.norm_eps);
  } else {
    scaled = x * at::rsqrt(norm_from.pow(2).mean(-1, /*keepdim=*/true) + spec_.norm_eps);
  }
  return linear(scaled * w_.lnf_w, w_.unembed);
}

at::Tensor HookedTransformer::activation(const at::Tensor& x) const {
  switch (spec_.activation) {
    case Spec::Activation::gelu_new: return at::gelu(x, "tanh");
    case Spec::Activation::gelu: return at::gelu(x);
    case Spec::Activation::relu: return at::relu(x);
    case Spec::Activation::silu: return at::silu(x);
  }
  return x;
}

// RoPE at positions offset.. with frequency i for pair i. NeoX "rotate half": dims [0, d/2) pair
// with [d/2, d); interleaved: dims 2i and 2i+1 pair.
at::Tensor HookedTransformer::rotate(const at::Tensor& x, std::int64_t offset) const {
  const std::int64_t T = x.size(1), half = x.size(3) / 2;
  at::Tensor positions = at::arange(offset, offset + T, at::kFloat);
  at::Tensor freqs = at::outer(positions, rope_inv_freq_);
  if (spec_.positions == Spec::Positions::rope_interleaved) {
    at::Tensor angles = freqs.view({1, T, 1, half});
    at::Tensor cos = angles.cos(), sin = angles.sin();
    at::Tensor pairs = x.unflatten(3, {half, 2});
    at::Tensor x0 = pairs.select(4, 0), x1 = pairs.select(4, 1);
    return at::stack({x0 * cos - x1 * sin, x0 * sin + x1 * cos}, -1).flatten(3);
  }
  at::Tensor angles = at::cat({freqs, freqs}, -1).view({1, T, 1, 2 * half});
  at::Tensor rotated_half = at::cat({-x.narrow(3, half, half), x.narrow(3, 0, half)}, -1);
  return x * angles.cos() + rotated_half * angles.sin();
}

// [queries, keys] bool: may query offset+i see key j?
at::Tensor HookedTransformer::allowed_keys(AttentionKind kind, std::int64_t offset, std::int64_t queries,
                                           std::int64_t keys) const {
  at::Tensor q = at::arange(offset, offset + queries, at::kLong).unsqueeze(1);
  at::Tensor k = at::arange(0, keys, at::kLong).unsqueeze(0);
  at::Tensor allowed = k <= q;
  if (kind == AttentionKind::local) allowed = allowed & (k > q - info_.window_size);
  return allowed;
}

at::Tensor HookedTransformer::block(Layer& layer, size_t index, at::Tensor x, const HookSet& hooks,
                                    const CaptureContext& ctx, KvCache* cache, int last_point) const {
  const LayerWeights& w = layer.w;
  const LayerNames& n = layer.names;
  const std::int64_t B = x.size(0), T = x.size(1), H = info_.n_heads, HKV = info_.n_kv_heads, dh = info_.d_head;
  const std::int64_t offset = ctx.query_offset;

  hooks.fire(n.resid_pre, ctx, x);
  if (last_point == kPointResidPre) return {};
  at::Tensor h = norm(x, w.ln1_w, w.ln1_b);
  // A layer cut short at its attention pattern needs no values (capture's usual last layer).
  const bool values_needed = last_point >= kPointZ || hooks.wants(n.v, ctx);
  at::Tensor q, k, v;
  if (layer.W_qkv.defined()) {
    const std::int64_t rows = values_needed ? (H + 2 * HKV) * dh : (H + HKV) * dh;
    at::Tensor qkv = linear(h, layer.W_qkv.narrow(0, 0, rows),
                            layer.b_qkv.defined() ? layer.b_qkv.narrow(0, 0, rows) : at::Tensor());
    q = qkv.narrow(2, 0, H * dh).view({B, T, H, dh});
    k = qkv.narrow(2, H * dh, HKV * dh).view({B, T, HKV, dh});
    if (values_needed) v = qkv.narrow(2, (H + HKV) * dh, HKV * dh).view({B, T, HKV, dh});
  } else {
    q = linear(h, w.W_q, w.b_q).view({B, T, H, dh});
    k = linear(h, w.W_k, w.b_k).view({B, T, HKV, dh});
    if (values_needed) v = linear(h, w.W_v, w.b_v).view({B, T, HKV, dh});
  }
  hooks.fire(n.q, ctx, q);
  hooks.fire(n.k, ctx, k);
  if (values_needed) hooks.fire(n.v, ctx, v);
  if (uses_rope()) {
    q = rotate(q, offset);
    k = rotate(k, offset);
    hooks.fire(n.rot_q, ctx, q);
    hooks.fire(n.rot_k, ctx, k);
  }
  if (last_point <= kPointRotK) return {};
  at::Tensor qh = q.transpose(1, 2), kh = k.transpose(1, 2);  // [B, heads, T, dh]
  at::Tensor vh = values_needed ? v.transpose(1, 2) : at::Tensor();
  if (cache) std::tie(kh, vh) = cache->append(index, kh, vh);
  const std::int64_t S = kh.size(2);
  if (HKV != H) {  // grouped kv heads: query head h reads kv head h / (H / HKV)
    kh = kh.repeat_interleave(H / HKV, 1);
    if (values_needed) vh = vh.repeat_interleave(H / HKV, 1);
  }
  at::Tensor scores = at::matmul(qh, kh.transpose(2, 3));
  if (spec_.attn_scale != 1.0) scores = scores * spec_.attn_scale;
  if (layer.attention != AttentionKind::bidirectional)
    scores = scores.masked_fill(allowed_keys(layer.attention, offset, T, S).logical_not(),
                                -std::numeric_limits<float>::infinity());
  hooks.fire(n.scores, ctx, scores);
  at::Tensor pattern = at::softmax(scores, -1);
  hooks.fire(n.pattern, ctx, pattern);
  if (last_point <= kPointPattern) return {};
  at::Tensor z = at::matmul(pattern, vh).transpose(1, 2);  // [B, T, H, dh]
  hooks.fire(n.z, ctx, z);
  if (last_point <= kPointZ) return {};
  at::Tensor attn_out;
  if (hooks.wants(n.result, ctx)) {
    // Per head z_h W_O_hᵀ: W_o [d_model, heads*d_head] read as [d_model, heads, d_head].
    const at::Tensor W_o = w.W_o.to(at::kFloat).reshape({info_.d_model, H, dh});
    at::Tensor result = at::einsum("bthd,mhd->bthm", {z, W_o});
    hooks.fire(n.result, ctx, result);
    if (last_point <= kPointResult) return {};
    attn_out = result.sum(2);
    if (w.b_o.defined()) attn_out = attn_out + w.b_o;
  } else {
    attn_out = linear(z.reshape({B, T, H * dh}), w.W_o, w.b_o);
  }
  hooks.fire(n.attn_out, ctx, attn_out);
  x = x + attn_out;
  hooks.fire(n.resid_mid, ctx, x);
  if (last_point <= kPointResidMid) return {};

  h = norm(x, w.ln2_w, w.ln2_b);
  at::Tensor pre = linear(h, spec_.gated_mlp ? w.W_gate : w.W_in, spec_.gated_mlp ? at::Tensor() : w.b_in);
  hooks.fire(n.mlp_pre, ctx, pre);
  at::Tensor post = activation(pre);
  if (spec_.gated_mlp) {
    at::Tensor up = linear(h, w.W_in, w.b_in);
    hooks.fire(n.mlp_pre_linear, ctx, up);
    post = post * up;
  }
  hooks.fire(n.mlp_post, ctx, post);
  if (last_point <= kPointMlpPost) return {};
  at::Tensor mlp_out = linear(post, w.W_out, w.b_out);
  hooks.fire(n.mlp_out, ctx, mlp_out);
  if (last_point <= kPointMlpOut) return {};
  x = x + mlp_out;
  hooks.fire(n.resid_post, ctx, x);
  return x;
}

// The last hook point of any layer that someone listens to in this context.
HookedTransformer::ObservedPoint HookedTransformer::last_observed_point(const HookSet& hooks,
                                                                        CaptureContext ctx) const {
  for (int l = int(layers_.size()) - 1; l >= 0; --l) {
    ctx.layer = l;
    const auto names = layers_[size_t(l)].names.all();
    for (int p = int(names.size()) - 1; p >= 0; --p)
      if (hooks.wants(*names[size_t(p)], ctx)) return {l, p};
  }
  return {};
}

at::Tensor HookedTransformer::forward(const at::Tensor& ids, const HookSet& hooks, CaptureContext ctx,
                                      ModelState* state, Logits wanted) {
  auto* cache = dynamic_cast<KvCache*>(state);
  if (state && !cache) throw Error("forward: the state was not made by this model");
  if (ids.dim() != 2 || ids.scalar_type() != at::kLong || ids.size(1) == 0)
    throw UsageError("forward: ids must be a non-empty int64 tensor [batch, positions]");
  const std::int64_t offset = cache ? cache->length() : 0, T = ids.size(1);
  if (offset + T > info_.n_ctx)
    throw UsageError(fmt::format("sequence of {} tokens is longer than the model's context of {} tokens",
                                 offset + T, info_.n_ctx));
  if (ids.min().item<std::int64_t>() < 0 || ids.max().item<std::int64_t>() >= info_.vocab_size)
    throw UsageError(fmt::format("token ids must lie in [0, {})", info_.vocab_size));

  ensure_resident();
  ctx.query_offset = offset;
  ctx.layer = -1;
  // Compute only what is asked: logits when the caller or a hook wants them, the final norm when
  // they or its hook need it, and without a KV cache to fill, nothing after the last observed hook
  // point (TransformerLens' stop_at_layer, down to the point within the layer).
  const bool logits_needed = wanted != Logits::none || hooks.wants(hook_names::logits, ctx);
  const bool final_needed = logits_needed || hooks.wants(hook_names::final_norm, ctx);
  ObservedPoint end{int(layers_.size()) - 1, kPointResidPost};
  if (!final_needed && !cache) end = last_observed_point(hooks, ctx);

  at::Tensor x = embedding_rows(w_.embed, ids);
  hooks.fire(hook_names::embed, ctx, x);
  if (spec_.positions == Spec::Positions::learned) {
    at::Tensor pos = w_.pos_embed.narrow(0, offset, T).to(at::kFloat).unsqueeze(0).expand({ids.size(0), T, info_.d_model});
    hooks.fire(hook_names::pos_embed, ctx, pos);
    x = x + pos;
  }
  for (int l = 0; l <= end.layer; ++l) {
    ctx.layer = l;
    x = block(layers_[size_t(l)], size_t(l), x, hooks, ctx, cache, l == end.layer ? end.point : kPointResidPost);
  }
  ctx.layer = -1;
  if (cache) cache->advance(T);
  if (!final_needed) return {};
  x = norm(x, w_.lnf_w, w_.lnf_b);
  hooks.fire(hook_names::final_norm, ctx, x);
  if (!logits_needed) return {};
  // The unembedding is the largest product of a short sequence: only the last position unless the
  // caller or hook_logits wants them all.
  const bool all_positions = wanted != Logits::last || hooks.wants(hook_names::logits, ctx);
  if (!all_positions) x = x.narrow(1, T - 1, 1);
  at::Tensor logits = linear(x, w_.unembed, w_.unembed_b);
  hooks.fire(hook_names::logits, ctx, logits);
  return wanted == Logits::last && all_positions ? logits.narrow(1, T - 1, 1) : logits;
}

}  // namespace

std::optional<TransformerSpec::Activation> parse_activation(std::string_view name) {
  using A = TransformerSpec::Activation;
  if (name == "gelu_new") return A::gelu_new;
  if (name == "gelu") return A::gelu;
  if (name == "relu") return A::relu;
  if (name == "silu") return A::silu;
  return std::nullopt;
}

void check_all_weights_used(const TensorMap& rest, const std::string& what) {
  if (rest.empty()) return;
  std::vector<std::string> names;
  for (const auto& entry : rest) names.push_back(entry.first);
  if (names.size() > 8) names.resize(8), names.push_back("...");
  throw Error(fmt::format("{}: {} unexpected tensor(s) for this architecture: {}", what, rest.size(),
                          fmt::join(names, ", ")));
}

std::unique_ptr<Model> make_transformer(ModelInfo info, TransformerSpec spec, TransformerWeights weights,
                                        std::unique_ptr<Tokenizer> tokenizer, const LoadOptions& options) {
  return std::make_unique<HookedTransformer>(std::move(info), spec, std::move(weights), std::move(tokenizer), options);
}

}  // namespace hooklens

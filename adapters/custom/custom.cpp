// Custom checkpoints that are not Hugging Face directories: llama2.c's `.bin`, TorchScript archives
// (.pt/.pth/.ts, see torchscript.cpp), and PyTorch state dicts of from-scratch GPTs with an
// architecture spec (see state_dict.cpp): .pt/.pth files, .safetensors files, weight index files, or
// directories of those whose config.json names no model_type.
//
// llama2.c (karpathy/llama2.c) writes a LLaMA body: RMSNorm (eps 1e-5), RoPE on interleaved pairs
// (dims 2i, 2i+1) with theta 10000, causal attention scaled by 1/sqrt(head_dim) with grouped kv heads,
// MLP w2(silu(w1 x) * w3 x), no biases. Two float32 layouts are read:
//  - legacy: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative
//    vocab_size means an unshared classifier), then the weights grouped by kind (token embedding,
//    rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final), then optionally the freq_cis tables
//    (ignored: RoPE is recomputed), then wcls when unshared;
//  - "ak42" version 1: a 256-byte header (magic, version, the same 7 int32, a shared-classifier byte),
//    then norms first (rms_att, rms_ffn, rms_final), token embedding, wq, wk, wv, wo, w1, w2, w3, wcls.
// Version 2 (int8 quantised) is refused. Files are assumed little-endian, like the host.
// The tokenizer is llama2.c's tokenizer.bin found beside the checkpoint (see find_tokenizer); without
// one the model loads with no tokenizer and takes token ids only.
#include "state_dict.h"
#include "torchscript.h"

#include <hooklens/error.h>
#include <hooklens/plugin_define.h>
#include <hooklens/text.h>
#include <hooklens/tokenizer.h>
#include <hooklens/transformer.h>
#include <hooklens/weights.h>

#include <ATen/core/Tensor.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>

namespace hooklens {
namespace {

namespace fs = std::filesystem;

constexpr std::uint32_t kMagic = 0x616b3432;  // "ak42" as a little-endian uint32
constexpr std::int64_t kV1HeaderBytes = 256;
constexpr std::int64_t kLegacyHeaderBytes = 7 * 4;

std::int64_t mul(std::int64_t a, std::int64_t b, const fs::path& file) {
  std::int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) throw Error(fmt::format("{}: header sizes overflow", file.string()));
  return r;
}
std::int64_t add(std::int64_t a, std::int64_t b, const fs::path& file) {
  std::int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) throw Error(fmt::format("{}: header sizes overflow", file.string()));
  return r;
}

std::int32_t read_i32(const unsigned char* p) {
  std::int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

struct Header {
  int version = 0;  // 0 legacy, 1 or 2 for "ak42" files
  std::int64_t dim = 0, hidden = 0, layers = 0, heads = 0, kv_heads = 0, vocab = 0, seq_len = 0;
  bool shared = true;      // classifier = token embedding
  bool has_freq = false;   // legacy freq_cis tables present
  std::int64_t header_bytes = 0;
  std::int64_t head_dim() const { return dim / heads; }
  std::int64_t kv_dim() const { return kv_heads * head_dim(); }
};

// Number of floats of the weights shared by both layouts (everything but wcls and freq_cis).
std::int64_t body_floats(const Header& h, const fs::path& file) {
  const std::int64_t D = h.dim, F = h.hidden, L = h.layers, KV = h.kv_dim();
  std::int64_t n = mul(h.vocab, D, file);                                  // token embedding
  n = add(n, mul(L, mul(D, 2, file), file), file);                         // rms_att, rms_ffn
  n = add(n, mul(L, mul(D, add(mul(D, 2, file), mul(KV, 2, file), file), file), file), file);  // wq wo wk wv
  n = add(n, mul(L, mul(F, mul(D, 3, file), file), file), file);           // w1 w2 w3
  return add(n, D, file);                                                  // rms_final
}

// Reads and checks the header against the file size; throws Error naming the file when the file is
// not a llama2.c checkpoint. A version-2 header is returned without the size check (load refuses it).
Header parse_header(const fs::path& file) {
  const std::string name = file.string();
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open", name));
  unsigned char raw[9 * 4 + 1] = {};
  in.read(reinterpret_cast<char*>(raw), sizeof raw);
  const std::int64_t got = in.gcount();
  std::error_code ec;
  const std::int64_t size = std::int64_t(fs::file_size(file, ec));
  if (ec) throw Error(fmt::format("{}: cannot read its size", name));

  Header h;
  const unsigned char* params = raw;
  if (got >= 4 && std::uint32_t(read_i32(raw)) == kMagic) {
    if (got < 9 * 4 + 1) throw Error(fmt::format("{}: truncated llama2.c header", name));
    h.version = read_i32(raw + 4);
    if (h.version == 2) return h;
    if (h.version != 1) throw Error(fmt::format("{}: unknown llama2.c checkpoint version {}", name, h.version));
    params = raw + 8;
    h.header_bytes = kV1HeaderBytes;
  } else {
    if (got < kLegacyHeaderBytes) throw Error(fmt::format("{}: too short for a llama2.c header", name));
    h.header_bytes = kLegacyHeaderBytes;
  }
  h.dim = read_i32(params);
  h.hidden = read_i32(params + 4);
  h.layers = read_i32(params + 8);
  h.heads = read_i32(params + 12);
  h.kv_heads = read_i32(params + 16);
  h.vocab = read_i32(params + 20);
  h.seq_len = read_i32(params + 24);
  if (h.version == 0) {
    h.shared = h.vocab > 0;
    h.vocab = std::abs(h.vocab);
  } else {
    if (params[28] > 1) throw Error(fmt::format("{}: shared-classifier flag is {}, not 0 or 1", name, params[28]));
    h.shared = params[28] == 1;
  }
  if (h.dim <= 0 || h.hidden <= 0 || h.layers <= 0 || h.heads <= 0 || h.kv_heads <= 0 || h.vocab <= 0 ||
      h.seq_len <= 0)
    throw Error(fmt::format("{}: implausible llama2.c header (a size is not positive)", name));
  if (h.dim % h.heads || h.heads % h.kv_heads || h.head_dim() % 2)
    throw Error(fmt::format("{}: header: dim {} / heads {} / kv heads {} do not give an even head size", name, h.dim,
                            h.heads, h.kv_heads));

  // Sizes in bytes; every layout the exporters write must match the file exactly.
  const std::int64_t body = mul(body_floats(h, file), 4, file);
  const std::int64_t wcls = h.shared ? 0 : mul(mul(h.vocab, h.dim, file), 4, file);
  const std::int64_t freq = mul(mul(h.seq_len, h.head_dim(), file), 4, file);  // real and imag, head_dim/2 each
  const std::int64_t base = add(add(h.header_bytes, body, file), wcls, file);
  if (size == base) return h;
  if (h.version == 0 && size == add(base, freq, file)) {
    h.has_freq = true;
    return h;
  }
  throw Error(fmt::format("{}: {} bytes, but its llama2.c header implies {} (or {} with the RoPE tables)", name,
                          size, base, add(base, freq, file)));
}

std::unique_ptr<Tokenizer> read_tokenizer_for(const fs::path& file, std::int64_t vocab) {
  auto tok = read_llama2c_tokenizer(file);
  if (tok->vocab_size() != vocab)
    throw Error(fmt::format("{}: {} tokens, but the model's vocabulary has {}", file.string(), tok->vocab_size(), vocab));
  return tok;
}

// The tokenizer: LoadOptions::tokenizer, else beside the checkpoint `tokenizer.bin`, `tok<V>.bin` or
// `*.tok<V>.bin` (a wrong one is an Error), else the first `tok*.bin` (sorted) that parses with V
// tokens; null when there is none.
std::unique_ptr<Tokenizer> find_tokenizer(const fs::path& checkpoint, std::int64_t vocab, const LoadOptions& options) {
  if (!options.tokenizer.empty()) return read_tokenizer_for(options.tokenizer, vocab);
  const fs::path dir = checkpoint.parent_path().empty() ? fs::path(".") : checkpoint.parent_path();
  const std::string stated = fmt::format("tok{}.bin", vocab);
  for (const std::string& name : {std::string("tokenizer.bin"), stated})
    if (fs::is_regular_file(dir / name)) return read_tokenizer_for(dir / name, vocab);
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (entry.is_regular_file(ec) && !fs::equivalent(entry.path(), checkpoint, ec)) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  for (const auto& f : files)
    if (ends_with(f.filename().string(), "." + stated)) return read_tokenizer_for(f, vocab);
  for (const auto& f : files) {
    const std::string name = f.filename().string();
    if (name.rfind("tok", 0) != 0 || !ends_with(name, ".bin")) continue;
    try {
      auto tok = read_llama2c_tokenizer(f);
      if (tok->vocab_size() == vocab) return tok;
    } catch (const Error&) {  // another file that merely looks like a tokenizer
    }
  }
  return nullptr;
}

// The checkpoint's floats after the header, in one tensor over the memory-mapped file that the
// weights are views of (parse_header checked the file's size against the header).
at::Tensor map_floats(const fs::path& file, const Header& h) {
  const auto mapped = MappedFile::open(file);
  const std::int64_t n = (std::int64_t(mapped->size()) - h.header_bytes) / 4;
  return mapped->tensor(std::uint64_t(h.header_bytes), at::kFloat, {n});
}

// Hands out consecutive arrays of the float payload.
struct Cursor {
  at::Tensor all;
  std::int64_t at = 0;
  at::Tensor next(std::vector<std::int64_t> shape) {
    std::int64_t n = 1;
    for (auto s : shape) n *= s;  // bounded by the checked file size
    at::Tensor t = all.narrow(0, at, n).view(shape);
    at += n;
    return t;
  }
  // [L, ...] split into per-layer views.
  std::vector<at::Tensor> per_layer(std::int64_t L, std::vector<std::int64_t> shape) {
    shape.insert(shape.begin(), L);
    at::Tensor t = next(shape);
    std::vector<at::Tensor> out;
    for (std::int64_t l = 0; l < L; ++l) out.push_back(t.select(0, l));
    return out;
  }
};

TransformerWeights read_weights(const fs::path& file, const Header& h) {
  const std::int64_t D = h.dim, F = h.hidden, L = h.layers, KV = h.kv_dim(), V = h.vocab;
  Cursor c{map_floats(file, h)};
  TransformerWeights w;
  std::vector<at::Tensor> rms_att, rms_ffn, wq, wk, wv, wo, w1, w2, w3;
  if (h.version == 0) {
    w.embed = c.next({V, D});
    rms_att = c.per_layer(L, {D});
    wq = c.per_layer(L, {D, D});
    wk = c.per_layer(L, {KV, D});
    wv = c.per_layer(L, {KV, D});
    wo = c.per_layer(L, {D, D});
    rms_ffn = c.per_layer(L, {D});
    w1 = c.per_layer(L, {F, D});
    w2 = c.per_layer(L, {D, F});
    w3 = c.per_layer(L, {F, D});
    w.lnf_w = c.next({D});
    if (h.has_freq) c.next({h.seq_len, h.head_dim()});  // freq_cis real and imag: recomputed instead
  } else {
    rms_att = c.per_layer(L, {D});
    rms_ffn = c.per_layer(L, {D});
    w.lnf_w = c.next({D});
    w.embed = c.next({V, D});
    wq = c.per_layer(L, {D, D});
    wk = c.per_layer(L, {KV, D});
    wv = c.per_layer(L, {KV, D});
    wo = c.per_layer(L, {D, D});
    w1 = c.per_layer(L, {F, D});
    w2 = c.per_layer(L, {D, F});
    w3 = c.per_layer(L, {F, D});
  }
  w.unembed = h.shared ? w.embed : c.next({V, D});
  for (std::int64_t l = 0; l < L; ++l) {
    LayerWeights lw;
    lw.ln1_w = rms_att[l];
    lw.W_q = wq[l];
    lw.W_k = wk[l];
    lw.W_v = wv[l];
    lw.W_o = wo[l];
    lw.ln2_w = rms_ffn[l];
    lw.W_gate = w1[l];
    lw.W_in = w3[l];
    lw.W_out = w2[l];
    w.layers.push_back(std::move(lw));
  }
  return w;
}

class CustomAdapter final : public Adapter {
 public:
  // A generic reader (model.h): below any adapter that knows the architecture by name.
  static int score(const fs::path& model) {
    constexpr int kGeneric = 50;
    if (is_torchscript(model) || is_state_dict(model) || is_state_dict_in_other_form(model)) return kGeneric;
    std::error_code ec;
    if (model.extension() != ".bin" || !fs::is_regular_file(model, ec)) return 0;
    try {
      parse_header(model);
      return kGeneric;
    } catch (const Error&) {
      return 0;
    }
  }

  std::unique_ptr<Model> load(const fs::path& file, const LoadOptions& options) const override {
    if (is_torchscript(file)) return load_torchscript(file, load_model_tokenizer({}, options));
    // Every other .pt/.pth is taken for a torch.save archive: its reader says why a broken one fails.
    const std::string ext = file.extension().string();
    if (ext == ".pt" || ext == ".pth") return load_state_dict(file, options, load_model_tokenizer({}, options));
    // Also when asked for by name (--adapter custom) for a directory whose config.json names a model_type.
    std::error_code ec;
    if (fs::is_directory(file, ec)) return load_state_dict(file, options, load_model_tokenizer(file, options));
    if (is_state_dict_in_other_form(file)) return load_state_dict(file, options, load_model_tokenizer({}, options));
    if (!options.spec.empty())
      throw UsageError(fmt::format("{}: --spec is for state dicts (.pt/.pth or .safetensors files, weight index files, "
                                   "directories of them), not this file",
                                   file.string()));
    const Header h = parse_header(file);
    if (h.version == 2)
      throw Error(fmt::format("{}: int8-quantised llama2.c checkpoints (version 2) are not supported; export float32 "
                              "(version 0 or 1)",
                              file.string()));
    ModelInfo info;
    info.adapter = "custom";
    info.architecture = "llama2.c";
    info.path = file.string();
    info.n_layers = int(h.layers);
    info.n_heads = int(h.heads);
    info.n_kv_heads = int(h.kv_heads);
    info.d_model = int(h.dim);
    info.d_head = int(h.head_dim());
    info.d_mlp = int(h.hidden);
    info.vocab_size = h.vocab;
    info.n_ctx = h.seq_len;
    info.layer_attention.assign(info.n_layers, AttentionKind::causal);
    info.bos_id = 1;
    info.eos_id = 2;
    TransformerSpec spec;
    spec.norm = TransformerSpec::Norm::rms_norm;
    spec.norm_eps = 1e-5;
    spec.positions = TransformerSpec::Positions::rope_interleaved;
    spec.rope_theta = 10000.0;
    spec.activation = TransformerSpec::Activation::silu;
    spec.gated_mlp = true;
    spec.attn_scale = 1.0 / std::sqrt(double(info.d_head));
    auto tokenizer = find_tokenizer(file, h.vocab, options);
    return make_transformer(std::move(info), spec, read_weights(file, h), std::move(tokenizer), options);
  }
};

}  // namespace
}  // namespace hooklens

HOOKLENS_DEFINE_PLUGIN(hooklens::Adapter, hooklens::CustomAdapter, "adapter", "custom", "1.0",
                       "custom checkpoints: llama2.c .bin files (legacy and version 1 float32), TorchScript archives, "
                       "state dicts (also safetensors and sharded) with an architecture spec")

// PyTorch state dicts of from-scratch GPTs, run through the framework's hooked transformer.
//
// The file has only tensors; an architecture spec (JSON, see docs/architecture-spec.md) says which
// tensor plays which role of TransformerWeights / LayerWeights ("{i}" stands for the layer index),
// and what tensors cannot tell: heads, norm, activation, positions, masking, score scale, and
// whether linear weights are stored [out, in] (nn.Linear) or [in, out] (Conv1D, `x @ W`). The
// spec is validated strictly before the file is read, and every tensor of the file must end up
// mapped, ignored by a glob, or a checked copy of the tied embedding.
#include "state_dict.h"

#include "torchscript.h"

#include <hooklens/error.h>
#include <hooklens/json_read.h>
#include <hooklens/transformer.h>
#include <hooklens/weights.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/zeros.h>
#include <caffe2/serialize/inline_container.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <set>

namespace hooklens {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// ------------------------------------------------------------------ where shipped specs live

// This plugin's directory: shipped specs are found relative to it, in the build and install trees.
fs::path plugin_dir() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&plugin_dir), &info) == 0 || !info.dli_fname) return {};
  std::error_code ec;
  const fs::path lib = fs::canonical(info.dli_fname, ec);
  return ec ? fs::path() : lib.parent_path();
}

std::vector<fs::path> spec_dirs() {
  const fs::path dir = plugin_dir();
  if (dir.empty()) return {};
  std::vector<fs::path> dirs;
  std::error_code ec;
  // build/plugins -> build/share/hooklens/specs; installed: the relative path CMake computed.
  for (const fs::path& d : {dir / ".." / "share" / "hooklens" / "specs", dir / HOOKLENS_SPECS_FROM_PLUGIN_DIR})
    if (fs::is_directory(d, ec)) dirs.push_back(d.lexically_normal());
  return dirs;
}

// A spec reference: an existing file (relative to `base` when relative and `base` is given), else
// the name of a shipped spec; nullopt when neither exists.
std::optional<fs::path> find_spec(const std::string& ref, const fs::path& base) {
  std::error_code ec;
  fs::path file(ref);
  if (file.is_relative() && !base.empty()) file = base / file;
  if (fs::is_regular_file(file, ec)) return file;
  if (ref.empty() || ref.find('/') != std::string::npos || fs::path(ref).extension() == ".json") return std::nullopt;
  for (const fs::path& dir : spec_dirs())
    if (fs::is_regular_file(dir / (ref + ".json"), ec)) return dir / (ref + ".json");
  return std::nullopt;
}

std::string shipped_list() {
  const auto names = shipped_spec_names();
  return names.empty() ? "none found beside the custom plugin" : fmt::format("{}", fmt::join(names, ", "));
}

// ------------------------------------------------------------------ the spec

struct Role {
  const char* name;
  bool per_layer;  // template must hold "{i}"
  bool linear;     // a matrix whose layout the spec states
  bool bias;       // may be listed in "optional"
};
constexpr Role kRoles[] = {
    {"embed", false, false, false},  {"pos_embed", false, false, false}, {"ln1_w", true, false, false},
    {"ln1_b", true, false, true},    {"W_q", true, true, false},         {"b_q", true, false, true},
    {"W_k", true, true, false},      {"b_k", true, false, true},         {"W_v", true, true, false},
    {"b_v", true, false, true},      {"W_qkv", true, true, false},       {"b_qkv", true, false, true},
    {"W_o", true, true, false},      {"b_o", true, false, true},         {"ln2_w", true, false, false},
    {"ln2_b", true, false, true},    {"W_in", true, true, false},        {"b_in", true, false, true},
    {"W_gate", true, true, false},   {"W_out", true, true, false},       {"b_out", true, false, true},
    {"lnf_w", false, false, false},  {"lnf_b", false, false, true},      {"unembed", false, true, false},
    {"unembed_b", false, false, true}};

const Role* find_role(const std::string& name) {
  for (const Role& r : kRoles)
    if (name == r.name) return &r;
  return nullptr;
}

// A positive integer stated in the spec, or read from the checkpoint's own config (dotted path).
struct Count {
  std::int64_t value = 0;
  std::string checkpoint_path;  // e.g. "model_args.n_head"
};

struct ArchSpec {
  std::string file;          // the spec file, for messages
  std::string ref;           // the spec as the user named it (a file or a shipped name)
  std::string architecture;  // ModelInfo::architecture
  TransformerSpec t;
  AttentionKind mask = AttentionKind::causal;
  std::optional<double> scale;  // default 1/sqrt(d_head)
  Count n_heads;
  std::optional<Count> n_ctx;
  std::map<std::string, bool> in_out;  // linear role -> stored [in, out]
  std::map<std::string, std::string> tensors;
  std::set<std::string> optional;
  std::vector<std::string> ignore, tied_aliases;
  std::optional<std::int64_t> bos_id, eos_id;

  bool has(const std::string& role) const { return tensors.count(role) != 0; }
  bool fused() const { return has("W_qkv"); }
  bool tied() const { return tensors.at("unembed") == "tied"; }
};

// Reads the spec JSON with errors naming the file and the key.
class SpecReader {
 public:
  explicit SpecReader(std::string file) : file_(std::move(file)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& message) const {
    throw Error(fmt::format("{}: '{}': {}", file_, brief_text(key), message));
  }

  void only_keys(const json& obj, const std::string& where, const std::set<std::string>& keys) const {
    for (const auto& item : obj.items())
      if (!keys.count(item.key()))
        fail(where.empty() ? item.key() : where + "." + item.key(),
             fmt::format("unknown key (allowed{}: {})", where.empty() ? "" : " in '" + where + "'", fmt::join(keys, ", ")));
  }

  const json& object(const json& parent, const std::string& key) const {
    const json& v = parent.at(key);
    if (!v.is_object()) fail(key, fmt::format("must be a JSON object, not {}", brief_json(v)));
    return v;
  }

  std::string string(const json& v, const std::string& key, const std::set<std::string>& allowed = {}) const {
    if (!v.is_string()) fail(key, fmt::format("must be a string, not {}", brief_json(v)));
    const std::string s = v.get<std::string>();
    if (!allowed.empty() && !allowed.count(s)) fail(key, fmt::format("'{}' is not one of {}", brief_text(s), fmt::join(allowed, ", ")));
    return s;
  }

  double positive_number(const json& v, const std::string& key) const {
    if (!v.is_number() || !(v.get<double>() > 0) || !std::isfinite(v.get<double>()))
      fail(key, fmt::format("must be a positive number, not {}", brief_json(v)));
    return v.get<double>();
  }

  std::int64_t integer(const json& v, const std::string& key, std::int64_t min) const {
    if (!v.is_number_integer() || v.get<std::int64_t>() < min || v.get<std::int64_t>() > INT32_MAX)
      fail(key, fmt::format("must be an integer in [{}, 2^31), not {}", min, brief_json(v)));
    return v.get<std::int64_t>();
  }

  bool boolean(const json& v, const std::string& key) const {
    if (!v.is_boolean()) fail(key, fmt::format("must be true or false, not {}", brief_json(v)));
    return v.get<bool>();
  }

  std::vector<std::string> strings(const json& v, const std::string& key) const {
    if (!v.is_array()) fail(key, fmt::format("must be a list of strings, not {}", brief_json(v)));
    std::vector<std::string> out;
    for (const json& s : v) out.push_back(string(s, key));
    return out;
  }

  Count count(const json& v, const std::string& key) const {
    if (v.is_object()) {
      only_keys(v, key, {"checkpoint"});
      if (!v.contains("checkpoint")) fail(key, "an object here needs \"checkpoint\": \"dotted.path\"");
      return {0, string(v.at("checkpoint"), key + ".checkpoint")};
    }
    return {integer(v, key, 1), {}};
  }

 private:
  std::string file_;
};

// The spec JSON with its "extends" chain merged in (RFC 7386 merge patch over the base spec).
json read_spec_json(const fs::path& file, int depth) {
  json j = read_json_file(file);
  if (!j.is_object()) throw Error(fmt::format("{}: an architecture spec must be a JSON object", file.string()));
  const auto it = j.find("extends");
  if (it == j.end()) return j;
  const SpecReader r(file.string());
  const std::string ref = r.string(*it, "extends");
  if (depth >= 8) r.fail("extends", "chain of more than 8 specs (a cycle?)");
  const auto base_file = find_spec(ref, file.parent_path());
  if (!base_file) r.fail("extends", fmt::format("no spec file or shipped spec '{}' (shipped: {})", brief_text(ref), shipped_list()));
  json base = read_spec_json(*base_file, depth + 1);
  j.erase("extends");
  base.merge_patch(j);
  return base;
}

void read_template(const SpecReader& r, ArchSpec& spec, const std::string& role_name, const json& v) {
  const std::string key = "tensors." + role_name;
  const Role* role = find_role(role_name);
  if (!role) {
    std::vector<std::string> names;
    for (const Role& x : kRoles) names.push_back(x.name);
    r.fail(key, fmt::format("unknown role (roles: {})", fmt::join(names, ", ")));
  }
  const std::string t = r.string(v, key);
  if (role_name == "unembed" && t == "tied") {
    spec.tensors[role_name] = t;
    return;
  }
  std::string rest = t;
  for (std::size_t at; (at = rest.find("{i}")) != std::string::npos;) rest.erase(at, 3);
  if (t.empty() || rest.find_first_of("{}") != std::string::npos)
    r.fail(key, fmt::format("'{}' is not a tensor name template (only {{i}} may appear in braces)", brief_text(t)));
  if (role->per_layer != (rest.size() != t.size()))
    r.fail(key, role->per_layer ? fmt::format("'{}' must hold {{i}}, the layer index", brief_text(t))
                                : fmt::format("'{}' is not per layer and must not hold {{i}}", brief_text(t)));
  spec.tensors[role_name] = t;
}

// Which combinations of roles make a model, and which are optional.
void check_roles(const SpecReader& r, const ArchSpec& spec) {
  for (const char* role : {"embed", "ln1_w", "W_o", "ln2_w", "W_in", "W_out", "lnf_w", "unembed"})
    if (!spec.has(role)) r.fail("tensors", fmt::format("role '{}' is required", role));
  const bool separate = spec.has("W_q") || spec.has("W_k") || spec.has("W_v");
  if (spec.fused() == separate)
    r.fail("tensors", "give either 'W_qkv' (one fused tensor) or all of 'W_q', 'W_k', 'W_v'");
  if (separate && !(spec.has("W_q") && spec.has("W_k") && spec.has("W_v")))
    r.fail("tensors", "'W_q', 'W_k' and 'W_v' go together");
  if (spec.fused() && (spec.has("b_q") || spec.has("b_k") || spec.has("b_v")))
    r.fail("tensors", "with a fused 'W_qkv' the bias is 'b_qkv', not 'b_q'/'b_k'/'b_v'");
  if (!spec.fused() && spec.has("b_qkv")) r.fail("tensors.b_qkv", "needs a fused 'W_qkv'");
  const bool learned = spec.t.positions == TransformerSpec::Positions::learned;
  if (learned != spec.has("pos_embed"))
    r.fail("tensors.pos_embed", learned ? "is required with learned positions" : "is only for learned positions");
  if (spec.t.gated_mlp != spec.has("W_gate"))
    r.fail("tensors.W_gate", spec.t.gated_mlp ? "is required with a gated activation" : "needs \"gated\": true");
  for (const std::string& role : spec.optional) {
    const Role* x = find_role(role);
    if (!x || !x->bias) r.fail("optional", fmt::format("'{}' is not a bias role (only biases may be optional)", brief_text(role)));
    if (!spec.has(role)) r.fail("optional", fmt::format("'{}' has no template in 'tensors'", brief_text(role)));
  }
  if (!spec.tied_aliases.empty() && !spec.tied()) r.fail("tied_aliases", "only with \"unembed\": \"tied\"");
}

void read_sections(const SpecReader& r, const json& j, ArchSpec& spec) {
  using P = TransformerSpec::Positions;
  const json& norm = r.object(j, "norm");
  r.only_keys(norm, "norm", {"type", "eps"});
  if (!norm.contains("type")) r.fail("norm.type", "is required (layer or rms)");
  spec.t.norm = r.string(norm.at("type"), "norm.type", {"layer", "rms"}) == "layer" ? TransformerSpec::Norm::layer_norm
                                                                                    : TransformerSpec::Norm::rms_norm;
  spec.t.norm_eps = norm.contains("eps") ? r.positive_number(norm.at("eps"), "norm.eps") : 1e-5;

  const json& act = r.object(j, "activation");
  r.only_keys(act, "activation", {"function", "gated"});
  if (!act.contains("function")) r.fail("activation.function", "is required (gelu, gelu_tanh, relu or silu)");
  const std::string fn = r.string(act.at("function"), "activation.function", {"gelu", "gelu_tanh", "relu", "silu"});
  spec.t.activation = *parse_activation(fn == "gelu_tanh" ? "gelu_new" : fn);
  spec.t.gated_mlp = act.contains("gated") && r.boolean(act.at("gated"), "activation.gated");

  const json& pos = r.object(j, "positions");
  r.only_keys(pos, "positions", {"type", "theta"});
  if (!pos.contains("type")) r.fail("positions.type", "is required (learned, rope_neox, rope_interleaved or none)");
  const std::string type = r.string(pos.at("type"), "positions.type", {"learned", "rope_neox", "rope_interleaved", "none"});
  spec.t.positions = type == "learned" ? P::learned : type == "rope_neox" ? P::rope_neox
                   : type == "rope_interleaved" ? P::rope_interleaved : P::none;
  if (pos.contains("theta")) {
    if (type.rfind("rope", 0) != 0) r.fail("positions.theta", "is only for rope_neox and rope_interleaved");
    spec.t.rope_theta = r.positive_number(pos.at("theta"), "positions.theta");
  }

  if (j.contains("attention")) {
    const json& att = r.object(j, "attention");
    r.only_keys(att, "attention", {"mask", "scale"});
    if (att.contains("mask"))
      spec.mask = r.string(att.at("mask"), "attention.mask", {"causal", "bidirectional"}) == "causal"
                      ? AttentionKind::causal
                      : AttentionKind::bidirectional;
    if (att.contains("scale")) {
      const json& s = att.at("scale");
      if (s.is_string()) r.string(s, "attention.scale", {"inverse_sqrt_d_head"});  // the default, spelt out
      else spec.scale = r.positive_number(s, "attention.scale");
    }
  }
}

// "out_in" / "in_out", or {"default": ..., "<linear role>": ...}.
void read_layout(const SpecReader& r, const json& j, ArchSpec& spec) {
  const std::set<std::string> layouts{"out_in", "in_out"};
  bool fallback = false;
  std::map<std::string, bool> overrides;
  if (j.contains("linear_layout")) {
    const json& v = j.at("linear_layout");
    if (v.is_object()) {
      for (const auto& item : v.items()) {
        const std::string key = "linear_layout." + item.key();
        const bool in_out = r.string(item.value(), key, layouts) == "in_out";
        if (item.key() == "default") {
          fallback = in_out;
        } else {
          const Role* role = find_role(item.key());
          if (!role || !role->linear) r.fail(key, "not a linear-weight role (W_q, W_k, W_v, W_qkv, W_o, W_in, W_gate, W_out, unembed)");
          overrides[item.key()] = in_out;
        }
      }
    } else {
      fallback = r.string(v, "linear_layout", layouts) == "in_out";
    }
  }
  for (const Role& role : kRoles)
    if (role.linear) spec.in_out[role.name] = overrides.count(role.name) ? overrides[role.name] : fallback;
}

ArchSpec parse_spec(const fs::path& file) {
  const json j = read_spec_json(file, 0);
  const SpecReader r(file.string());
  r.only_keys(j, "", {"description", "architecture", "n_heads", "n_ctx", "norm", "activation", "positions",
                      "attention", "linear_layout", "tensors", "optional", "ignore", "tied_aliases", "bos_id",
                      "eos_id"});
  for (const char* key : {"n_heads", "norm", "activation", "positions", "tensors"})
    if (!j.contains(key)) r.fail(key, "is required");
  ArchSpec spec;
  spec.file = file.string();
  spec.architecture = j.contains("architecture") ? r.string(j.at("architecture"), "architecture") : file.stem().string();
  if (j.contains("description")) r.string(j.at("description"), "description");
  spec.n_heads = r.count(j.at("n_heads"), "n_heads");
  if (j.contains("n_ctx")) spec.n_ctx = r.count(j.at("n_ctx"), "n_ctx");
  read_sections(r, j, spec);
  read_layout(r, j, spec);
  for (const auto& item : r.object(j, "tensors").items()) read_template(r, spec, item.key(), item.value());
  if (j.contains("optional"))
    for (const auto& role : r.strings(j.at("optional"), "optional")) spec.optional.insert(role);
  if (j.contains("ignore")) spec.ignore = r.strings(j.at("ignore"), "ignore");
  if (j.contains("tied_aliases")) spec.tied_aliases = r.strings(j.at("tied_aliases"), "tied_aliases");
  if (j.contains("bos_id")) spec.bos_id = r.integer(j.at("bos_id"), "bos_id", 0);
  if (j.contains("eos_id")) spec.eos_id = r.integer(j.at("eos_id"), "eos_id", 0);
  check_roles(r, spec);
  return spec;
}

// ------------------------------------------------------------------ mapping tensors

// Glob over dotted names: '*' matches within one component (no '.'), '**' matches anything.
bool glob_match(const char* pattern, const char* name) {
  if (*pattern == '\0') return *name == '\0';
  if (pattern[0] == '*' && pattern[1] == '*') {
    for (const char* n = name;; ++n) {
      if (glob_match(pattern + 2, n)) return true;
      if (*n == '\0') return false;
    }
  }
  if (*pattern == '*') {
    for (const char* n = name;; ++n) {
      if (glob_match(pattern + 1, n)) return true;
      if (*n == '\0' || *n == '.') return false;
    }
  }
  return *name != '\0' && *pattern == *name && glob_match(pattern + 1, name + 1);
}

// torch.compile wraps the model: its state dict names start with "_orig_mod.".
void strip_compile_prefix(TensorMap& tensors, const std::string& what) {
  const std::string prefix = "_orig_mod.";
  TensorMap out;
  for (auto& [name, t] : tensors) {
    const std::string key = name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : name;
    if (!out.emplace(key, std::move(t)).second)
      throw Error(fmt::format("{}: both '{}' and '{}{}' are present", what, key, prefix, key));
  }
  tensors = std::move(out);
}

// Takes the tensors the spec names out of the state dict, in the framework's [out, in] layout.
class Mapper {
 public:
  Mapper(TensorMap& tensors, const ArchSpec& spec, std::string what)
      : tensors_(tensors), spec_(spec), what_(std::move(what)) {}

  const std::string& what() const { return what_; }

  std::string name(const std::string& role, int layer = -1) const {
    std::string t = spec_.tensors.at(role);
    for (std::size_t at; (at = t.find("{i}")) != std::string::npos;) t.replace(at, 3, std::to_string(layer));
    return t;
  }

  bool present(const std::string& role, int layer = -1) const {
    return spec_.has(role) && tensors_.count(name(role, layer)) != 0;
  }

  // The shape of a required tensor as the framework sees it ([out, in] for linear weights).
  std::vector<std::int64_t> shape(const std::string& role, int layer = -1) const {
    const std::string n = name(role, layer);
    const auto it = tensors_.find(n);
    if (it == tensors_.end()) missing(role, n);
    std::vector<std::int64_t> s(it->second.sizes().begin(), it->second.sizes().end());
    if (s.size() != 2 && (find_role(role)->linear || role == "embed" || role == "pos_embed"))
      throw Error(fmt::format("{}: tensor '{}' (role {}) has shape [{}], expected a matrix", what_, brief_text(n), role,
                              fmt::join(s, ", ")));
    if (transposed(role)) std::swap(s[0], s[1]);
    return s;
  }

  at::Tensor take(const std::string& role, int layer, std::vector<std::int64_t> shape) {
    const std::string n = name(role, layer);
    if (!tensors_.count(n)) missing(role, n);
    if (!transposed(role)) return take_weight(tensors_, n, std::move(shape), what_);
    std::swap(shape[0], shape[1]);
    return take_weight(tensors_, n, std::move(shape), what_).t();
  }

  // A bias role: undefined when the spec has none, or when it is optional and absent (for every
  // layer alike: decided at the first call, layer 0, and a stray later one is left over and reported).
  at::Tensor take_bias(const std::string& role, int layer, std::int64_t size) {
    if (!spec_.has(role)) return {};
    const auto [it, first] = optional_present_.try_emplace(role, true);
    if (first && spec_.optional.count(role)) it->second = present(role, layer);
    return it->second ? take(role, layer, {size}) : at::Tensor();
  }

 private:
  bool transposed(const std::string& role) const {
    const auto it = spec_.in_out.find(role);
    return it != spec_.in_out.end() && it->second;
  }
  [[noreturn]] void missing(const std::string& role, const std::string& n) const {
    throw Error(fmt::format("{}: no tensor '{}', which spec {} names for role '{}'", what_, brief_text(n), spec_.file,
                            role));
  }

  TensorMap& tensors_;
  const ArchSpec& spec_;
  std::string what_;
  std::map<std::string, bool> optional_present_;  // bias role -> taken for every layer
};

std::int64_t resolve_count(const Count& c, const char* key, const ArchSpec& spec, const json& plain,
                           const std::string& file) {
  if (c.checkpoint_path.empty()) return c.value;
  const std::string& path = c.checkpoint_path;
  const json* v = &plain;
  for (std::size_t start = 0; v;) {
    const std::size_t dot = path.find('.', start);
    const std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    v = v->is_object() && v->contains(part) ? &v->at(part) : nullptr;
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  if (!v || !v->is_number_integer() || v->get<std::int64_t>() <= 0 || v->get<std::int64_t>() > INT32_MAX)
    throw Error(fmt::format("{}: spec {} reads '{}' from '{}' of the checkpoint, which has no positive integer there; "
                            "give it in a spec of your own: {{\"extends\": \"{}\", \"{}\": N}}",
                            file, spec.file, key, brief_text(path), brief_text(spec.ref), key));
  return v->get<std::int64_t>();
}

struct Dims {
  std::int64_t V = 0, D = 0, HQ = 0, HKV = 0, F = 0, n_ctx = 0;
  int n_heads = 0, n_kv_heads = 0, d_head = 0, layers = 0;
};

Dims read_dims(const Mapper& m, const ArchSpec& spec, const json& plain, const std::string& file) {
  Dims d;
  const auto embed = m.shape("embed");
  d.V = embed[0];
  d.D = embed[1];
  while (m.present("W_o", d.layers)) ++d.layers;
  if (d.layers == 0) m.shape("W_o", 0);  // throws: names the tensor that is missing
  if (spec.fused()) {
    const std::int64_t rows = m.shape("W_qkv", 0)[0];
    if (rows % 3)
      throw Error(fmt::format("{}: fused '{}' has {} output rows, not a multiple of 3", m.what(), m.name("W_qkv", 0), rows));
    d.HQ = d.HKV = rows / 3;
  } else {
    d.HQ = m.shape("W_q", 0)[0];
    d.HKV = m.shape("W_k", 0)[0];
  }
  d.F = m.shape("W_in", 0)[0];
  const std::int64_t heads = resolve_count(spec.n_heads, "n_heads", spec, plain, file);
  const std::int64_t d_head = d.HQ > 0 && d.HQ % heads == 0 ? d.HQ / heads : 0;
  if (d_head == 0 || d.HKV <= 0 || d.HKV % d_head || heads % (d.HKV / d_head))
    throw Error(fmt::format("{}: {} query rows and {} key rows do not split into the {} heads of spec {}; give the "
                            "model's count in a spec of your own: {{\"extends\": \"{}\", \"n_heads\": N}}",
                            m.what(), d.HQ, d.HKV, heads, spec.file, spec.ref));
  d.n_heads = int(heads);
  d.d_head = int(d_head);
  d.n_kv_heads = int(d.HKV / d_head);
  if (spec.has("pos_embed")) d.n_ctx = m.shape("pos_embed")[0];
  if (spec.n_ctx) {
    const std::int64_t n = resolve_count(*spec.n_ctx, "n_ctx", spec, plain, file);
    if (d.n_ctx && d.n_ctx != n)
      throw Error(fmt::format("{}: the position embedding has {} rows but spec {} says n_ctx {}", m.what(), d.n_ctx,
                              spec.file, n));
    d.n_ctx = n;
  }
  if (d.n_ctx == 0)
    throw Error(fmt::format("{}: spec {} needs \"n_ctx\" (the context length) without learned positions", file, spec.file));
  return d;
}

// A LayerNorm stored without a bias (nanoGPT's bias=False) is one with a zero bias.
at::Tensor norm_bias(Mapper& m, const ArchSpec& spec, const char* role, int layer, std::int64_t D) {
  at::Tensor b = m.take_bias(role, layer, D);
  if (!b.defined() && spec.t.norm == TransformerSpec::Norm::layer_norm) b = at::zeros({D});
  return b;
}

LayerWeights take_layer(Mapper& m, const ArchSpec& spec, const Dims& d, int l) {
  LayerWeights lw;
  lw.ln1_w = m.take("ln1_w", l, {d.D});
  lw.ln1_b = norm_bias(m, spec, "ln1_b", l, d.D);
  if (spec.fused()) {
    const at::Tensor qkv = m.take("W_qkv", l, {d.HQ + 2 * d.HKV, d.D});
    lw.W_q = qkv.narrow(0, 0, d.HQ);
    lw.W_k = qkv.narrow(0, d.HQ, d.HKV);
    lw.W_v = qkv.narrow(0, d.HQ + d.HKV, d.HKV);
    if (const at::Tensor b = m.take_bias("b_qkv", l, d.HQ + 2 * d.HKV); b.defined()) {
      lw.b_q = b.narrow(0, 0, d.HQ);
      lw.b_k = b.narrow(0, d.HQ, d.HKV);
      lw.b_v = b.narrow(0, d.HQ + d.HKV, d.HKV);
    }
  } else {
    lw.W_q = m.take("W_q", l, {d.HQ, d.D});
    lw.W_k = m.take("W_k", l, {d.HKV, d.D});
    lw.W_v = m.take("W_v", l, {d.HKV, d.D});
    lw.b_q = m.take_bias("b_q", l, d.HQ);
    lw.b_k = m.take_bias("b_k", l, d.HKV);
    lw.b_v = m.take_bias("b_v", l, d.HKV);
  }
  lw.W_o = m.take("W_o", l, {d.D, d.HQ});
  lw.b_o = m.take_bias("b_o", l, d.D);
  lw.ln2_w = m.take("ln2_w", l, {d.D});
  lw.ln2_b = norm_bias(m, spec, "ln2_b", l, d.D);
  lw.W_in = m.take("W_in", l, {d.F, d.D});
  lw.b_in = m.take_bias("b_in", l, d.F);
  if (spec.t.gated_mlp) lw.W_gate = m.take("W_gate", l, {d.F, d.D});
  lw.W_out = m.take("W_out", l, {d.D, d.F});
  lw.b_out = m.take_bias("b_out", l, d.D);
  return lw;
}

// Copies of the tied embedding (nanoGPT's lm_head.weight) must really be copies. torch.save keeps
// tied weights in one storage: then both view the same bytes, and no byte needs reading.
void take_tied_aliases(TensorMap& tensors, const ArchSpec& spec, const at::Tensor& embed, const std::string& what) {
  for (const std::string& alias : spec.tied_aliases) {
    const auto it = tensors.find(alias);
    if (it == tensors.end()) continue;
    const at::Tensor& t = it->second;
    const bool same_bytes = t.scalar_type() == embed.scalar_type() && t.sizes() == embed.sizes() &&
                            t.strides() == embed.strides() && t.data_ptr() == embed.data_ptr();
    if (!same_bytes && (t.sizes() != embed.sizes() || !at::equal(t.to(embed.scalar_type()), embed)))
      throw Error(fmt::format("{}: '{}' differs from the embedding '{}', but spec {} says the unembedding is tied",
                              what, brief_text(alias), brief_text(spec.tensors.at("embed")), spec.file));
    tensors.erase(it);
  }
}

void drop_ignored(TensorMap& tensors, const ArchSpec& spec) {
  for (auto it = tensors.begin(); it != tensors.end();) {
    const bool ignored = std::any_of(spec.ignore.begin(), spec.ignore.end(),
                                     [&](const std::string& g) { return glob_match(g.c_str(), it->first.c_str()); });
    it = ignored ? tensors.erase(it) : std::next(it);
  }
}

}  // namespace

std::vector<std::string> shipped_spec_names() {
  std::set<std::string> names;
  std::error_code ec;
  for (const fs::path& dir : spec_dirs())
    for (const auto& entry : fs::directory_iterator(dir, ec))
      if (entry.path().extension() == ".json") names.insert(entry.path().stem().string());
  return {names.begin(), names.end()};
}

namespace {

bool is_index_file(const fs::path& file) {
  const std::string name = file.filename().string();
  const std::string suffix = ".index.json";
  return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool names_no_model_type(const fs::path& dir) {
  std::error_code ec;
  const fs::path config = dir / "config.json";
  if (!fs::exists(config, ec)) return true;
  try {
    const json j = read_json_file(config);
    return j.is_object() && !j.contains("model_type");
  } catch (const Error&) {
    return false;
  }
}

// The state dict's tensors, in whichever form it is stored (views of the mapped files). `plain` gets
// a torch.save checkpoint's plain values (e.g. nanoGPT's model_args); the other forms have none.
TensorMap read_tensors(const fs::path& model, json& plain) {
  plain = json::object();
  std::error_code ec;
  if (fs::is_directory(model, ec)) return load_hf_weights(model);
  if (is_index_file(model)) return load_weight_index(model);
  if (model.extension() == ".safetensors") return map_safetensors(model);
  return read_pytorch_checkpoint(model, nullptr, &plain);
}

}  // namespace

bool is_state_dict_in_other_form(const fs::path& model) {
  std::error_code ec;
  if (fs::is_regular_file(model, ec)) return model.extension() == ".safetensors" || is_index_file(model);
  if (!fs::is_directory(model, ec) || !names_no_model_type(model)) return false;
  for (const char* file : {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                           "pytorch_model.bin.index.json"})
    if (fs::is_regular_file(model / file, ec)) return true;
  return false;
}

bool is_state_dict(const fs::path& file) {
  const std::string ext = file.extension().string();
  std::error_code ec;
  if ((ext != ".pt" && ext != ".pth") || !fs::is_regular_file(file, ec) || is_torchscript(file)) return false;
  try {
    caffe2::serialize::PyTorchStreamReader zip(file.string());
    return zip.hasRecord("data.pkl");
  } catch (const std::exception&) {  // not a zip archive
    return false;
  }
}

std::unique_ptr<Model> load_state_dict(const fs::path& model, const LoadOptions& options,
                                       std::unique_ptr<Tokenizer> tokenizer) {
  const std::string what = model.string();
  if (options.spec.empty())
    throw UsageError(fmt::format("{}: a PyTorch state dict needs an architecture spec: pass --spec FILE.json or a "
                                 "shipped spec name ({}); see docs/architecture-spec.md",
                                 what, shipped_list()));
  const auto spec_file = find_spec(options.spec, {});
  if (!spec_file)
    throw UsageError(fmt::format("--spec '{}': no such file, nor a shipped spec of that name (shipped: {})",
                                 brief_text(options.spec), shipped_list()));
  ArchSpec spec = parse_spec(*spec_file);
  spec.ref = options.spec;

  json plain;
  TensorMap tensors = read_tensors(model, plain);
  strip_compile_prefix(tensors, what);
  Mapper m(tensors, spec, what);
  const Dims d = read_dims(m, spec, plain, what);

  TransformerWeights w;
  w.embed = m.take("embed", -1, {d.V, d.D});
  if (spec.has("pos_embed")) w.pos_embed = m.take("pos_embed", -1, {d.n_ctx, d.D});
  for (int l = 0; l < d.layers; ++l) w.layers.push_back(take_layer(m, spec, d, l));
  w.lnf_w = m.take("lnf_w", -1, {d.D});
  w.lnf_b = norm_bias(m, spec, "lnf_b", -1, d.D);
  if (spec.tied()) {
    w.unembed = w.embed;
    take_tied_aliases(tensors, spec, w.embed, what);
  } else {
    w.unembed = m.take("unembed", -1, {d.V, d.D});
  }
  w.unembed_b = m.take_bias("unembed_b", -1, d.V);
  drop_ignored(tensors, spec);
  check_all_weights_used(tensors, fmt::format("{} (spec {})", what, spec.file));

  ModelInfo info;
  info.adapter = "custom";
  info.architecture = spec.architecture;
  info.path = what;
  info.n_layers = d.layers;
  info.n_heads = d.n_heads;
  info.n_kv_heads = d.n_kv_heads;
  info.d_model = int(d.D);
  info.d_head = d.d_head;
  info.d_mlp = int(d.F);
  info.vocab_size = d.V;
  info.n_ctx = d.n_ctx;
  info.layer_attention.assign(d.layers, spec.mask);
  info.bos_id = spec.bos_id;
  info.eos_id = spec.eos_id;
  info.weight_dtype = safetensors_dtype_name(w.embed.scalar_type());
  TransformerSpec t = spec.t;
  t.attn_scale = spec.scale ? *spec.scale : 1.0 / std::sqrt(double(d.d_head));

  if (tokenizer && tokenizer->vocab_size() > d.V)
    throw Error(fmt::format("{}: the tokenizer has {} tokens, more than the model's vocabulary of {}",
                            options.tokenizer.string(), tokenizer->vocab_size(), d.V));
  return make_transformer(std::move(info), t, std::move(w), std::move(tokenizer), options);
}

}  // namespace hooklens

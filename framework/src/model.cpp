#include <hooklens/error.h>
#include <hooklens/json_read.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>
#include <hooklens/weights.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <ostream>
#include <set>

namespace hooklens {

const char* attention_kind_name(AttentionKind kind) {
  switch (kind) {
    case AttentionKind::causal: return "causal";
    case AttentionKind::local: return "local";
    case AttentionKind::bidirectional: return "bidirectional";
  }
  return "?";
}

std::ostream& operator<<(std::ostream& out, AttentionKind kind) { return out << attention_kind_name(kind); }

at::Tensor Model::unembed(const at::Tensor&, const at::Tensor&) const {
  throw UsageError(fmt::format("{} cannot apply its final norm and unembedding to a residual stream (logit lens)",
                               info().path));
}

nlohmann::json ModelInfo::to_json() const {
  nlohmann::json j = {{"adapter", adapter},       {"architecture", architecture}, {"path", path},
                      {"n_layers", n_layers},     {"n_heads", n_heads},           {"n_kv_heads", n_kv_heads},
                      {"d_model", d_model},       {"d_head", d_head},             {"d_mlp", d_mlp},
                      {"vocab_size", vocab_size}, {"n_ctx", n_ctx},               {"window_size", window_size},
                      {"weight_dtype", weight_dtype}};
  auto& kinds = j["layer_attention"] = nlohmann::json::array();
  for (auto k : layer_attention) kinds.push_back(attention_kind_name(k));
  auto id = [](const std::optional<std::int64_t>& v) { return v ? nlohmann::json(*v) : nlohmann::json(); };
  j["bos_id"] = id(bos_id);
  j["eos_id"] = id(eos_id);
  j["mask_id"] = id(mask_id);
  return j;
}

ModelInfo ModelInfo::from_json(const nlohmann::json& j) {
  try {
    ModelInfo i;
    i.adapter = j.at("adapter").get<std::string>();
    i.architecture = j.at("architecture").get<std::string>();
    i.path = j.at("path").get<std::string>();
    i.n_layers = j.at("n_layers").get<int>();
    i.n_heads = j.at("n_heads").get<int>();
    i.n_kv_heads = j.at("n_kv_heads").get<int>();
    i.d_model = j.at("d_model").get<int>();
    i.d_head = j.at("d_head").get<int>();
    i.d_mlp = j.at("d_mlp").get<int>();
    i.vocab_size = j.at("vocab_size").get<std::int64_t>();
    i.n_ctx = j.at("n_ctx").get<std::int64_t>();
    i.window_size = j.at("window_size").get<int>();
    i.weight_dtype = j.at("weight_dtype").get<std::string>();
    for (const auto& kind : j.at("layer_attention")) {
      const std::string name = kind.get<std::string>();
      if (name == "causal") i.layer_attention.push_back(AttentionKind::causal);
      else if (name == "local") i.layer_attention.push_back(AttentionKind::local);
      else if (name == "bidirectional") i.layer_attention.push_back(AttentionKind::bidirectional);
      else throw Error(fmt::format("unknown attention kind '{}'", brief_text(name)));
    }
    auto id = [&](const char* key) {
      return j.contains(key) && !j[key].is_null() ? std::optional<std::int64_t>(j[key].get<std::int64_t>())
                                                  : std::nullopt;
    };
    i.bos_id = id("bos_id");
    i.eos_id = id("eos_id");
    i.mask_id = id("mask_id");
    return i;
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("malformed model description: {}", e.what()));
  }
}

std::shared_ptr<Model> open_model(const PluginRegistry& plugins, const std::filesystem::path& model,
                                  const std::string& adapter, const LoadOptions& options, std::string* adapter_used) {
  if (!std::filesystem::exists(model)) throw Error(fmt::format("{}: no such file or directory", model.string()));
  std::string name = adapter;
  std::shared_ptr<Adapter> a = adapter.empty() ? plugins.adapter_for(model, &name) : plugins.create_adapter(adapter);
  if (adapter_used) *adapter_used = name;
  return tie_lifetime(a->load(model, options), a);
}

std::unique_ptr<Tokenizer> load_model_tokenizer(const std::filesystem::path& model_dir, const LoadOptions& options) {
  if (!options.tokenizer.empty()) {
    const auto& named = options.tokenizer;
    std::error_code ec;
    if (!std::filesystem::exists(named, ec))
      throw UsageError(fmt::format("tokenizer {}: no such file or directory", named.string()));
    if (std::filesystem::is_directory(named, ec)) return load_hf_tokenizer(named);
    // A Hugging Face file names its directory; any other file is llama2.c's tokenizer.bin.
    const std::string file = named.filename().string();
    if (file == "tokenizer.json" || file == "vocab.json" || file == "merges.txt") return load_hf_tokenizer(named.parent_path());
    return read_llama2c_tokenizer(named);
  }
  for (const char* file : {"tokenizer.json", "vocab.json"})
    if (std::filesystem::exists(model_dir / file)) return load_hf_tokenizer(model_dir);
  return nullptr;
}

TensorMap load_model_weights(const std::filesystem::path& model_dir, const LoadOptions& options) {
  return options.weights ? *options.weights : load_hf_weights(model_dir);
}

std::string listed_name(const HookPointInfo& point) {
  std::string name = point.name;
  if (point.layer >= 0 && name.rfind("blocks.", 0) == 0)
    name.replace(name.find('.') + 1, std::to_string(point.layer).size(), "{L}");
  return name;
}

std::vector<std::string> listed_names(const std::vector<HookPointInfo>& points,
                                      const std::function<bool(const HookPointInfo&)>& keep) {
  std::vector<std::string> names;
  std::set<std::string> seen;
  for (const auto& p : points)
    if (!keep || keep(p))
      if (std::string name = listed_name(p); seen.insert(name).second) names.push_back(std::move(name));
  return names;
}

}  // namespace hooklens

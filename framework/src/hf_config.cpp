// A Hugging Face config.json: typed getters whose errors name the file and the key, and the
// model_type peek adapters use to claim a directory (hooklens/hf_config.h).
#include <hooklens/error.h>
#include <hooklens/hf_config.h>
#include <hooklens/json_read.h>
#include <hooklens/message_text.h>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <set>

namespace hooklens {

HfConfig::HfConfig(const std::filesystem::path& model_dir) : file_((model_dir / "config.json").string()) {
  if (!std::filesystem::is_regular_file(file_)) throw Error(fmt::format("{}: no such file", file_));
  json_ = read_json_file(file_);
  if (!json_.is_object()) fail("not a JSON object");
}

void HfConfig::fail(const std::string& message) const { throw Error(fmt::format("{}: {}", file_, message)); }

bool HfConfig::has(const std::string& key) const { return json_.contains(key) && !json_[key].is_null(); }

std::int64_t HfConfig::integer(const std::string& key) const {
  if (!has(key)) fail(fmt::format("missing '{}'", key));
  const auto& v = json_[key];
  // Sizes are stored as int: a larger value would silently wrap (and is never a real model's).
  if (!v.is_number_integer() || v.get<std::int64_t>() <= 0 || v.get<std::int64_t>() > INT32_MAX)
    fail(fmt::format("'{}' must be a positive integer below 2^31, not {}", key, brief_json(v)));
  return v.get<std::int64_t>();
}

std::int64_t HfConfig::integer(const std::string& key, std::int64_t fallback) const {
  return has(key) ? integer(key) : fallback;
}

double HfConfig::number(const std::string& key, double fallback) const {
  if (!has(key)) return fallback;
  const auto& v = json_[key];
  if (!v.is_number()) fail(fmt::format("'{}' must be a number, not {}", key, brief_json(v)));
  return v.get<double>();
}

std::string HfConfig::string(const std::string& key) const {
  if (!has(key)) fail(fmt::format("missing '{}'", key));
  if (!json_[key].is_string()) fail(fmt::format("'{}' must be a string, not {}", key, brief_json(json_[key])));
  return json_[key].get<std::string>();
}

std::string HfConfig::string(const std::string& key, const std::string& fallback) const {
  return has(key) ? string(key) : fallback;
}

std::int64_t HfConfig::token_id(const std::string& key) const {
  if (!has(key)) fail(fmt::format("missing '{}'", key));
  const auto& v = json_[key];
  if (!v.is_number_integer() || v.get<std::int64_t>() < 0)
    fail(fmt::format("'{}' must be a token id, not {}", key, brief_json(v)));
  return v.get<std::int64_t>();
}

std::optional<std::int64_t> HfConfig::optional_id(const std::string& key) const {
  if (!has(key)) return std::nullopt;
  const auto& v = json_[key];
  const auto is_id = [](const nlohmann::json& x) { return x.is_number_integer() && x.get<std::int64_t>() >= 0; };
  if (is_id(v)) return v.get<std::int64_t>();
  if (v.is_array() && !v.empty() && is_id(v[0])) {  // e.g. "eos_token_id": [128001, 128009]
    if (v.size() > 1)
      warn(fmt::format("{}: '{}' lists {} ids; hooklens uses the first, {}", file_, key, v.size(), v[0].get<std::int64_t>()));
    return v[0].get<std::int64_t>();
  }
  warn(fmt::format("{}: '{}' is {}, not a token id; ignoring it", file_, key, brief_json(v)));
  return std::nullopt;
}

void HfConfig::warn_unknown_keys(const std::vector<std::string>& known) const {
  // Metadata of every Hugging Face config, and settings that only matter for training or for
  // other frameworks' code paths (dropout is off at inference).
  static const std::set<std::string> generic = {
      "architectures", "auto_map", "model_type", "torch_dtype", "transformers_version", "use_cache",
      "initializer_range", "init_std", "init_fn", "init_device", "init_cutoff_factor", "bos_token_id",
      "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id", "tie_word_embeddings",
      "return_dict", "output_attentions", "output_hidden_states", "torchscript", "id2label", "label2id",
      "problem_type", "tokenizer_class", "prefix", "task_specific_params", "is_decoder", "is_encoder_decoder",
      "add_cross_attention", "gradient_checkpointing", "_name_or_path", "_attn_implementation",
      "attn_implementation", "finetuning_task", "max_length", "min_length", "do_sample", "num_beams",
      "temperature", "top_k", "top_p", "repetition_penalty", "use_bfloat16", "pruned_heads",
      "chunk_size_feed_forward", "tf_legacy_loss", "quantization_config"};
  std::vector<std::string> unknown;
  for (const auto& item : json_.items()) {
    const std::string& key = item.key();
    const bool dropout = key.find("dropout") != std::string::npos || key.find("pdrop") != std::string::npos;
    const bool comment = !key.empty() && key[0] == '_';  // "_name_or_path", "_comment_..."
    if (!dropout && !comment && !generic.count(key) && std::find(known.begin(), known.end(), key) == known.end())
      unknown.push_back(brief_text(key));
  }
  if (unknown.empty()) return;
  if (unknown.size() > 12) unknown.resize(12), unknown.push_back("...");
  warn(fmt::format("{}: ignoring keys hooklens does not use: {}", file_, fmt::join(unknown, ", ")));
}

std::string peek_model_type(const std::filesystem::path& model_dir) {
  try {
    auto j = read_json_file(model_dir / "config.json");
    if (j.is_object() && j.contains("model_type") && j["model_type"].is_string())
      return j["model_type"].get<std::string>();
  } catch (const Error&) {
  }
  return "";
}

}  // namespace hooklens

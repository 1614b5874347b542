// Typed access to a Hugging Face config.json with errors that name the file and the key.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace hooklens {

class HfConfig {
 public:
  explicit HfConfig(const std::filesystem::path& model_dir);  // reads model_dir/config.json
  const nlohmann::json& json() const { return json_; }
  const std::string& file() const { return file_; }

  bool has(const std::string& key) const;  // present and not null
  std::int64_t integer(const std::string& key) const;  // required, must be a positive integer
  std::int64_t integer(const std::string& key, std::int64_t fallback) const;
  double number(const std::string& key, double fallback) const;
  std::string string(const std::string& key) const;
  std::string string(const std::string& key, const std::string& fallback) const;
  // A token id the model needs as input (e.g. the mask token): a non-negative integer, else Error.
  std::int64_t token_id(const std::string& key) const;
  // A token id the forward pass never uses (bos, eos): absent or null gives nullopt; a list gives
  // its first id; anything malformed is a warning and nullopt, never an error (Hugging Face ignores
  // such values too).
  std::optional<std::int64_t> optional_id(const std::string& key) const;
  // Warns once, listing the keys that are neither in `known` (what the adapter reads or knows not
  // to change the numbers) nor generic Hugging Face metadata (architectures, torch_dtype, dropout
  // rates, ...): values hooklens ignores, which the user should know about.
  void warn_unknown_keys(const std::vector<std::string>& known) const;

  [[noreturn]] void fail(const std::string& message) const;  // throws Error("<file>: message")

 private:
  std::string file_;
  nlohmann::json json_;
};

// config.json's "model_type", or "" when the directory has no readable config.json.
std::string peek_model_type(const std::filesystem::path& model_dir);

}  // namespace hooklens

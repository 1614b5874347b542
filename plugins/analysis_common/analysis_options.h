// Helpers every analyzer of plugins/ needs: its options, the run's token strings, finite JSON numbers.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace hooklens::analysis {

// An analyzer's options (begin()'s run["options"], {"KEY": "VALUE"} from --analyze-option NAME.KEY=VALUE).
// Throws UsageError for a key not in `known` or a value that does not parse.
class Options {
 public:
  Options(std::string analyzer, const nlohmann::json& options, const std::vector<std::string>& known);

  // An integer >= min; `fallback` when the option is absent.
  std::int64_t integer(const std::string& key, std::int64_t fallback, std::int64_t min) const;
  std::optional<std::int64_t> optional_integer(const std::string& key, std::int64_t min) const;

 private:
  std::string analyzer_;
  nlohmann::json options_;
};

// `v`, or null when it is NaN or infinite (reports must stay JSON-finite).
nlohmann::json finite(double v);
// Each value through finite().
nlohmann::json finite_list(const std::vector<double>& values);

// run["mode"]: "none", "autoregressive" or "masked_diffusion" ("none" when absent).
std::string run_mode(const nlohmann::json& run);

// Display string of every position of prompt `prompt` a capture can show: the prompt's tokens, then
// for an autoregressive run the generated tokens (manifest generation.steps[i].token_string is
// position P + i), for a masked-diffusion run "<mask>" (the input of its first step).
// `manifest` needs "prompts" and, for generation runs, "generation".
std::vector<std::string> position_tokens(const nlohmann::json& manifest, int prompt);

}  // namespace hooklens::analysis

// The display string of every position of a run's prompt, for the analyzers of plugins/ that label
// positions (options: hooklens/plugin_options.h; JSON-finite numbers: finite_or_null, hooklens/analyzer.h).
#pragma once
#include <hooklens/generation_mode.h>

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace hooklens::analysis {

// begin()'s run["mode"] (none when absent); Error for a mode hooklens does not know.
GenerationMode run_mode(const nlohmann::json& run);

// Display string of every position of prompt `prompt` a capture can show: the prompt's tokens, then
// for an autoregressive run the generated tokens (manifest generation.steps[i].token_string is
// position P + i), for a masked-diffusion run "<mask>" (the input of its first step).
// `manifest` needs "prompts" and, for generation runs, "generation".
std::vector<std::string> position_tokens(const nlohmann::json& manifest, int prompt);

}  // namespace hooklens::analysis

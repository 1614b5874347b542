// How a run produced its tokens, decided once from the model: autoregressive (causal or local
// attention) or masked diffusion (every layer bidirectional: LLaDA, MMaDA). A run of single
// forward passes (`hooklens capture`) has none. The manifest records the mode by name.
#pragma once
#include <optional>
#include <string_view>

namespace hooklens {

struct ModelInfo;

enum class GenerationMode { none, autoregressive, masked_diffusion };

// "none", "autoregressive" or "masked_diffusion", as the run manifest spells them.
const char* generation_mode_name(GenerationMode mode);
std::optional<GenerationMode> parse_generation_mode(std::string_view name);

// How `hooklens generate` generates with this model: masked diffusion when it has layers and
// every one is bidirectional, autoregressive otherwise.
GenerationMode generation_mode_of(const ModelInfo& model);

}  // namespace hooklens

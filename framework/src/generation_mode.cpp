#include <hooklens/generation_mode.h>
#include <hooklens/model.h>

#include <algorithm>

namespace hooklens {

const char* generation_mode_name(GenerationMode mode) {
  switch (mode) {
    case GenerationMode::none: return "none";
    case GenerationMode::autoregressive: return "autoregressive";
    case GenerationMode::masked_diffusion: return "masked_diffusion";
  }
  return "?";
}

std::optional<GenerationMode> parse_generation_mode(std::string_view name) {
  for (auto mode : {GenerationMode::none, GenerationMode::autoregressive, GenerationMode::masked_diffusion})
    if (name == generation_mode_name(mode)) return mode;
  return std::nullopt;
}

GenerationMode generation_mode_of(const ModelInfo& model) {
  // A model of no layers attends nowhere: nothing makes it a diffusion model.
  const auto& kinds = model.layer_attention;
  const bool bidirectional = !kinds.empty() && std::all_of(kinds.begin(), kinds.end(), [](AttentionKind k) {
    return k == AttentionKind::bidirectional;
  });
  return bidirectional ? GenerationMode::masked_diffusion : GenerationMode::autoregressive;
}

}  // namespace hooklens

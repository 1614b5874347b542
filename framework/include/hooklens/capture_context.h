// Where in a run a hook point fired: the context every hook sees and every capture entry of a run
// manifest records. Apart from hooks.h so that code which only reads or writes run manifests
// (hooklens/run_format.h) needs no libtorch header.
#pragma once
#include <cstdint>
#include <optional>
#include <string_view>

namespace hooklens {

enum class Phase : std::uint8_t { prefill, decode, denoise };
const char* phase_name(Phase phase);
std::optional<Phase> parse_phase(std::string_view name);

struct CaptureContext {
  int prompt = 0;               // prompt (batch) index in the run
  Phase phase = Phase::prefill;
  int step = 0;                 // generation step (0 = prefill), or diffusion step
  int block = -1;               // diffusion block, -1 when there is none
  int layer = -1;               // -1 for model-level points (hook_embed, hook_logits, ...)
  std::int64_t query_offset = 0;  // absolute position of the first query row / first position
  int pass = 0;                 // 0 = conditional pass; 1 = unconditional pass (classifier-free guidance)
  std::int64_t key_offset = 0;  // absolute position of the first key column of a pattern/scores capture
};

}  // namespace hooklens

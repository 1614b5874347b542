// The run-directory contract in one place (docs/run-format.md): how manifest.json spells a
// capture entry, a prompt and the "generation" block, encoded by the writers (the run_writer
// sink, the CLI) and decoded by every reader (RunReader, analyzers over a run, renderers, the
// viewer, the examples). Decoders take JSON that may be hostile and refuse with one-line
// hooklens::Error messages that name the part at fault ("capture 3 ...", "prompt 0 ...",
// "\"generation\" ...", "generation step 2 ...", "intervention 1 ..."); RunReader prefixes the
// manifest's file name.
// No libtorch here: the types are plain.
#pragma once
#include <hooklens/capture_context.h>
#include <hooklens/generation_mode.h>

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace hooklens {

// manifest.json's "format" and "version": a reader refuses any other.
inline constexpr const char* kRunFormatName = "hooklens-run";
inline constexpr int kRunFormatVersion = 1;
// Positions and offsets a manifest may name: far past any model's context, and small enough that
// offset + extent never overflows.
inline constexpr std::int64_t kMaxRunPositions = std::int64_t(1) << 40;

// ---- files

inline constexpr const char* kRunManifestName = "manifest.json";
// Writes a manifest atomically (hooklens::write_file_atomically), one capture entry per line:
// readable in an editor, diffable, and far smaller than an indented dump.
void write_manifest_file(const std::filesystem::path& file, const nlohmann::json& manifest);

// A run over several processes (docs/distributed.md): rank R writes its shards as
// captures-rankRRRRR-NNNNN.safetensors and its part of the manifest as part-rankRRRRR.json.
inline constexpr int kMaxRunRank = 65535;
std::string rank_shard_prefix(int rank);       // "captures-rankRRRRR-"
std::string rank_shard_name(int rank, int index);  // the prefix, then "NNNNN.safetensors"
std::string rank_part_name(int rank);           // "part-rankRRRRR.json"

// ---- capture entries ("captures"[i])

// One capture as the manifest lists it.
struct CaptureEntry {
  std::string key;   // the tensor's name inside `file`
  std::string hook;  // e.g. "blocks.0.attn.hook_pattern"
  std::string file;  // a shard's plain file name inside the run directory
  std::string dtype;  // safetensors dtype name, e.g. "F32"
  std::vector<std::int64_t> shape;
  CaptureContext context;  // prompt, phase, step, block, layer, query_offset, key_offset, pass
};

// Every field, the context's included (the run_writer sink writes this).
nlohmann::json encode_capture_entry(const CaptureEntry& entry);
// Entry `index` of "captures", checked on its own: key, hook, file, dtype (strings), shape
// (integers >= 0 whose bytes cannot overflow), prompt, phase and step required; block and layer
// default to -1, query_offset, key_offset and pass to 0. The file must be a plain file name.
CaptureEntry decode_capture_entry(const nlohmann::json& entry, std::size_t index);

// ---- prompts ("prompts"[i])

struct RunPrompt {
  std::string text;                  // "" when the run had neither text nor a tokenizer
  std::vector<std::int64_t> ids;
  std::vector<std::string> tokens;   // one display string per id
  std::string source = "prompt";     // or "text-file FILE sequence N (tokens A-B)", an analyzer's input
};

nlohmann::json encode_prompt(const RunPrompt& prompt);  // {"text", "ids", "tokens", "source"}
// "ids" (integers >= 0) and "tokens" (strings, as many) required; "text" and "source" default.
RunPrompt decode_prompt(const nlohmann::json& prompt, std::size_t index);
// The manifest's "prompts" (none when absent).
std::vector<RunPrompt> decode_prompts(const nlohmann::json& manifest);

// ---- the generation block ("generation")

// Autoregressive step s: step 0 is the prefill over the prompt, step s > 0 the decode pass that
// consumes the token chosen at step s - 1.
struct TokenStep {
  int step = 0;
  Phase phase = Phase::prefill;       // prefill at step 0, decode after
  std::int64_t query_offset = 0;      // position of the pass's first query row
  std::optional<std::int64_t> token;  // the token this step chose
  std::optional<std::string> token_string;

  // Step `step` of a generation from a prompt of `prompt_length` tokens, which chose `token`: its
  // phase and query offset follow from the two (prefill at 0; decode step s reads position P + s - 1).
  static TokenStep chose(int step, std::int64_t prompt_length, std::int64_t token, std::string token_string) {
    return {step, step == 0 ? Phase::prefill : Phase::decode, step == 0 ? 0 : prompt_length + step - 1, token,
            std::move(token_string)};
  }
};

// Masked-diffusion step s: the s-th denoising forward pass.
struct DenoiseStep {
  int step = 0;
  int block = 0;
  std::vector<std::int64_t> ids;        // the whole sequence after this step
  std::vector<std::int64_t> committed;  // positions unmasked at this step
  std::vector<double> confidences;      // theirs, in the same order (NaN where the manifest has null)
};

struct RunGeneration {
  GenerationMode mode = GenerationMode::none;  // none: single forward passes (`hooklens capture`)
  // Both generating modes.
  std::vector<std::int64_t> output_ids;  // prompt 0 followed by the generated region
  std::vector<std::int64_t> new_ids;     // the generated region
  std::optional<std::string> text;       // the generated text, when the run had a tokenizer
  double temperature = 0;
  std::uint64_t seed = 0;
  bool stop_at_eos = false, stopped_on_eos = false;
  // Autoregressive sampling.
  int max_new_tokens = 0;
  bool greedy = true;
  int top_k = 0;
  double top_p = 1;
  std::vector<TokenStep> token_steps;
  // Masked diffusion.
  std::int64_t prompt_length = 0, gen_length = 0, block_length = 0;
  int steps_total = 0;
  double cfg_scale = 0;
  std::string remasking, confidence_dtype;
  std::optional<std::int64_t> mask_id;
  std::vector<DenoiseStep> denoise_steps;
  // Display string of each id the sequences hold but the mask, keyed by id (runs with a tokenizer).
  std::optional<std::map<std::int64_t, std::string>> token_strings;

  // The steps of this mode's list.
  std::size_t step_count() const {
    return mode == GenerationMode::autoregressive ? token_steps.size() : denoise_steps.size();
  }
  // How a diffusion sequence's id is shown: "[mask]", its token string, or "#ID" without one.
  std::string display(std::int64_t id) const;
};

nlohmann::json encode_token_step(const TokenStep& step);      // {"step", "phase", "query_offset", "token", "token_string"}
nlohmann::json encode_denoise_step(const DenoiseStep& step);  // {"step", "block", "ids", "committed", "confidences"}
// The block as `hooklens generate` / `capture` write it: {"mode": "none"}, or every parameter, the
// ids and the steps of the mode ("text" and "token_strings" only when set).
nlohmann::json encode_generation(const RunGeneration& generation);

// The run's mode: the "generation" block's "mode", none when the manifest has no block or the block
// no mode. The one place that decides it.
GenerationMode decode_generation_mode(const nlohmann::json& manifest);
// The manifest's "generation" block, typed (a manifest without one: mode none). Fields absent take
// the defaults above; fields of the wrong type, an unknown mode and steps without their required
// fields ("step"; for diffusion also "block" and "ids") are refused.
RunGeneration decode_generation(const nlohmann::json& manifest);

// ---- interventions ("interventions"[i])

// One change `hooklens capture|generate` made to the model's computation (docs/run-format.md):
// every figure of such a run shows the changed model, so the readers say so.
struct RunIntervention {
  std::string kind;  // zero_ablate, patch, steer, mean_ablate or resample_ablate
  std::string site;  // as the user wrote it, normalised: "blocks.1.attn.hook_z[head=3,pos=5]"
  std::string hook;  // the hook point it changes: "blocks.1.attn.hook_z"
  std::string text;  // one line for people: "patched blocks.1.attn.hook_z[head=3,pos=5] from runs/clean"
  std::optional<std::string> source;  // the run directory or "FILE.safetensors:NAME" it took values from
  std::optional<double> scale;        // steer only
  std::optional<std::int64_t> applied;  // hook events it changed (not counted in runs over several processes)
};

// {"kind", "site", "hook", "source" (null when none), "scale" (steer only), "applied" (when counted), "text"}.
nlohmann::json encode_intervention(const RunIntervention& intervention);
// The manifest's "interventions", each entry checked (kind known; site, hook and text strings;
// source a string or null; scale a number, required for steer; applied absent or an integer >= 0).
// Where "interventions" is present it is the whole list. A run written before it existed has only
// "ablations" ["L.H", ...] (--ablate): zero ablations of head H of layer L, decoded as such
// ("zero-ablated head L.H").
std::vector<RunIntervention> decode_interventions(const nlohmann::json& manifest);
// The people's lines of the interventions, joined with `separator` (for captions and titles).
std::string intervention_summary(const std::vector<RunIntervention>& interventions, const std::string& separator = "; ");

}  // namespace hooklens

// Reading a run directory (manifest.json + captures-NNNNN.safetensors shards; the contract is
// docs/run-format.md, its encoders and decoders hooklens/run_format.h). Used by the analyzers over a
// finished run, the renderers, the offline viewer, examples and tests.
#pragma once
#include <hooklens/hooks.h>
#include <hooklens/run_format.h>

#include <ATen/core/Tensor.h>

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace hooklens {

// How much of the manifest open() checks. A manifest may come from anywhere (damaged, edited,
// hostile): whatever is checked, readers may rely on without checking again.
enum class RunCheck {
  // Each capture entry on its own: field types, integer ranges (offsets >= 0, pass 0 or 1, ...),
  // known phase and dtype, sizes that cannot overflow, shard names inside the run directory, and
  // the nesting depth of the whole manifest.
  entries,
  // Also the manifest as a whole, what renderers and analyzers index with: the "model",
  // "prompts", "capture", "generation" and "interventions" sections (at most 4096 layers and 4096 heads, every
  // prompt's ids and tokens, ids within the vocabulary, output_ids and
  // step lengths, mask_id, blocks), and each capture against them: prompt index, layer < n_layers,
  // step and block within the generation, attention patterns' heads and
  // query_offset + queries <= positions, key_offset + keys <= positions of that forward pass.
  consistent,
};

class RunReader {
 public:
  RunReader() = default;
  explicit RunReader(const std::filesystem::path& dir, bool allow_incomplete = false,
                     RunCheck check = RunCheck::entries) {
    open(dir, allow_incomplete, check);
  }

  // Reads and checks manifest.json. Throws one-line Error naming the file (and the capture and
  // field at fault) if it is missing or malformed, and "run ... is incomplete" for a run that was
  // never finished, unless allow_incomplete.
  void open(const std::filesystem::path& dir, bool allow_incomplete = false, RunCheck check = RunCheck::entries);

  const std::filesystem::path& directory() const { return dir_; }
  const nlohmann::json& manifest() const { return manifest_; }
  std::size_t capture_count() const { return entries_.size(); }
  const nlohmann::json& capture(std::size_t index) const;  // the manifest's entry
  const CaptureEntry& entry(std::size_t index) const;      // the same, decoded and checked
  // The "prompts" and "generation" sections decoded (decode_prompts, decode_generation): read with
  // RunCheck::consistent only, which checked them against each other and the model (Error otherwise).
  const std::vector<RunPrompt>& prompts() const;
  const RunGeneration& generation() const;
  // The "interventions" (and an older run's "ablations"), decode_interventions: RunCheck::consistent only.
  const std::vector<RunIntervention>& interventions() const;
  // The captured tensor as stored (F32 or F16). Its shard's header must agree with the manifest's
  // shape and dtype (Error otherwise). Keeps the tensors of the last shard read, so reading
  // captures in manifest order reads each shard once.
  at::Tensor load(std::size_t index);

 private:
  std::filesystem::path dir_;
  nlohmann::json manifest_;
  std::vector<CaptureEntry> entries_;
  bool consistent_ = false;
  std::vector<RunPrompt> prompts_;
  RunGeneration generation_;
  std::vector<RunIntervention> interventions_;
  std::string cached_file_;
  std::map<std::string, at::Tensor> cached_tensors_;
};

}  // namespace hooklens

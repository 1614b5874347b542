// Reading a run directory (manifest.json + captures-NNNNN.safetensors shards; see DESIGN.md,
// "The run-directory contract"). Used by tests and the offline viewer.
#pragma once
#include <ATen/core/Tensor.h>

#include <nlohmann/json.hpp>

#include <cstddef>
#include <filesystem>
#include <map>
#include <string>

namespace hooklens {

class RunReader {
 public:
  RunReader() = default;
  explicit RunReader(const std::filesystem::path& dir, bool allow_incomplete = false) { open(dir, allow_incomplete); }

  // Reads and checks manifest.json. Throws Error naming the file if it is missing or malformed,
  // and "run ... is incomplete" for a run that was never finished, unless allow_incomplete.
  void open(const std::filesystem::path& dir, bool allow_incomplete = false);

  const std::filesystem::path& directory() const { return dir_; }
  const nlohmann::json& manifest() const { return manifest_; }
  std::size_t capture_count() const;
  const nlohmann::json& capture(std::size_t index) const;  // the manifest's entry
  // The captured tensor as stored (F32 or F16). Keeps the tensors of the last shard read, so
  // reading captures in manifest order reads each shard once.
  at::Tensor load(std::size_t index);

 private:
  std::filesystem::path dir_;
  nlohmann::json manifest_;
  std::string cached_file_;
  std::map<std::string, at::Tensor> cached_tensors_;
};

}  // namespace hooklens

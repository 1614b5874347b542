// Sharded copies of models for the tests: the tensors dealt into N shards in sorted-name order,
// round robin, so that consecutive tensors of one layer land in different shards, with the index
// file Hugging Face writes (model.safetensors.index.json or pytorch_model.bin.index.json).
#pragma once
#include "test_util.h"

#include <hooklens/weights.h>

#include <nlohmann/json.hpp>

#include <map>
#include <set>
#include <string>
#include <vector>

namespace test {

// OUT/model-0000i-of-0000N.safetensors and OUT/model.safetensors.index.json.
inline void write_safetensors_shards(const hooklens::TensorMap& tensors, const fs::path& out, int n) {
  std::vector<std::vector<std::pair<std::string, at::Tensor>>> shards(n);
  nlohmann::json weight_map = nlohmann::json::object();
  int i = 0;
  for (const auto& [name, t] : tensors) {  // a std::map: sorted by name
    const int shard = i++ % n;
    shards[shard].emplace_back(name, t);
    weight_map[name] = fmt::format("model-{:05d}-of-{:05d}.safetensors", shard + 1, n);
  }
  for (int s = 0; s < n; ++s)
    hooklens::write_safetensors(out / fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, n), shards[s]);
  std::ofstream(out / "model.safetensors.index.json") << nlohmann::json{{"metadata", nlohmann::json::object()},
                                                                        {"weight_map", weight_map}}.dump(2);
}

// OUT/pytorch_model-0000i-of-0000N.bin (torch.save) and OUT/pytorch_model.bin.index.json, from a
// .safetensors or torch.save SOURCE, by tests/reference/reshard_bin.py; false when kPython has no torch.
inline bool write_bin_shards(const fs::path& source, const fs::path& out, int n) {
  if (!python_has("torch, numpy")) return false;
  const fs::path script = fs::path(HOOKLENS_SOURCE_DIR) / "tests/reference/reshard_bin.py";
  const fs::path log = out / "reshard.log";
  const int status = run_python(script, fmt::format("'{}' '{}' {}", source.string(), out.string(), n), log);
  INFO(read_file(log));
  REQUIRE(status == 0);
  fs::remove(log);
  return true;
}

// The shards an index puts the tensors in whose names contain `part` (a layer's, e.g. ".h.0.").
inline std::set<std::string> shards_holding(const fs::path& index, const std::string& part) {
  const nlohmann::json json = nlohmann::json::parse(read_file(index));  // alive through the loop
  std::set<std::string> shards;
  for (const auto& [name, shard] : json.at("weight_map").items())
    if (name.find(part) != std::string::npos) shards.insert(shard.get<std::string>());
  return shards;
}

}  // namespace test

// A Hugging Face model directory's weights, in the order transformers itself prefers them, sharded
// weights through their index file, and take_weight, which adapters use to consume the map entry by
// entry.
#include "hooklens/weights.h"

#include "hooklens/error.h"
#include "hooklens/json_read.h"
#include <hooklens/message_text.h>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

namespace hooklens {
namespace {

namespace fs = std::filesystem;

[[noreturn]] void fail(const fs::path& file, const std::string& what) { throw Error(one_line(file.string() + ": " + what)); }

// Shards are files inside the index's directory: no absolute paths, no "..". (A shard may be a
// symlink to elsewhere, as in the Hugging Face cache, whose snapshots link into blobs/.)
fs::path shard_path(const fs::path& dir, const std::string& name, const fs::path& index) {
  const fs::path rel = fs::path(name).lexically_normal();
  const bool escapes = rel.empty() || rel.is_absolute() || rel.has_root_name() || *rel.begin() == "..";
  if (escapes) fail(index, fmt::format("shard file '{}' is not inside the model directory", brief_text(name)));
  return dir / rel;
}

// name -> shard file, from the index's weight_map.
std::map<std::string, std::string> read_weight_map(const fs::path& index) {
  const nlohmann::json json = read_json_file(index);
  const auto map = json.is_object() ? json.find("weight_map") : json.end();
  if (map == json.end() || !map->is_object())
    fail(index, "has no \"weight_map\" object");
  std::map<std::string, std::string> out;
  for (const auto& [name, shard] : map->items()) {
    if (!shard.is_string())
      fail(index, fmt::format("weight_map entry '{}' is not a file name", brief_text(name)));
    out[name] = shard.get<std::string>();
  }
  if (out.empty()) fail(index, "weight_map lists no tensors");
  return out;
}

// safetensors shards are mapped; any other shard is a torch.save file (pytorch_model-0000N-of-...bin).
TensorMap read_shard(const fs::path& file) {
  return file.extension() == ".safetensors" ? map_safetensors(file) : read_pytorch_bin(file);
}

}  // namespace

// The index is authoritative: each shard is read once (its tensors are views of the mapped file,
// so reading costs no tensor data) and exactly the tensors it maps are taken.
TensorMap load_weight_index(const fs::path& index) {
  std::map<std::string, std::vector<std::string>> names_by_shard;
  for (const auto& [name, shard] : read_weight_map(index)) names_by_shard[shard].push_back(name);

  const fs::path dir = index.parent_path().empty() ? fs::path(".") : index.parent_path();
  TensorMap out;
  for (const auto& [shard, names] : names_by_shard) {
    const fs::path file = shard_path(dir, shard, index);
    std::error_code ec;
    if (!fs::is_regular_file(file, ec))
      fail(index, fmt::format("shard file '{}' does not exist (or is not a file)", brief_text(shard)));
    TensorMap tensors = read_shard(file);
    for (const auto& name : names) {
      auto it = tensors.find(name);
      if (it == tensors.end())
        fail(file, fmt::format("tensor '{}' is missing (the index {} maps it there)", brief_text(name),
                               index.filename().string()));
      out.emplace(name, std::move(it->second));
    }
  }
  return out;
}

TensorMap load_hf_weights(const fs::path& model_dir) {
  std::error_code ec;
  if (!fs::is_directory(model_dir, ec))
    fail(model_dir, "model directory does not exist or is not a directory");
  using Reader = TensorMap (*)(const fs::path&);
  const std::pair<const char*, Reader> candidates[] = {{"model.safetensors", map_safetensors},
                                                       {"model.safetensors.index.json", load_weight_index},
                                                       {"pytorch_model.bin", read_pytorch_bin},
                                                       {"pytorch_model.bin.index.json", load_weight_index}};
  std::vector<std::string> looked_for;
  for (const auto& [name, read] : candidates) {
    const fs::path file = model_dir / name;
    if (fs::is_regular_file(file, ec)) return read(file);
    looked_for.push_back(name);
  }
  fail(model_dir, fmt::format("no weights found (looked for {})", fmt::join(looked_for, ", ")));
}

at::Tensor take_weight(TensorMap& weights, const std::string& name, std::vector<std::int64_t> shape,
                       const std::string& what) {
  auto it = weights.find(name);
  if (it == weights.end()) throw Error(fmt::format("{}: missing tensor '{}'", what, name));
  if (it->second.sizes() != at::IntArrayRef(shape))
    throw Error(fmt::format("{}: tensor '{}' has shape [{}], expected [{}]", what, name,
                            fmt::join(it->second.sizes(), ", "), fmt::join(shape, ", ")));
  at::Tensor t = std::move(it->second);
  weights.erase(it);
  return t;
}

}  // namespace hooklens

// A Hugging Face model directory's weights, in the order transformers itself prefers them, and
// take_weight, which adapters use to consume the map entry by entry.
#include "hooklens/weights.h"

#include "hooklens/error.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <fstream>

namespace hooklens {
namespace {

namespace fs = std::filesystem;
using Reader = TensorMap (*)(const fs::path&);

// One readable line even when the index holds names with control characters or megabytes.
[[noreturn]] void fail(const fs::path& file, const std::string& what) {
  std::string s = file.string() + ": " + what;
  if (s.size() > 1000) s = s.substr(0, 1000) + "...";
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  throw Error(s);
}

// Shards are files inside the model directory: no absolute paths, no "..".
fs::path shard_path(const fs::path& dir, const std::string& name, const fs::path& index) {
  const fs::path rel = fs::path(name).lexically_normal();
  const bool escapes = rel.empty() || rel.is_absolute() || rel.has_root_name() || *rel.begin() == "..";
  if (escapes) fail(index, fmt::format("shard file '{}' is not inside the model directory", name));
  return dir / rel;
}

// name -> shard file, from the index's weight_map.
std::map<std::string, std::string> read_weight_map(const fs::path& index) {
  std::ifstream in(index, std::ios::binary);
  if (!in) fail(index, "cannot open");
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail(index, fmt::format("not valid JSON ({})", e.what()));
  }
  const auto map = json.is_object() ? json.find("weight_map") : json.end();
  if (map == json.end() || !map->is_object())
    fail(index, "has no \"weight_map\" object");
  std::map<std::string, std::string> out;
  for (const auto& [name, shard] : map->items()) {
    if (!shard.is_string())
      fail(index, fmt::format("weight_map entry '{}' is not a file name", name));
    out[name] = shard.get<std::string>();
  }
  if (out.empty()) fail(index, "weight_map lists no tensors");
  return out;
}

// The index is authoritative: each shard is read once and exactly the tensors it maps are taken.
TensorMap load_sharded(const fs::path& dir, const fs::path& index, Reader read) {
  std::map<std::string, std::vector<std::string>> names_by_shard;
  for (const auto& [name, shard] : read_weight_map(index)) names_by_shard[shard].push_back(name);

  TensorMap out;
  for (const auto& [shard, names] : names_by_shard) {
    const fs::path file = shard_path(dir, shard, index);
    std::error_code ec;
    if (!fs::is_regular_file(file, ec))
      fail(index, fmt::format("shard file '{}' does not exist", shard));
    TensorMap tensors = read(file);
    for (const auto& name : names) {
      auto it = tensors.find(name);
      if (it == tensors.end())
        fail(file, fmt::format("tensor '{}' is missing (the index {} maps it there)", name, index.filename().string()));
      out.emplace(name, std::move(it->second));
    }
  }
  return out;
}

}  // namespace

TensorMap load_hf_weights(const fs::path& model_dir) {
  std::error_code ec;
  if (!fs::is_directory(model_dir, ec))
    fail(model_dir, "model directory does not exist or is not a directory");
  struct Candidate {
    const char* name;
    bool sharded;
    Reader read;
  };
  const Candidate candidates[] = {{"model.safetensors", false, map_safetensors},
                                  {"model.safetensors.index.json", true, map_safetensors},
                                  {"pytorch_model.bin", false, read_pytorch_bin},
                                  {"pytorch_model.bin.index.json", true, read_pytorch_bin}};
  std::vector<std::string> looked_for;
  for (const auto& c : candidates) {
    const fs::path file = model_dir / c.name;
    if (fs::is_regular_file(file, ec)) return c.sharded ? load_sharded(model_dir, file, c.read) : c.read(file);
    looked_for.push_back(c.name);
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

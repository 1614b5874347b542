#include <hooklens/error.h>
#include <hooklens/json_read.h>
#include <hooklens/run.h>
#include <hooklens/weights.h>

#include <fmt/format.h>

#include <fstream>
#include <iterator>

namespace fs = std::filesystem;

namespace hooklens {
namespace {

// The manifest may come from anywhere: every field the reader relies on is checked once here, so
// load() can trust it. Shard names must be plain file names inside the run directory.
void check_capture_entry(const nlohmann::json& entry, std::size_t index, const fs::path& manifest) {
  auto fail = [&](const std::string& what) {
    throw Error(fmt::format("{}: capture {} {}", manifest.string(), index, what));
  };
  if (!entry.is_object()) fail("is not an object");
  for (const char* field : {"key", "hook", "file", "dtype"})
    if (!entry.contains(field) || !entry[field].is_string()) fail(fmt::format("has no string field '{}'", field));
  if (!entry.contains("shape") || !entry["shape"].is_array()) fail("has no 'shape' array");
  for (const auto& d : entry["shape"])
    if (!d.is_number_integer() || d.get<std::int64_t>() < 0) fail("has a malformed 'shape'");
  const std::string file = entry["file"];
  if (file.empty() || file == "." || file == ".." || fs::path(file).filename().string() != file)
    fail(fmt::format("names a shard outside the run directory: '{}'", file));
}

}  // namespace

void RunReader::open(const fs::path& dir, bool allow_incomplete) {
  const fs::path file = dir / "manifest.json";
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open run manifest (is {} a hooklens run directory?)", file.string(),
                                   dir.string()));
  nlohmann::json manifest = parse_json_text(std::string(std::istreambuf_iterator<char>(in), {}), file.string());
  if (!manifest.is_object() || manifest.value("format", "") != "hooklens-run")
    throw Error(fmt::format("{}: not a hooklens run manifest (no \"format\": \"hooklens-run\")", file.string()));
  if (!manifest.contains("version") || manifest["version"] != 1)
    throw Error(fmt::format("{}: unsupported run format version {} (this hooklens reads version 1)", file.string(),
                            manifest.value("version", nlohmann::json()).dump()));
  if (!manifest.contains("complete") || !manifest["complete"].is_boolean())
    throw Error(fmt::format("{}: run manifest has no boolean \"complete\"", file.string()));
  if (!manifest["complete"].get<bool>() && !allow_incomplete) {
    const std::string error = manifest.contains("error") ? ": " + manifest["error"].dump() : "";
    throw Error(fmt::format("{}: run {} is incomplete (it was aborted or is still being written){}", file.string(),
                            dir.string(), error));
  }
  if (!manifest.contains("captures")) manifest["captures"] = nlohmann::json::array();
  if (!manifest["captures"].is_array()) throw Error(fmt::format("{}: \"captures\" is not an array", file.string()));
  for (std::size_t i = 0; i < manifest["captures"].size(); ++i) check_capture_entry(manifest["captures"][i], i, file);

  dir_ = dir;
  manifest_ = std::move(manifest);
  cached_file_.clear();
  cached_tensors_.clear();
}

std::size_t RunReader::capture_count() const { return manifest_.is_object() ? manifest_["captures"].size() : 0; }

const nlohmann::json& RunReader::capture(std::size_t index) const {
  if (index >= capture_count())
    throw Error(fmt::format("{}: capture index {} out of range (the run has {} captures)",
                            (dir_ / "manifest.json").string(), index, capture_count()));
  return manifest_["captures"][index];
}

at::Tensor RunReader::load(std::size_t index) {
  const nlohmann::json& entry = capture(index);
  const std::string file = entry["file"];
  const fs::path shard = dir_ / file;
  if (file != cached_file_) {
    cached_tensors_.clear();  // free the previous shard before reading the next
    cached_file_.clear();
    cached_tensors_ = read_safetensors(shard);
    cached_file_ = file;
  }
  const std::string key = entry["key"];
  auto it = cached_tensors_.find(key);
  if (it == cached_tensors_.end())
    throw Error(fmt::format("{}: no tensor '{}' (listed as capture {} in the manifest)", shard.string(), key, index));
  const at::Tensor& tensor = it->second;
  const auto shape = entry["shape"].get<std::vector<std::int64_t>>();
  if (tensor.sizes().vec() != shape || safetensors_dtype_name(tensor.scalar_type()) != entry["dtype"])
    throw Error(fmt::format("{}: tensor '{}' is {} {}, the manifest says {} {}", shard.string(), key,
                            safetensors_dtype_name(tensor.scalar_type()), nlohmann::json(tensor.sizes().vec()).dump(),
                            entry["dtype"].get<std::string>(), entry["shape"].dump()));
  return tensor;
}

}  // namespace hooklens

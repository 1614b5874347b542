// The parts of a run over several processes, and joining them (hooklens/run_parts.h).
#include <hooklens/run_parts.h>

#include <hooklens/error.h>
#include <hooklens/json_read.h>
#include <hooklens/message_text.h>
#include <hooklens/safetensors.h>

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <regex>

namespace hooklens {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

bool is_part_name(const std::string& name, int& rank) {
  static const std::regex pattern("part-rank([0-9]{5})\\.json");
  std::smatch match;
  if (name == kResumedPartName) {
    rank = -1;
    return true;
  }
  if (!std::regex_match(name, match, pattern)) return false;
  rank = std::stoi(match[1].str());
  return true;
}

RunPart decode_part(const fs::path& file, int rank) {
  const auto bad = [&](const std::string& what) { return Error(fmt::format("{}: {}", file.string(), what)); };
  RunPart part;
  part.file = file;
  part.rank = rank;
  part.manifest = read_json_file(file);
  const json& m = part.manifest;
  if (!m.is_object() || m.value("format", json()) != kRunFormatName) throw bad("not a part of a hooklens run");
  if (!m.contains("complete") || !m["complete"].is_boolean()) throw bad("\"complete\" is not true or false");
  part.complete = m["complete"].get<bool>();
  const json part_info = m.value("part", json());
  if (!part_info.is_object() || part_info.value("rank", json()) != json(rank))
    throw bad(fmt::format("\"part\" does not say rank {}", rank));
  const json done = part_info.value("prompts_done", json());
  if (!done.is_array()) throw bad("\"part\".\"prompts_done\" is not a list");
  for (const json& p : done) {
    if (!p.is_number_integer() || p.get<std::int64_t>() < 0 || p.get<std::int64_t>() > std::numeric_limits<int>::max())
      throw bad(fmt::format("\"prompts_done\" holds {}, not a prompt index", brief_json(p)));
    part.prompts_done.insert(p.get<int>());
  }
  const json captures = m.value("captures", json::array());
  if (!captures.is_array()) throw bad("\"captures\" is not a list");
  try {
    for (std::size_t i = 0; i < captures.size(); ++i) part.captures.push_back(decode_capture_entry(captures[i], i));
  } catch (const Error& e) {
    throw bad(e.what());
  }
  return part;
}

// The entries of `part` that belong to the prompts it has done (a prompt cut short by a failure
// may have captures in a closed shard: they are left out, and the prompt is captured again).
std::vector<CaptureEntry> done_captures(const RunPart& part) {
  std::vector<CaptureEntry> out;
  for (const auto& e : part.captures)
    if (part.prompts_done.count(e.context.prompt)) out.push_back(e);
  return out;
}

bool same_directory(const fs::path& a, const fs::path& b) {
  std::error_code ec;
  return fs::equivalent(a, b, ec);
}

}  // namespace

std::vector<RunPart> read_run_parts(const fs::path& dir) {
  std::vector<std::pair<std::string, int>> names;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    int rank = 0;
    const std::string name = it->path().filename().string();
    if (is_part_name(name, rank)) names.emplace_back(name, rank);
  }
  if (ec) throw Error(fmt::format("{}: cannot list the run directory: {}", dir.string(), ec.message()));
  std::sort(names.begin(), names.end());
  std::vector<RunPart> parts;
  for (const auto& [name, rank] : names) parts.push_back(decode_part(dir / name, rank));
  return parts;
}

void write_run_part(const fs::path& dir, const RunPart& part) {
  json manifest = part.manifest.is_object() ? part.manifest : json::object();
  manifest["format"] = kRunFormatName;
  manifest["version"] = kRunFormatVersion;
  manifest["complete"] = part.complete;
  manifest["part"] = {{"rank", part.rank}, {"prompts_done", part.prompts_done}};
  manifest["captures"] = json::array();
  for (const auto& e : part.captures) manifest["captures"].push_back(encode_capture_entry(e));
  write_manifest_file(dir / part.file.filename(), manifest);
}

std::vector<std::string> check_shards(const fs::path& dir, const std::vector<CaptureEntry>& entries) {
  std::map<std::string, std::map<std::string, TensorLayout>> shards;  // file -> key -> layout
  std::map<std::string, std::string> unreadable;
  std::vector<std::string> problems;
  for (const auto& e : entries) {
    if (!shards.count(e.file) && !unreadable.count(e.file)) {
      try {
        auto& layouts = shards[e.file];
        for (auto& t : read_safetensors_layout(dir / e.file)) layouts.emplace(t.name, std::move(t));
      } catch (const Error& error) {
        shards.erase(e.file);
        unreadable[e.file] = error.what();
      }
    }
    if (unreadable.count(e.file)) {
      problems.push_back(unreadable[e.file]);
      continue;
    }
    const auto& layouts = shards[e.file];
    const auto it = layouts.find(e.key);
    if (it == layouts.end()) {
      problems.push_back(fmt::format("{} does not hold '{}'", e.file, e.key));
    } else if (safetensors_dtype_name(it->second.type) != e.dtype || it->second.shape != e.shape) {
      problems.push_back(fmt::format("{} holds '{}' as {} {}, the manifest says {} {}", e.file, e.key,
                                     safetensors_dtype_name(it->second.type), json(it->second.shape).dump(), e.dtype,
                                     json(e.shape).dump()));
    } else {
      problems.emplace_back();
    }
  }
  return problems;
}

json join_run_parts(const std::vector<fs::path>& inputs, const fs::path& out) {
  struct Found {
    fs::path dir;
    RunPart part;
  };
  std::vector<Found> found;
  for (const auto& dir : inputs) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) throw Error(fmt::format("{}: not a directory", dir.string()));
    auto parts = read_run_parts(dir);
    if (parts.empty())
      throw Error(fmt::format("{}: holds no part of a run over several processes (part-rank*.json)", dir.string()));
    for (auto& part : parts) found.push_back({dir, std::move(part)});
  }
  // The sections come from rank 0's part (any complete part when rank 0 had nothing left to do).
  const Found* reference = nullptr;
  for (const auto& f : found) {
    if (!f.part.complete)
      throw Error(fmt::format("{}: {} did not finish (its part is incomplete): run it again with --resume",
                              f.part.file.string(), f.part.rank >= 0 ? fmt::format("rank {}", f.part.rank) : "the resumed part"));
    if (!reference || (f.part.rank == 0 && reference->part.rank != 0)) reference = &f;
  }
  const json& ref = reference->part.manifest;
  std::map<int, const Found*> by_rank;
  for (const auto& f : found) {
    for (const char* section : kRunSections)
      if (f.part.manifest.value(section, json()) != ref.value(section, json()))
        throw Error(fmt::format("{}: its \"{}\" differs from {}'s: parts of different runs", f.part.file.string(),
                                section, reference->part.file.string()));
    if (!by_rank.emplace(f.part.rank, &f).second)
      throw Error(fmt::format("{} and {}: two parts of {}", by_rank[f.part.rank]->part.file.string(), f.part.file.string(),
                              f.part.rank >= 0 ? fmt::format("rank {}", f.part.rank) : "resumed captures"));
  }
  const json distributed = ref.value("distributed", json::object());
  const json world = distributed.is_object() ? distributed.value("world_size", json(0)) : json(0);
  if (!world.is_number_integer() || world.get<std::int64_t>() < 0 || world.get<std::int64_t>() > kMaxRunRank + 1)
    throw Error(fmt::format("{}: \"distributed\".\"world_size\" is {}, not a number of ranks", reference->part.file.string(),
                            brief_json(world)));
  const int world_size = world.get<int>();
  for (int r = 0; r < world_size; ++r)
    if (!by_rank.count(r))
      throw Error(fmt::format("{} (rank {} of {}) is in none of the directories given", rank_part_name(r), r, world_size));
  // Every prompt done by exactly one part.
  const std::size_t prompts = ref.value("prompts", json::array()).size();
  std::vector<const Found*> owner(prompts, nullptr);
  for (const auto& f : found)
    for (int p : f.part.prompts_done) {
      if (std::size_t(p) >= prompts)
        throw Error(fmt::format("{}: prompt {} is done, but the run has {} prompts", f.part.file.string(), p, prompts));
      if (owner[std::size_t(p)])
        throw Error(fmt::format("prompt {} is in two parts: {} and {}", p, owner[std::size_t(p)]->part.file.string(),
                                f.part.file.string()));
      owner[std::size_t(p)] = &f;
    }
  for (std::size_t p = 0; p < prompts; ++p)
    if (!owner[p]) throw Error(fmt::format("prompt {} was captured by none of the parts found", p));
  // The captures, verified against their shards, in prompt order.
  std::vector<std::pair<const Found*, CaptureEntry>> captures;
  for (const auto& f : found) {
    const std::vector<CaptureEntry> entries = done_captures(f.part);
    const std::vector<std::string> problems = check_shards(f.dir, entries);
    for (std::size_t i = 0; i < entries.size(); ++i) {
      if (!problems[i].empty())
        throw Error(fmt::format("{}: capture '{}': {}", f.part.file.string(), entries[i].key, problems[i]));
      captures.emplace_back(&f, entries[i]);
    }
  }
  std::stable_sort(captures.begin(), captures.end(),
                   [](const auto& a, const auto& b) { return a.second.context.prompt < b.second.context.prompt; });
  // The files: nothing to move when joining in place; else each shard linked (or copied) over.
  const bool in_place = std::any_of(inputs.begin(), inputs.end(), [&](const fs::path& d) { return same_directory(d, out); });
  if (!in_place) {
    std::error_code ec;
    if (fs::exists(out, ec) && !fs::is_empty(out, ec))
      throw Error(fmt::format("{}: exists and is not empty (choose a new directory)", out.string()));
    fs::create_directories(out, ec);
    if (ec) throw Error(fmt::format("{}: cannot create the directory: {}", out.string(), ec.message()));
    std::set<std::string> copied;
    for (const auto& [from, entry] : captures) {
      if (!copied.insert(entry.file).second) continue;
      const fs::path source = from->dir / entry.file, target = out / entry.file;
      fs::create_hard_link(source, target, ec);
      if (ec) fs::copy_file(source, target, ec);
      if (ec) throw Error(fmt::format("{}: cannot copy it to {}: {}", source.string(), out.string(), ec.message()));
    }
    for (const auto& dir : inputs)  // rank 0 wrote the reports
      if (fs::is_directory(dir / "reports", ec)) {
        fs::copy(dir / "reports", out / "reports", fs::copy_options::recursive, ec);
        if (ec) throw Error(fmt::format("{}: cannot copy the reports: {}", (dir / "reports").string(), ec.message()));
        break;
      }
  }
  json manifest = json::object();
  for (const auto& [key, value] : ref.items())
    if (key != "part" && key != "captures" && key != "error") manifest[key] = value;
  manifest["format"] = kRunFormatName;
  manifest["version"] = kRunFormatVersion;
  manifest["complete"] = true;
  manifest["captures"] = json::array();
  for (const auto& c : captures) manifest["captures"].push_back(encode_capture_entry(c.second));
  write_manifest_file(out / kRunManifestName, manifest);
  if (in_place)  // manifest.json says it all now
    for (const auto& f : found) {
      std::error_code ec;
      fs::remove(f.part.file, ec);
    }
  return manifest;
}

}  // namespace hooklens

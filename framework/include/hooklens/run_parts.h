// The parts of a run over several processes (docs/distributed.md): each rank's
// part-rankRRRRR.json (the run writer's manifest of that rank's shards, with the prompts it has
// done), part-resumed.json (what --resume kept of a failed run), and joining them into the run's
// manifest.json. Used by rank 0 at the end of a run, by --resume and by `hooklens merge`.
#pragma once
#include <hooklens/run_format.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <set>
#include <string>
#include <vector>

namespace hooklens {

inline constexpr const char* kResumedPartName = "part-resumed.json";

struct RunPart {
  std::filesystem::path file;
  int rank = -1;  // -1 for part-resumed.json
  bool complete = false;
  nlohmann::json manifest;  // as written: once complete it holds the run's sections ("model", "prompts", ...)
  std::vector<CaptureEntry> captures;
  std::set<int> prompts_done;  // every capture of these prompts is in a closed shard
};

// Every part in `dir`, by file name. Error (one line, naming the file) for a malformed one.
std::vector<RunPart> read_run_parts(const std::filesystem::path& dir);
void write_run_part(const std::filesystem::path& dir, const RunPart& part);  // as `part.file`'s name in `dir`

// Checks each entry against the header of its shard in `dir` (each shard read once): the tensor is
// there, with the entry's dtype and shape. For each entry "" or what is wrong.
std::vector<std::string> check_shards(const std::filesystem::path& dir, const std::vector<CaptureEntry>& entries);

// The sections every part of one run shares, and which --resume and `merge` compare.
inline constexpr const char* kRunSections[] = {"model", "prompts", "capture", "ablations", "interventions",
                                                "analyzers", "generation"};

// Joins the parts found in `inputs` into the complete run `out` (one of the inputs, or a new
// directory that the shards are linked or copied into): every prompt done by exactly one part, every
// capture verified against its shard, the sections equal; then manifest.json, complete, with the
// captures in prompt order. Error naming what is missing or different. Returns that manifest.
nlohmann::json join_run_parts(const std::vector<std::filesystem::path>& inputs, const std::filesystem::path& out);

}  // namespace hooklens

// Fuzz target: run directories (manifest.json + capture shards, reports/*.json), as `hooklens
// capture`, `generate` and diffusion runs write them and whatever a user points hooklens at. The
// input is split into files (fuzz_util.h): the text before any header is manifest.json; each
// "==> NAME <==" part is the file NAME of the run directory (a shard such as
// captures-00000.safetensors, or reports/NAME.json); a part "options.json" is not written but, if
// it is a JSON object, given to the renderers as their options (layers, heads, prompts, steps,
// target). The run is opened with RunReader at both check levels, with and without
// allow_incomplete, every entry and its tensor read; then rendered as png, svg and html, analyzed
// by attention_stats, head_detectors, token_influence and neurons, and read by the viewer's model.
// The parts of a run over several processes (part-rankRRRRR.json, part-resumed.json) are read and
// joined into a second directory, which is read like the first. The manifest's interventions
// (and an older run's "ablations") are decoded on their own too (decode_interventions).
// Each must give its result or refuse with a one-line hooklens::Error.
#include "fuzz_run_util.h"
#include "hooklens/json_read.h"
#include "hooklens/run_parts.h"

#include <ATen/ops/sum.h>
#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <iterator>
#include <string>

namespace {

namespace fs = std::filesystem;

// What decode_interventions promises of what it returns.
void check_interventions(const std::vector<hooklens::RunIntervention>& interventions) {
  static const std::string kKinds[] = {"zero_ablate", "patch", "steer", "mean_ablate", "resample_ablate"};
  for (const hooklens::RunIntervention& i : interventions) {
    if (std::find(std::begin(kKinds), std::end(kKinds), i.kind) == std::end(kKinds)) fuzz::violated("an intervention of an unknown kind");
    if (i.kind == "steer" && !i.scale) fuzz::violated("a steer intervention without a scale");
    if (i.applied && *i.applied < 0) fuzz::violated("an intervention applied a negative number of times");
  }
}

void read_everything(const fs::path& run) {
  for (const bool allow_incomplete : {false, true})
    for (const hooklens::RunCheck check : {hooklens::RunCheck::entries, hooklens::RunCheck::consistent}) {
      try {
        hooklens::RunReader reader(run, allow_incomplete, check);
        if (check == hooklens::RunCheck::consistent) check_interventions(reader.interventions());
        else check_interventions(hooklens::decode_interventions(reader.manifest()));  // a manifest checked entry by entry only
        for (std::size_t i = 0; i < reader.capture_count(); ++i) {
          const hooklens::CaptureEntry& entry = reader.entry(i);
          (void)reader.capture(i);
          try {
            const at::Tensor t = reader.load(i);
            if (t.sizes().vec() != entry.shape) fuzz::violated("a loaded tensor of another shape than its entry");
            (void)at::sum(t.to(at::kFloat)).item<float>();  // every value read
          } catch (const hooklens::Error& e) {  // a shard that does not hold it: the next entry may be fine
            fuzz::check_refusal(e);
          }
        }
      }
      FUZZ_REFUSALS("RunReader")
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fuzz::ScratchDir dir;
  static const bool ready = (fuzz::check_warnings(), true);
  (void)ready;
  const fs::path run = dir.path() / "run", out = dir.path() / "out";
  std::error_code ec;
  fs::remove_all(run, ec);
  fs::remove_all(out, ec);
  fs::create_directories(run / "reports");

  nlohmann::json options;  // null: the defaults
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  for (const fuzz::Part& p : fuzz::split_parts(input, "manifest.json")) {
    if (p.name == "options.json") {
      if (hooklens::json_depth_overflow(p.body, 8) == std::string_view::npos)
        options = nlohmann::json::parse(p.body.begin(), p.body.end(), nullptr, false);
      if (!options.is_object()) options = nullptr;
      continue;
    }
    const bool report = p.name.rfind("reports/", 0) == 0;
    const std::string name = report ? p.name.substr(8) : p.name;
    if (!fuzz::plain_name(name) || name == "reports") continue;
    std::ofstream file(run / (report ? "reports/" + name : name), std::ios::binary | std::ios::trunc);
    file.write(p.body.data(), std::streamsize(p.body.size()));
  }

  read_everything(run);
  try {
    (void)hooklens::read_run_parts(run);
    hooklens::join_run_parts({run}, out / "joined");
    read_everything(out / "joined");
  }
  FUZZ_REFUSALS("the run's parts")
  fs::remove_all(out, ec);
  fuzz::render_all(run, out, options);
  fuzz::analyze_all(run);
  fuzz::view_run(run);
  return 0;
}

// Renderer plugins (kind "renderer"): a finished run directory in, files out — figures (PNG, SVG)
// or the interactive HTML report. `hooklens render RUN --format FORMAT` picks the renderer whose
// formats() lists FORMAT.
#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <vector>

namespace hooklens {

class Renderer {
 public:
  virtual ~Renderer() = default;

  // The formats this renderer writes, e.g. {"png", "svg"} or {"html"}.
  virtual std::vector<std::string> formats() const = 0;

  // Renders the complete run directory `run` (captures, manifest, and RUN/reports/*.json when
  // analyzers ran) into `out` (a directory it creates; existing files of the same names are
  // replaced) in `format`. `options` come from the command line, all optional:
  //   "layers": [int], "heads": [int], "prompts": [int], "steps": [int] restrict what is drawn;
  //   "target": int, a key position for "attention to this token" figures.
  // Returns {"files": [{"file": name relative to out, "shows": one-line description}, ...]}.
  // Throws Error (naming the file) for a damaged run, UsageError for options that do not fit it.
  virtual nlohmann::json render(const std::filesystem::path& run, const std::string& format,
                                const std::filesystem::path& out, const nlohmann::json& options) = 0;
};

}  // namespace hooklens

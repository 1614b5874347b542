// Shared by the run-directory targets (run_directory, analysis_report): what reads a run directory
// for users, compiled into the target: the figures and html_report renderers, the analyzers that
// `hooklens analyze` runs, and the viewer's run model. Each plugin source is compiled with its
// entry point renamed (-Dhooklens_plugin_entry=fuzz_entry_NAME, see fuzz/CMakeLists.txt and
// tests/CMakeLists.txt), so several plugins live in one executable.
#pragma once
#include "fuzz_util.h"
#include "hooklens/analyzer.h"
#include "hooklens/error.h"
#include "hooklens/hooks.h"
#include "hooklens/plugin.h"
#include "hooklens/renderer.h"
#include "hooklens/run.h"
#include "run_model.h"

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <typeinfo>

extern "C" const void* fuzz_entry_figures;
extern "C" const void* fuzz_entry_html_report;
extern "C" const void* fuzz_entry_attention_stats;
extern "C" const void* fuzz_entry_head_detectors;
extern "C" const void* fuzz_entry_token_influence;
extern "C" const void* fuzz_entry_neurons;

namespace fuzz {

// No renderer writes more than this for an input of a few KiB: more is a finding (a figure sized
// by a number in the manifest rather than by what was captured).
constexpr std::uintmax_t kMaxOutputBytes = std::uintmax_t(64) << 20;

inline std::uintmax_t bytes_under(const std::filesystem::path& dir) {
  std::uintmax_t total = 0;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec); !ec && it != std::filesystem::end(it);
       it.increment(ec))
    if (it->is_regular_file(ec)) total += it->file_size(ec);
  return total;
}

// Exceptions other than hooklens::Error (UsageError included) are findings: users see them as a
// crash or an unexplained "std::..." line.
// HOOKLENS_FUZZ_PRINT=1 prints each refusal (to see how far an input gets).
#define FUZZ_REFUSALS(who)                                                                      \
  catch (const hooklens::Error& e) {                                                            \
    fuzz::check_refusal(e);                                                                     \
    if (std::getenv("HOOKLENS_FUZZ_PRINT")) std::fprintf(stderr, "%s: %s\n", std::string(who).c_str(), e.what()); \
  }                                                                                             \
  catch (const std::exception& e) {                                                             \
    fuzz::violated(std::string(who) + " threw " + typeid(e).name() + ": " + e.what());         \
  }

// Renders `run` as png, svg and html into `out` (emptied after each), with `options`.
inline void render_all(const std::filesystem::path& run, const std::filesystem::path& out,
                       const nlohmann::json& options) {
  static const auto figures = plugin_object<hooklens::Renderer>(fuzz_entry_figures);
  static const auto html = plugin_object<hooklens::Renderer>(fuzz_entry_html_report);
  const std::pair<hooklens::Renderer*, const char*> jobs[] = {
      {figures.get(), "png"}, {figures.get(), "svg"}, {html.get(), "html"}};
  for (const auto& [renderer, format] : jobs) {
    try {
      const nlohmann::json result = renderer->render(run, format, out, options);
      if (!result.is_object() || !result.contains("files")) violated(std::string(format) + ": no \"files\" in the result");
    }
    FUZZ_REFUSALS(std::string("render ") + format)
    if (bytes_under(out) > kMaxOutputBytes) violated(std::string(format) + ": more than 64 MiB written");
    std::error_code ec;
    std::filesystem::remove_all(out, ec);
  }
}

// What `hooklens analyze RUN --analyze attention_stats,head_detectors,token_influence,neurons`
// does (analyze_run in framework/src/analysis.cpp, with the analyzers compiled in): each analyzer
// sees the captures of its hook points in manifest order; its report is not written.
inline void analyze_all(const std::filesystem::path& run) {
  const std::shared_ptr<hooklens::Analyzer> analyzers[] = {  // fresh ones: state from a refused input stays there
      plugin_object<hooklens::Analyzer>(fuzz_entry_attention_stats),
      plugin_object<hooklens::Analyzer>(fuzz_entry_head_detectors),
      plugin_object<hooklens::Analyzer>(fuzz_entry_token_influence),
      plugin_object<hooklens::Analyzer>(fuzz_entry_neurons)};
  hooklens::RunReader reader;
  try {
    reader.open(run, false, hooklens::RunCheck::consistent);
  } catch (const hooklens::Error& e) {
    check_refusal(e);
    return;
  }
  const nlohmann::json& m = reader.manifest();
  // analyze_run refuses these (a UsageError, or an Error for the missing sections).
  if (m.contains("capture") && !m["capture"].value("heads", nlohmann::json::array()).empty()) return;
  if (!m.contains("model") || !m.contains("prompts")) return;
  nlohmann::json begin = {{"model", m["model"]}, {"prompts", m["prompts"]}, {"options", nlohmann::json::object()}};
  begin["mode"] = m.contains("generation") ? m["generation"].value("mode", "none") : "none";
  for (const auto& analyzer : analyzers) {
    try {
      analyzer->begin(begin);
      hooklens::HookFilter filter;
      filter.names = analyzer->hooks();
      for (std::size_t i = 0; i < reader.capture_count(); ++i) {
        const hooklens::CaptureEntry& entry = reader.entry(i);
        if (!filter.matches(entry.hook, entry.context)) continue;
        const at::Tensor t = reader.load(i);
        analyzer->observe(entry.hook, entry.context, t.scalar_type() == at::kFloat ? t : t.to(at::kFloat));
      }
      const nlohmann::json report = analyzer->finish(m);
      (void)report.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
    FUZZ_REFUSALS("an analyzer")
  }
}

// The viewer's RunModel (hooklens-view RUN): its manifest reading, the reports' head tables, and
// the grids of the first prompts, steps and layers.
inline void view_run(const std::filesystem::path& run) {
  try {
    view::RunModel model(run);
    for (int p = 0; p < std::min(model.prompt_count(), 3); ++p) {
      (void)model.prompt_length(p);
      for (int s = 0; s < std::min(model.step_count(), 3); ++s) {
        (void)model.tokens(p, s);
        (void)model.new_positions(p, s);
        for (int l = 0; l < std::min(model.n_layers(), 4); ++l) {
          (void)model.pattern(p, s, l);
          (void)model.neurons(p, s, l);
        }
      }
    }
  }
  FUZZ_REFUSALS("the viewer's run model")
}

// A part name the targets write: a plain file name, or reports/ and a plain file name.
inline bool plain_name(const std::string& name) {
  return !name.empty() && name.size() < 64 && name != "." && name != ".." &&
         name.find_first_of(std::string("/\0", 2)) == std::string::npos;
}

}  // namespace fuzz

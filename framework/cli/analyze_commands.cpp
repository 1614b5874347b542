// `hooklens analyze RUN` (analyzer plugins offline over a run directory), `hooklens render RUN`
// (renderer plugins: figures, the HTML report) and `hooklens merge` (the parts of a run over several
// machines joined into one run directory).
#include "cli.h"

#include <hooklens/analysis.h>
#include <hooklens/error.h>
#include <hooklens/plugin.h>
#include <hooklens/renderer.h>
#include <hooklens/run_parts.h>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <iostream>
#include <memory>

namespace hooklens::cli {
namespace {

namespace fs = std::filesystem;

struct AnalyzeOptions {
  std::string run;
  std::vector<std::string> analyze, options;
};

struct MergeOptions {
  std::vector<std::string> parts;
  std::string out;
};

struct RenderOptions {
  std::string run, format, out;
  std::vector<int> layers, heads, prompts, steps;
  std::int64_t target = -1;
};

}  // namespace

void add_analyze_commands(CLI::App& app) {
  auto a = std::make_shared<AnalyzeOptions>();
  CLI::App* analyze = app.add_subcommand(
      "analyze", "Run analyzer plugins over a finished run directory; reports go to RUN/reports/NAME.json");
  analyze->add_option("run", a->run, "Run directory (made by hooklens capture or generate)")->required();
  analyze->add_option("--analyze", a->analyze, "Analyzers (comma-separated, e.g. attention_stats,head_detectors)")
      ->required()
      ->delimiter(',');
  analyze->add_option("--analyze-option", a->options, "An analyzer's option, NAME.KEY=VALUE (repeatable)");
  analyze->callback([a] {
    PluginRegistry registry;
    AnalyzerSet analyzers(registry, a->analyze, a->options);
    print_reports(analyze_run(a->run, analyzers), std::cout);
  });

  auto m = std::make_shared<MergeOptions>();
  CLI::App* merge = app.add_subcommand(
      "merge", "Join the parts of a run over several machines (`capture --local-out`: each machine's --out) into one "
               "run directory");
  merge->add_option("parts", m->parts, "The directories holding the parts (part-rank*.json and their shards)")
      ->required()
      ->check(CLI::ExistingDirectory);
  merge->add_option("--out", m->out, "The run directory to write (new; shards are hard-linked when they can be)")
      ->required();
  merge->callback([m] {
    std::vector<fs::path> parts(m->parts.begin(), m->parts.end());
    const std::size_t captures = join_run_parts(parts, m->out).at("captures").size();
    std::cout << fmt::format("run directory: {}\n  {} captures from {} director{}; manifest {}\n", m->out, captures,
                             parts.size(), parts.size() == 1 ? "y" : "ies", (fs::path(m->out) / "manifest.json").string());
  });

  auto r = std::make_shared<RenderOptions>();
  CLI::App* render = app.add_subcommand(
      "render", "Draw a finished run directory: figures (png, svg, pdf) or the interactive HTML report (html)");
  render->add_option("run", r->run, "Run directory")->required();
  render->add_option("--format", r->format, "png, svg, pdf or html")->required();
  render->add_option("--out", r->out, "Output directory (default RUN/figures, or RUN/report for html)");
  render->add_option("--layers", r->layers, "Only these layers (comma-separated)")->delimiter(',');
  render->add_option("--heads", r->heads, "Also these single heads (comma-separated)")->delimiter(',');
  render->add_option("--prompts", r->prompts, "Only these prompts (indices, comma-separated)")->delimiter(',');
  render->add_option("--steps", r->steps, "Generation or diffusion steps to show (comma-separated)")->delimiter(',');
  render->add_option("--target", r->target, "A key position: figures of the attention every token gives it");
  render->callback([r] {
    nlohmann::json options = nlohmann::json::object();
    if (!r->layers.empty()) options["layers"] = r->layers;
    if (!r->heads.empty()) options["heads"] = r->heads;
    if (!r->prompts.empty()) options["prompts"] = r->prompts;
    if (!r->steps.empty()) options["steps"] = r->steps;
    if (r->target >= 0) options["target"] = r->target;
    PluginRegistry registry;
    auto renderer = renderer_for(registry, r->format);
    const fs::path out = r->out.empty() ? default_render_dir(r->run, r->format) : fs::path(r->out);
    const nlohmann::json result = renderer->render(r->run, r->format, out, options);
    std::size_t n = 0;
    if (result.contains("files"))
      for (const auto& f : result["files"]) {
        std::cout << fmt::format("  {:<40} {}\n", f.value("file", ""), f.value("shows", ""));
        ++n;
      }
    std::cout << fmt::format("wrote {} file(s) to {}\n", n, out.string());
  });
}

}  // namespace hooklens::cli

// `hooklens analyze RUN` (analyzer plugins offline over a run directory), `hooklens render RUN`
// (renderer plugins: figures, the HTML report) and `hooklens merge` (the parts of a run over several
// machines joined into one run directory).
#include "cli.h"

#include <hooklens/analysis.h>
#include <hooklens/error.h>
#include <hooklens/json_read.h>
#include <hooklens/model.h>
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
  std::string run, model, adapter, spec;
  std::vector<std::string> analyze, options;
};

// The model named by `hooklens analyze --model`, refused unless it has the shapes of the run's.
std::shared_ptr<Model> model_of_run(const PluginRegistry& registry, const AnalyzeOptions& a) {
  const fs::path manifest_file = fs::path(a.run) / "manifest.json";
  const nlohmann::json manifest = read_json_file(manifest_file);
  if (!manifest.is_object() || !manifest.contains("model"))
    throw Error(fmt::format("{}: the run manifest has no \"model\"", manifest_file.string()));
  const ModelInfo run_model = ModelInfo::from_json(manifest.at("model"));
  LoadOptions load;
  load.spec = a.spec;
  auto model = open_model(registry, a.model, a.adapter, load);
  const ModelInfo& info = model->info();
  if (info.n_layers != run_model.n_layers || info.d_model != run_model.d_model || info.vocab_size != run_model.vocab_size)
    throw UsageError(fmt::format("--model {}: {} layers, d_model {}, vocabulary {}; the run {} was made by a model with {} "
                                 "layers, d_model {}, vocabulary {}",
                                 a.model, info.n_layers, info.d_model, info.vocab_size, a.run, run_model.n_layers,
                                 run_model.d_model, run_model.vocab_size));
  return model;
}

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
  analyze->add_option("--model", a->model,
                      "The run's model, for analyzers that compute with its weights (logit_lens); must have its shapes");
  analyze->add_option("--adapter", a->adapter, "Adapter plugin for --model instead of the one chosen from config.json");
  analyze->add_option("--spec", a->spec, "Architecture spec of a --model state dict (as for capture)");
  analyze->callback([a] {
    PluginRegistry registry;
    if (a->model.empty() && (!a->adapter.empty() || !a->spec.empty())) throw UsageError("--adapter and --spec need --model");
    std::shared_ptr<Model> model;  // outlives the analyzers
    AnalyzerSet analyzers(registry, a->analyze, a->options);
    if (!a->model.empty()) {
      model = model_of_run(registry, *a);
      analyzers.use_model(*model);
    }
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

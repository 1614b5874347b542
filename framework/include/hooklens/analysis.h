// Running analyzer plugins: live on a model's hooks, or offline over a run directory. A failing
// analyzer is reported (warning on stderr, "error" in its report) and disabled; the others and the
// capture go on.
#pragma once
#include <hooklens/analyzer.h>
#include <hooklens/plugin.h>

#include <filesystem>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

namespace hooklens {

class Renderer;
class RunReader;

// A report AnalyzerSet wrote, and the lines of its "headline" (Analyzer::finish) for a front end to
// show after the file's path.
struct WrittenReport {
  std::filesystem::path file;
  std::vector<std::string> headline;
};
// "report: FILE", then each headline line indented: what `capture`, `generate` and `analyze` print.
void print_reports(const std::vector<WrittenReport>& reports, std::ostream& out);

class AnalyzerSet {
 public:
  // `names`: analyzer plugins; `options`: "NAME.KEY=VALUE" strings (--analyze-option), each for one
  // of the named analyzers. Throws UsageError for an unknown analyzer or a malformed option.
  AnalyzerSet(const PluginRegistry& registry, const std::vector<std::string>& names,
              const std::vector<std::string>& options);
  ~AnalyzerSet();

  bool empty() const { return entries_.empty(); }
  // Hands every analyzer the model (Analyzer::use_model), before begin().
  void use_model(const Model& model);
  std::vector<Analyzer::ExtraPrompt> extra_prompts(const ModelInfo& model) const;

  // `run`: {"model", "prompts", "mode"}; each analyzer also gets its "options". An analyzer that
  // rejects its options with UsageError stops the run (the user must fix the command line).
  void begin(const nlohmann::json& run);
  // Live: every analyzer listens to its own hook points on `hooks`.
  void attach(HookSet& hooks);
  // Offline: one capture, given to the analyzers that read this hook point.
  void observe(std::string_view hook, const CaptureContext& ctx, const at::Tensor& tensor);
  // The first analyzer that reads hook point `name` ("" when none does).
  std::string reader_of(std::string_view name) const;
  // Runs over several processes (Analyzer::merges_state): UsageError naming every analyzer that
  // cannot merge its state.
  void require_mergeable() const;
  // Every analyzer's state (a failed one's: its error), as CBOR bytes for the process group.
  std::string save_states() const;
  // Adds another rank's save_states() (the same analyzers, begun with the same run). An analyzer
  // that failed there, or whose state does not merge, is reported and disabled here.
  void merge_states(const std::string& states, int rank);
  // Finishes every analyzer and writes RUN/reports/NAME.json (atomically); returns what it wrote.
  std::vector<WrittenReport> finish(const nlohmann::json& manifest, const std::filesystem::path& run_dir);

 private:
  struct Entry;
  void fail(Entry& entry, const std::string& what) noexcept;
  std::vector<std::unique_ptr<Entry>> entries_;
};

// Runs the analyzers over a complete run directory in manifest order; writes RUN/reports/*.json.
// A run captured with --heads (some heads only) is a UsageError: analyzers number heads by index.
std::vector<WrittenReport> analyze_run(const std::filesystem::path& run_dir, AnalyzerSet& analyzers,
                                       bool show_progress = true);

// The renderer plugin whose formats() include `format` (png, svg, pdf, html); UsageError naming the
// formats there are when none does.
std::shared_ptr<Renderer> renderer_for(const PluginRegistry& registry, const std::string& format);
// Where a format's files go by default: RUN/figures, or RUN/report for html.
std::filesystem::path default_render_dir(const std::filesystem::path& run_dir, const std::string& format);

}  // namespace hooklens

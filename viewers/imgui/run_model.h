// The data the viewer's panels show, read from a run directory on demand: a layer's attention
// pattern (or MLP activations) for one prompt and step is loaded when a panel asks for it and kept
// in a small cache, never the whole run. The only viewer file that sees torch tensors. pattern() and
// neurons() may be called from several threads (the UI and the thumbnail loader); the rest is
// fixed once the manifest is read.
#pragma once
#include <hooklens/generation_mode.h>

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace hooklens {
class RunReader;
struct RunGeneration;
}

namespace view {

// A dense [heads, rows, cols] block of floats; cells nobody captured are NaN.
struct Grid {
  int heads = 0, rows = 0, cols = 0;
  int first_row = 0;  // absolute position of row 0 (a decode step's activations start at its token)
  std::vector<float> values;
  float at(int head, int row, int col) const { return values[(std::size_t(head) * rows + row) * cols + col]; }
  // The mean over heads of one cell (NaN if any head lacks it).
  float mean_at(int row, int col) const;
};

// One analyzer report's per-head table (RUN/reports/NAME.json "heads").
struct HeadTable {
  std::string name;
  std::vector<std::string> columns;
  std::vector<std::vector<nlohmann::json>> rows;  // one value per column (null when absent)
};

// What the panels read: a run directory (RunModel) or a model generating now (LiveModel). Every
// method may be called from the UI and the thumbnail thread.
class PanelModel {
 public:
  virtual ~PanelModel() = default;
  virtual std::string title() const = 0;  // the run directory, or the live model
  virtual hooklens::GenerationMode generation_mode() const = 0;
  virtual int n_layers() const = 0;
  virtual int n_heads() const = 0;
  virtual int prompt_count() const = 0;
  virtual int step_count() const = 0;
  virtual bool has_neurons() const = 0;
  // The tokens shown at `step` of prompt `prompt` (for generation: the sequence after the step).
  virtual std::vector<std::string> tokens(int prompt, int step) const = 0;
  // Positions a step added: the committed ones for diffusion, the chosen token for generation.
  virtual std::vector<int> new_positions(int prompt, int step) const = 0;
  virtual int prompt_length(int prompt) const = 0;
  // The attention pattern of `layer` at `step` as [heads, query, key] over absolute positions; for
  // autoregressive runs the rows of steps 0..step together (each decode step adds one query row).
  // Throws hooklens::Error naming the file when a capture cannot be read.
  virtual std::shared_ptr<const Grid> pattern(int prompt, int step, int layer) = 0;
  // blocks.L.mlp.hook_post as [1, position, neuron] (null if not captured at this step); like
  // pattern(), autoregressive runs give the rows of steps 0..step.
  virtual std::shared_ptr<const Grid> neurons(int prompt, int step, int layer) = 0;
  virtual const std::vector<HeadTable>& head_tables() const = 0;
  // Errors met while reading reports (a damaged report is skipped, not fatal).
  virtual const std::vector<std::string>& warnings() const = 0;
  // How the run changed the model, one line each ("TEXT (kind, site, source, N hook events)"):
  // what the panels show is the changed model's. None for a live model.
  virtual const std::vector<std::string>& interventions() const {
    static const std::vector<std::string> none;
    return none;
  }

  // Live data only: grows while the model runs. The UI polls version() each frame and rereads
  // whatever it shows when it changed.
  virtual unsigned version() const { return 0; }
  virtual bool running() const { return false; }
  virtual void stop() {}
  virtual std::string status() const { return {}; }  // e.g. "generating: step 3", or the error that ended it
  // Why `step` has no data although it exists ("" when there is no special reason).
  virtual std::string why_missing(int step) const { return (void)step, std::string(); }
};

// The "heads" tables of the analyzer reports REPORTS_DIR/*.json (sorted by name; nested objects
// become "outer.inner" columns). A report that cannot be read is skipped and said in `problems`.
std::vector<HeadTable> read_head_tables(const std::filesystem::path& reports_dir, std::vector<std::string>& problems);

class RunModel : public PanelModel {
 public:
  // Reads the manifest; throws hooklens::Error naming the file when it is missing or damaged.
  explicit RunModel(const std::filesystem::path& dir);
  ~RunModel();

  std::string title() const override { return dir_.string(); }
  hooklens::GenerationMode generation_mode() const override { return mode_; }
  int n_layers() const override { return n_layers_; }
  int n_heads() const override { return n_heads_; }
  int prompt_count() const override { return int(prompts_.size()); }
  int step_count() const override { return step_count_; }
  bool has_neurons() const override { return !neuron_index_.empty(); }

  std::vector<std::string> tokens(int prompt, int step) const override;
  std::vector<int> new_positions(int prompt, int step) const override;
  int prompt_length(int prompt) const override;
  std::shared_ptr<const Grid> pattern(int prompt, int step, int layer) override;
  std::shared_ptr<const Grid> neurons(int prompt, int step, int layer) override;
  const std::vector<HeadTable>& head_tables() const override { return tables_; }
  const std::vector<std::string>& warnings() const override { return warnings_; }
  const std::vector<std::string>& interventions() const override { return interventions_; }

 private:
  using Where = std::tuple<int, int, int>;  // prompt, step, layer
  std::shared_ptr<const Grid> cached(const std::string& kind, const Where& where);
  void remember(const std::string& kind, const Where& where, std::shared_ptr<const Grid> grid);
  // The captures of a layer in `index` (patterns [1, heads, q, k] or activations [1, pos, n] as one
  // head) placed at their offsets; for autoregressive runs steps 0..step together.
  std::shared_ptr<const Grid> read_grid(const std::map<Where, std::vector<std::size_t>>& index, int prompt, int step, int layer);
  void generated_tokens(int step, std::vector<std::string>& out) const;  // appends

  std::filesystem::path dir_;
  std::unique_ptr<hooklens::RunReader> reader_;
  hooklens::GenerationMode mode_ = hooklens::GenerationMode::none;
  const hooklens::RunGeneration* generation_ = nullptr;  // reader_'s, decoded once
  std::optional<std::int64_t> model_mask_id_;
  int n_layers_ = 0, n_heads_ = 0, step_count_ = 1;
  struct Prompt {
    std::vector<std::string> tokens;
  };
  std::vector<Prompt> prompts_;
  std::map<Where, std::vector<std::size_t>> pattern_index_, neuron_index_;  // capture indices
  std::list<std::pair<std::pair<std::string, Where>, std::shared_ptr<const Grid>>> cache_;  // most recent first
  std::vector<HeadTable> tables_;
  std::vector<std::string> warnings_;
  std::vector<std::string> interventions_;
  std::mutex mutex_;  // guards reader_ and cache_
};

}  // namespace view

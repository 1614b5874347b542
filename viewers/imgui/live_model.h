// Live mode: runs a model through its adapter on a worker thread and shows its attention patterns
// (and MLP activations) as the steps arrive. Hooks copy each capture, as float16, into a store the
// panels read; step_count() and version() grow after each finished step, so the UI (which polls
// version() every frame) never waits on the model and never sees a half-finished step. Analyzers
// run live on the same hooks; their tables appear when the generation ends.
#pragma once
#include "run_model.h"

#include <hooklens/generation_mode.h>
#include <hooklens/run_session.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace view {

struct LiveOptions {
  std::filesystem::path model;
  std::filesystem::path tokenizer;                // overrides the model's own ("" = the model's)
  std::string prompt;                             // text, or
  std::vector<std::int64_t> prompt_ids;           // token ids
  bool chat = false;                              // the prompt is one user message in the model's chat template
  int max_new_tokens = 16;                        // autoregressive models
  int gen_length = 32, steps = 32, block_length = 0;  // masked diffusion (every layer bidirectional)
  std::vector<std::string> analyze{"attention_stats", "head_detectors"};
  bool neurons = true;                            // keep blocks.*.mlp.hook_post too
  double pace = 0;                                // seconds: the least time each step stays the newest
  int stop_after = 0;                             // press Stop once this many steps finished (0: never)
  std::size_t memory_mib = 4096;                  // diffusion: older steps are dropped beyond this
  hooklens::RunSettings::InterventionOptions interventions;  // as `hooklens generate` takes them
};

class LiveModel : public PanelModel {
 public:
  // Loads the model, reads the prompt and checks the generation through a RunSession (throws
  // hooklens::Error / UsageError, one line, as `hooklens generate` would), then starts generating.
  explicit LiveModel(const LiveOptions& options);
  ~LiveModel() override;  // stops and joins the worker

  std::string title() const override;
  hooklens::GenerationMode generation_mode() const override { return mode_; }
  int n_layers() const override { return n_layers_; }
  int n_heads() const override { return n_heads_; }
  int prompt_count() const override { return 1; }
  int step_count() const override;
  bool has_neurons() const override { return has_neurons_; }
  std::vector<std::string> tokens(int prompt, int step) const override;
  std::vector<int> new_positions(int prompt, int step) const override;
  int prompt_length(int prompt) const override { return int(prompt_ids_.size()); }
  std::shared_ptr<const Grid> pattern(int prompt, int step, int layer) override;
  std::shared_ptr<const Grid> neurons(int prompt, int step, int layer) override;
  // Empty until the generation has ended (the worker writes them once, before running() turns false).
  const std::vector<HeadTable>& head_tables() const override { return running_.load() ? no_tables_ : tables_; }
  const std::vector<std::string>& warnings() const override { return no_warnings_; }
  std::string why_missing(int step) const override;

  unsigned version() const override { return version_.load(); }
  bool running() const override { return running_.load(); }
  void stop() override { stop_ = true; }
  std::string status() const override;

 private:
  struct Piece {  // one capture of batch 0: [heads, rows, cols] at (q0, k0), float16 bits
    std::int64_t heads, rows, cols, q0, k0;
    std::vector<std::uint16_t> halves;
  };
  // (step, layer) -> captures; shared so a reader can convert them without holding mutex_.
  using Store = std::map<std::pair<int, int>, std::vector<std::shared_ptr<const Piece>>>;
  struct Step {
    std::vector<std::int64_t> ids;  // the whole sequence after the step
    std::vector<int> fresh;         // positions the step added
  };
  static hooklens::RunSettings settings(const LiveOptions& options);
  void work();
  void keep(Store& store, int step, int layer, Piece piece);
  void finish_step(Step step);
  void drop_old_steps();  // with mutex_ held
  std::string dropped_note() const;  // for the status, with mutex_ held: "" or which steps were dropped
  void wait_for_pace();
  void finish_analyzers(const nlohmann::json& generation);  // reads their tables into tables_
  std::string token_text(std::int64_t id) const;
  // The captures of steps first_step..step of a layer (with mutex_ held), and them as one grid.
  std::vector<std::shared_ptr<const Piece>> pieces(const Store& store, int first_step, int step, int layer) const;
  static std::shared_ptr<const Grid> assemble(const std::vector<std::shared_ptr<const Piece>>& pieces);

  LiveOptions options_;
  std::unique_ptr<hooklens::RunSession> session_;  // the model, the prompt, the analyzers
  hooklens::GenerationMode mode_ = hooklens::GenerationMode::none;
  int n_layers_ = 0, n_heads_ = 0;
  bool has_neurons_ = false;
  std::int64_t mask_id_ = -1;
  std::vector<std::int64_t> prompt_ids_;
  std::vector<HeadTable> tables_;  // written by the worker only, before running_ turns false
  const std::vector<HeadTable> no_tables_;
  const std::vector<std::string> no_warnings_;
  std::chrono::steady_clock::time_point last_step_;  // worker only

  mutable std::mutex mutex_;  // guards everything below except the atomics
  Store patterns_, neurons_;
  std::size_t kept_bytes_ = 0;
  int first_kept_step_ = 0;   // diffusion steps before it were dropped (memory budget)
  std::vector<Step> steps_;   // finished steps
  std::string status_;
  std::atomic<unsigned> version_{0};
  std::atomic<bool> running_{true}, stop_{false};
  std::thread worker_;  // last: started once everything above is initialised
};

}  // namespace view

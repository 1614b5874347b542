// Live mode: runs a model through its adapter on a worker thread and shows its attention patterns
// as the steps arrive. A hook on blocks.*.attn.hook_pattern copies each pattern into a store the
// panels read; step_count() and version() grow after each finished step, so the UI (which polls
// version() every frame) never waits on the model and never sees a half-finished step.
#pragma once
#include "run_model.h"

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace hooklens {
class Model;
class PluginRegistry;
struct SamplingOptions;
struct DiffusionOptions;
}

namespace view {

struct LiveOptions {
  std::filesystem::path model;
  std::string prompt;
  int max_new_tokens = 16;                        // autoregressive models
  int gen_length = 32, steps = 32, block_length = 0;  // masked diffusion (every layer bidirectional)
};

class LiveModel : public PanelModel {
 public:
  // Loads the model and tokenises the prompt (throws hooklens::Error / UsageError naming the model
  // directory), then starts generating.
  explicit LiveModel(const LiveOptions& options);
  ~LiveModel() override;  // stops and joins the worker

  std::string title() const override;
  const std::string& mode() const override { return mode_; }
  int n_layers() const override { return n_layers_; }
  int n_heads() const override { return n_heads_; }
  int prompt_count() const override { return 1; }
  int step_count() const override;
  bool has_neurons() const override { return false; }
  std::vector<std::string> tokens(int prompt, int step) const override;
  std::vector<int> new_positions(int prompt, int step) const override;
  int prompt_length(int prompt) const override { return int(prompt_ids_.size()); }
  std::shared_ptr<const Grid> pattern(int prompt, int step, int layer) override;
  std::shared_ptr<const Grid> neurons(int, int, int) override { return nullptr; }
  const std::vector<HeadTable>& head_tables() const override { return no_tables_; }
  const std::vector<std::string>& warnings() const override { return no_warnings_; }

  unsigned version() const override { return version_.load(); }
  bool running() const override { return running_.load(); }
  void stop() override { stop_ = true; }
  std::string status() const override;

 private:
  struct Piece {  // one captured pattern: [heads, rows, cols] at (q0, k0)
    std::int64_t heads, rows, cols, q0, k0;
    std::vector<float> values;
  };
  struct Step {
    std::vector<std::int64_t> ids;  // the whole sequence after the step
    std::vector<int> fresh;         // positions the step added
  };
  hooklens::SamplingOptions sampling() const;
  hooklens::DiffusionOptions diffusion() const;
  void work();
  void finish_step(Step step);
  std::string token_text(std::int64_t id) const;

  LiveOptions options_;
  std::unique_ptr<hooklens::PluginRegistry> registry_;
  std::shared_ptr<hooklens::Model> model_;
  std::string mode_;
  int n_layers_ = 0, n_heads_ = 0;
  std::int64_t mask_id_ = -1;
  std::vector<std::int64_t> prompt_ids_;
  const std::vector<HeadTable> no_tables_;
  const std::vector<std::string> no_warnings_;

  mutable std::mutex mutex_;  // guards everything below except the atomics
  std::map<std::pair<int, int>, std::vector<Piece>> pieces_;  // (step, layer)
  std::vector<Step> steps_;   // finished steps
  std::string status_;
  std::atomic<unsigned> version_{0};
  std::atomic<bool> running_{true}, stop_{false};
  std::thread worker_;  // last: started once everything above is initialised
};

}  // namespace view

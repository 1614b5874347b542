// One capture session: a model, its prompts, the hooks that capture and intervene, the analyzers,
// and (for `hooklens capture|generate`) the run directory written through the run_writer sink.
// The CLI binds its options to RunSettings and calls capture() or generate(); the viewer's live
// mode uses the same session for everything but the generation loop (its own hooks, no run
// directory). Every check runs once, here, before anything is written.
#pragma once
#include <hooklens/generation_mode.h>

#include <nlohmann/json_fwd.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hooklens {

class AnalyzerSet;
class HookSet;
class Interventions;
class Model;
class ProcessGroup;
struct DistributedEnv;
class PluginRegistry;
struct ModelInfo;
struct SamplingOptions;
struct DiffusionOptions;

// What a session does, as plain values: the CLI's options bind to these fields directly.
struct RunSettings {
  RunSettings();  // the generation defaults are SamplingOptions' and DiffusionOptions' (generate.h)

  // The model (open_model's LoadOptions).
  std::string model, adapter, tokenizer, spec;
  std::uint64_t resident_weights_mib = 0;
  int threads = 0;  // compute threads (0 = one per core)

  // Prompts: each --prompt, each --prompt-ids list, then --text-file's sequences.
  std::vector<std::string> prompts, prompt_ids;
  bool chat = false;  // each prompt is one user message in the model's chat template
  std::string text_file;
  std::int64_t seq_len = 0;
  int max_sequences = 8;

  // What to capture (no_hooks: nothing) and how to slice it.
  static constexpr std::string_view no_hooks = "none";  // --hooks none: the run records no captures
  std::vector<std::string> hooks;
  std::vector<int> layers, heads, capture_steps, capture_blocks;
  std::string query_range, key_range;
  std::vector<std::string> analyze, analyze_options, render;
  bool captures() const { return !(hooks.size() == 1 && hooks[0] == no_hooks); }

  // Interventions (hooklens/intervention.h, docs/interventions.md): zero-ablation (L.H or a site),
  // patching from another run, steering, mean- and resample-ablation over a dataset.
  struct InterventionOptions {
    std::vector<std::string> ablate, patch, steer, mean_ablate, resample_ablate;
    std::string patch_from, ablate_from;  // a run directory; a run directory or a text file
    std::int64_t ablate_seq_len = 64;     // a text --ablate-from: tokens per sequence
    int ablate_sequences = 64;            // and sequences
  } interventions;

  // The run directory.
  std::string out, dtype = "F32";  // out "" = runs/COMMAND-DATE-TIME
  bool overwrite = false;
  std::size_t queue_mib = 256;

  int batch_size = 1;  // capture: prompts per forward pass

  // Runs over several processes (`capture` launched with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
  // in the environment; docs/distributed.md).
  int timeout_seconds = 300;  // a rank that does not join, or is silent, this long stops the run
  bool resume = false;        // keep the captures a failed run left verified; capture the rest
  bool local_out = false;     // --out is each machine's own storage: `hooklens merge` joins the parts

  // Generation. Unset temperature/top_k/top_p: greedy (autoregressive), no noise (diffusion).
  std::optional<double> temperature;
  std::uint64_t seed = 0;
  struct Autoregressive {
    int max_new_tokens = 0;
    std::optional<int> top_k;
    std::optional<double> top_p;
    bool no_stop_at_eos = false;
  } autoregressive;
  struct Diffusion {
    int gen_length = 0, steps = 0, block_length = 0;
    double cfg_scale = 0;
    std::string remasking = "low_confidence", confidence_dtype = "float32";
    std::int64_t mask_id = -1;  // -1: the model's
    bool stop_at_eos = false;
  } diffusion;
};

// A prompt of the session, as the manifest lists it.
struct SessionPrompt {
  std::string text;  // empty for --prompt-ids
  std::vector<std::int64_t> ids;
  std::string source = "prompt";  // or "text-file FILE sequence N (tokens A-B)", or an analyzer's extra prompt
};

class RunSession {
 public:
  enum class Kind { capture, generate };  // one forward pass per prompt, or a generation (one prompt)

  // Loads the model, reads and checks the prompts, the hook filter, the ablations and the slicing,
  // and starts the analyzers (UsageError / Error, one line). Nothing is written yet.
  RunSession(RunSettings settings, Kind kind);
  ~RunSession();
  RunSession(const RunSession&) = delete;
  RunSession& operator=(const RunSession&) = delete;

  // none for capture; the model's (generation_mode_of) for generate.
  GenerationMode mode() const { return mode_; }
  Model& model() { return *model_; }
  const std::vector<SessionPrompt>& prompts() const { return prompts_; }
  // The interventions (and, once a run is open, the analyzers and the sink's captures).
  HookSet& hooks() { return *hooks_; }
  AnalyzerSet* analyzers() { return analyzers_.get(); }  // null without --analyze

  // The generation options of mode(), checked (options, context, mask token, capture schedule):
  // what generate() runs with. UsageError on a bad one.
  SamplingOptions sampling() const;
  DiffusionOptions diffusion() const;
  void check_generation() const;

  nlohmann::json prompts_json() const;
  // The manifest (all but the captures, which the sink lists) of a run that produced `generation`;
  // `counted`: with how often each intervention applied (not known before the run).
  nlohmann::json manifest(const nlohmann::json& generation, bool counted = true) const;

  // Write the run directory (stdout: where it is and the reports; stderr: progress and timing).
  // Kind::capture: one forward pass per prompt, --batch-size at a time. In a run over several
  // processes each rank captures its share of the prompts, and rank 0 completes the run.
  void capture();
  void generate();  // Kind::generate: autoregressive or masked diffusion, by mode()

 private:
  struct Run;
  void load();  // the constructor's work, after the process group is joined
  // What the run will do, from the options as given (check_generation validates them): its
  // generation steps, diffusion blocks and new tokens (1, 0, 0 for one forward pass).
  struct Schedule {
    int steps = 1, blocks = 0;
    std::int64_t new_tokens = 0;
  };
  Schedule schedule() const;
  void check_capture_schedule() const;
  void start_interventions();
  void start_analyzers();
  void open_sink(nlohmann::json options);
  void attach_sink();
  template <class Work>
  void run(Work work);
  // Forward passes over the prompts `indices` (ascending): consecutive prompts of one length go
  // together, up to --batch-size; after each batch, `done(first, end, tokens)`.
  template <class Done>
  std::size_t forward_prompts(const std::vector<std::size_t>& indices, Done done);
  void capture_across_ranks();
  // Rank 0 of a --resume: the prompts already done (`mine`: this run's manifest sections).
  std::vector<std::size_t> resume_parts(const nlohmann::json& mine);
  void render(const std::string& out);
  void check_resumable_analyzers() const;
  void generate_tokens();
  void generate_diffusion();

  RunSettings settings_;
  Kind kind_;
  GenerationMode mode_ = GenerationMode::none;
  std::unique_ptr<PluginRegistry> registry_;  // first: outlives every plugin object below
  std::unique_ptr<Run> run_;  // the sink, the renderers, the slicing and the timing
  std::shared_ptr<Model> model_;
  std::vector<SessionPrompt> prompts_;
  std::unique_ptr<Interventions> interventions_;  // before hooks_: its hooks point into it
  std::unique_ptr<HookSet> hooks_;
  std::unique_ptr<AnalyzerSet> analyzers_;
  std::unique_ptr<DistributedEnv> env_;   // from the environment; null for a plain single process
  std::unique_ptr<ProcessGroup> group_;   // a run over several processes (or --resume): null otherwise
};

}  // namespace hooklens

// Analyzer plugins (kind "analyzer"): captures in, one JSON report out.
//
// An analyzer names the hook points it reads and sees every capture of them exactly once, in event
// order (prompt by prompt; within a prompt, forward pass by forward pass; within a pass, layer by
// layer), either live on the model's thread during `hooklens capture|generate --analyze NAME` or
// offline from a run directory (`hooklens analyze RUN --analyze NAME`, manifest order, which is the
// same order). It keeps bounded state — statistics, not tensors — and its report is written to
// RUN/reports/NAME.json. An analyzer that throws is reported and disabled; the run goes on.
#pragma once
#include <hooklens/hooks.h>
#include <hooklens/model.h>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hooklens {

class Analyzer {
 public:
  virtual ~Analyzer() = default;

  // Hook point names (globs, or "re:REGEX", as in HookFilter::names) whose captures it reads.
  virtual std::vector<std::string> hooks() const = 0;

  // Token sequences the analyzer wants run besides the user's prompts when it runs live on
  // `hooklens capture` (head_detectors: a repeated random sequence for induction). They become
  // prompts of the run (captured like the others, so offline analysis sees them too), with
  // `source` saying what they are. `options` as in begin().
  struct ExtraPrompt {
    std::vector<std::int64_t> ids;
    std::string source;
  };
  virtual std::vector<ExtraPrompt> extra_prompts(const ModelInfo& model, const nlohmann::json& options) const {
    (void)model, (void)options;
    return {};
  }

  // The model the captures come from, before begin(): live runs always give it, `hooklens analyze`
  // when the user names it with --model (its shapes checked against the run's). It outlives the
  // analyzer's last finish(). Analyzers that compute with the weights (logit_lens: Model::unembed)
  // keep it; others ignore it.
  virtual void use_model(const Model& model) { (void)model; }

  // Starts a run. `run` holds:
  //   "model":   ModelInfo::to_json() (ModelInfo::from_json gives it back typed);
  //   "prompts": per prompt {"text", "ids", "tokens" (display strings), "source"} where source is
  //              "prompt", "text-file FILE sequence N" or an extra prompt's source;
  //   "mode":    "none" (one forward per prompt), "autoregressive" or "masked_diffusion";
  //   "options": this analyzer's options, {"KEY": "VALUE"} strings from --analyze-option NAME.KEY=VALUE.
  // Throws UsageError for options it does not know or cannot parse.
  virtual void begin(const nlohmann::json& run) = 0;

  // One capture: `tensor` is float32 on the CPU and valid only during the call (copy what you
  // keep). Patterns may be sliced: ctx.query_offset / ctx.key_offset place row 0 / column 0.
  virtual void observe(std::string_view hook, const CaptureContext& ctx, const at::Tensor& tensor) = 0;

  // Ends the run and returns the report. `manifest` is the run's manifest: begin()'s "model" and
  // "prompts", and "generation" (for generation runs: the generated ids, and per step the token
  // chosen or, for masked diffusion, the sequence after the step). A report may hold "headline", a
  // list of short strings (what a user should see first, e.g. the best head of each kind): front
  // ends print them after the report's path.
  virtual nlohmann::json finish(const nlohmann::json& manifest) = 0;

  // Runs over several processes (docs/distributed.md): each rank's analyzer is begun with the
  // whole run (every prompt) but observes only the captures of that rank's prompts, with their
  // indices in the whole run. Rank 0 then merges into its own analyzer the state every other rank
  // saved, in rank order, and calls finish(): the report must equal the one a single process writes
  // over all the prompts (counts exactly, sums within rounding), however the prompts were split and
  // in whatever order states are merged. An analyzer that cannot merge keeps merges_state() false
  // and is refused in such runs (`hooklens analyze` on the finished run still works).
  virtual bool merges_state() const { return false; }
  // What observe() accumulated since begin(), bounded like the state itself. It travels as CBOR,
  // so doubles arrive exactly.
  virtual nlohmann::json save_state() const;
  // Adds another rank's save_state() (its analyzer begun with the same run) to this analyzer's.
  // The state comes from another process: check everything (read_state below); a bad one is Error.
  virtual void merge_state(const nlohmann::json& state);
};

// Reading another rank's state in merge_state(): run `read` (which reads with .at() and the checked
// readers below), turning any refusal or nlohmann exception into one line,
// Error("WHO: cannot merge another rank's state: ..."). Read into temporaries, then add them to the
// analyzer's state, so that a refused state leaves it as it was.
void read_state(const std::string& who, const std::function<void()>& read);
// An integer in [0, end): a layer, head or prompt index (`what` names it in the refusal).
int state_index(const nlohmann::json& v, std::int64_t end, const char* what);
// An integer >= 0.
std::int64_t state_count(const nlohmann::json& v, const char* what);
// A number; null stands for NaN (JSON text has none; the CBOR AnalyzerSet sends keeps them).
double state_number(const nlohmann::json& v, const char* what);
// An array of exactly `size` numbers (state_number each).
std::vector<double> state_numbers(const nlohmann::json& v, std::size_t size, const char* what);
// `v` if it is an array (Error otherwise).
const nlohmann::json& state_array(const nlohmann::json& v, const char* what);

// Which keys each query row of a captured attention pattern could attend to, from the layer's
// attention kind: causal keys <= query, local also > query - window, bidirectional every key.
// Rows and columns are those of the captured (possibly sliced) tensor.
struct PatternRows {
  std::int64_t rows = 0, cols = 0;
  std::int64_t query_offset = 0, key_offset = 0;  // absolute positions of row 0 and column 0
  AttentionKind kind = AttentionKind::causal;
  std::int64_t window = 0;

  // `pattern` is [..., query, key]; the layer is ctx.layer.
  static PatternRows of(const at::Tensor& pattern, const CaptureContext& ctx, const ModelInfo& model);
  // Columns [first, last) row r may see (empty when none of them was captured).
  std::pair<std::int64_t, std::int64_t> visible(std::int64_t r) const;
  std::int64_t query_position(std::int64_t r) const { return query_offset + r; }
};

// What an analyzer of attention patterns (blocks.*.attn.hook_pattern) needs of the run: the model,
// and which model head each captured head is (a run may capture a slice of the heads).
struct PatternRun {
  ModelInfo model;
  std::vector<int> captured_heads;  // the run's "capture"."heads" (head slicing); empty = all heads

  // From begin()'s `run`; `who` names the analyzer in error messages (Error when there is no "model").
  static PatternRun of(const nlohmann::json& run, const std::string& who);
  // The model head of each of the `count` heads of a capture. A capture of every head maps to
  // itself; a head-sliced one needs the run's capture.heads, else the heads cannot be named (Error).
  std::vector<int> heads_of(std::int64_t count, const std::string& who) const;
  // Checks that `tensor` is a pattern [batch, head, query, key] (or [head, query, key]) of a layer
  // of the model, and returns it as [batch, head, query, key] (Error otherwise).
  at::Tensor check(std::string_view hook, const CaptureContext& ctx, const at::Tensor& tensor,
                   const std::string& who) const;
};

// Reports are JSON, where NaN and infinities are not values: `v`, or null when it is not finite.
nlohmann::json finite_or_null(double v);
nlohmann::json finite_or_null(const std::vector<double>& values);  // each value so
// Replaces every non-finite number anywhere in `report` by null.
void null_non_finite(nlohmann::json& report);

}  // namespace hooklens

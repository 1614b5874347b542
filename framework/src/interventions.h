// The interventions of a session (hooklens/intervention.h), checked, with their values read or
// computed, and applied through a HookSet. Internal to the framework: RunSession and the patch sweep.
#pragma once
#include <hooklens/intervention.h>

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace hooklens {

class HookSet;
class Model;
class Tokenizer;

// Where the values come from, besides the specs.
struct InterventionSources {
  std::string patch_from;   // --patch-from RUN: a run directory
  std::string ablate_from;  // --ablate-from: a run directory, or a text file cut into sequences
  std::int64_t ablate_seq_len = 64;  // tokens per sequence of a text file
  int ablate_sequences = 64;         // sequences of a text file
  std::uint64_t seed = 0;            // resample-ablation's choice of sequence
};

// What the run will do, so that a site that can never apply is refused before it starts.
struct InterventionScope {
  std::vector<std::int64_t> positions;  // per prompt: the positions its sequence reaches
  int steps = 1;                        // generation steps (1: one forward pass)
  int blocks = 0;                       // diffusion blocks (0: none)
};

class Interventions {
 public:
  // Checks every spec against the model and the scope, reads vectors and source runs, and computes
  // means (forward passes over a text file). UsageError / Error with one line naming the option.
  Interventions(Model& model, std::vector<InterventionSpec> specs, InterventionSources sources,
                InterventionScope scope);
  ~Interventions();
  Interventions(const Interventions&) = delete;
  Interventions& operator=(const Interventions&) = delete;

  bool empty() const;
  // Adds one hook per intervention, in the order given. `hooks` must not be used after this dies.
  void attach(HookSet& hooks);
  // The manifest's "interventions": what, where, from which source, how often it applied.
  // `counted`: with "applied" (a run over several processes counts on every rank: none there).
  nlohmann::json manifest(bool counted = true) const;
  // One warning per intervention that never changed anything in the run.
  std::vector<std::string> unapplied() const;

 private:
  struct Applied;
  struct Source;
  std::vector<std::unique_ptr<Applied>> applied_;
  std::unique_ptr<Source> patch_source_, ablate_source_;
};

// Consecutive non-overlapping `seq_len`-token sequences cut from a text file, at most `max_sequences`
// (UsageError naming `option` when the file cannot be read or holds less than one).
std::vector<std::vector<std::int64_t>> text_file_sequences(const std::string& file, const Tokenizer& tokenizer,
                                                           std::int64_t seq_len, int max_sequences,
                                                           const std::string& option);

// --ablate LAYER.HEAD as a zero-ablation site of `model` (hook_z's head, or the pattern's where the
// model has no hook_z); any other text is a site, HOOK[...], zero-ablated as written.
InterventionSpec zero_ablation(const std::string& text, const Model& model);

}  // namespace hooklens

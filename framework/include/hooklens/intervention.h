// Interventions: changes to what flows through a running model at a hook point, or part of one.
//   --ablate L.H                 zero-ablation of a head (hook_z, or the pattern where there is no hook_z)
//   --patch SITE                 activation patching: the value another run (--patch-from RUN) captured
//   --steer SITE=FILE*SCALE      steering: a vector added
//   --mean-ablate SITE           the mean over a dataset (--ablate-from RUN or TEXT_FILE)
//   --resample-ablate SITE       the value of another sequence of that dataset
// This header parses and describes them, without libtorch; framework/src/intervention.cpp applies
// them through a HookSet (hooks may replace the tensor a point fires).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hooklens {

// Indices along one dimension, [begin, end). Negative values count from the end: -1 is the last
// element; for positions, the last position of the sequence so far.
struct IndexRange {
  std::int64_t begin = 0;
  std::optional<std::int64_t> end;  // nullopt: through the last

  // "I", "A:B", "A:" or ":B" (UsageError naming `what` otherwise). "I" is [I, I+1).
  static IndexRange parse(std::string_view text, std::string_view what);
  // The elements of a dimension holding indices [offset, offset + size) of `total` that lie in the
  // range, as [first, last) counted from the dimension's element 0 (first == last: none).
  std::pair<std::int64_t, std::int64_t> resolve(std::int64_t offset, std::int64_t size, std::int64_t total) const;
  // Absolute [first, last) in a dimension of `total` elements (negative counts resolved).
  std::pair<std::int64_t, std::int64_t> absolute(std::int64_t total) const;
  std::string text() const;
};

// Where an intervention applies: HOOK or HOOK[KEY=RANGE,...]. KEY is a dim of the hook point
// (pos, head, d_mlp, d_model, ...; "pos" also names a pattern's "query" dim, "neuron" names
// "d_mlp") or an event selector: step=RANGE, block=RANGE (generation steps, diffusion blocks).
struct InterventionSite {
  std::string hook;  // one hook point, by its exact name
  std::vector<std::pair<std::string, IndexRange>> select;  // dim -> range, in the order written
  std::optional<IndexRange> steps, blocks;

  // UsageError naming `option` for a malformed site.
  static InterventionSite parse(std::string_view text, std::string_view option);
  std::string text() const;  // normalised, parseable again
  // The model dim a selector key names among `dims` (the hook point's), or "" if none.
  static std::string dim_of(const std::string& key, const std::vector<std::string>& dims);
};

enum class InterventionKind { zero_ablate, patch, steer, mean_ablate, resample_ablate };
const char* intervention_kind_name(InterventionKind kind);  // e.g. "mean_ablate"

// One intervention as the user gave it.
struct InterventionSpec {
  InterventionKind kind = InterventionKind::patch;
  InterventionSite site;
  // steer: the vector, FILE or FILE:TENSOR (a .safetensors file; its only tensor unless named).
  // mean/resample-ablate: a direction FILE[:TENSOR] ("SITE@FILE"): only the component of the value
  // along it is replaced. Empty otherwise.
  std::string vector;
  double scale = 1.0;  // steer: SITE=FILE*SCALE

  // --patch SITE
  static InterventionSpec patch(std::string_view text);
  // --steer SITE=FILE[:TENSOR][*SCALE]
  static InterventionSpec steer(std::string_view text);
  // --mean-ablate / --resample-ablate SITE[@FILE[:TENSOR]]
  static InterventionSpec ablation(InterventionKind kind, std::string_view text);
  std::string option() const;  // the CLI option it came from, e.g. "--steer"
};

// "FILE" or "FILE:TENSOR" -> {FILE, TENSOR}, the tensor name empty when not given. A ':' counts only
// after a ".safetensors" suffix, so paths with colons still work.
std::pair<std::string, std::string> split_tensor_file(std::string_view text);

}  // namespace hooklens

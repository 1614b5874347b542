// Hook points, capture contexts and hook sets: how anything observes or changes a running model.
//
// An adapter calls `hooks.wants(name, ctx)` before it materialises a tensor for a hook point and
// `hooks.fire(name, ctx, tensor)` when something does. A hook may assign a new tensor of the same
// shape to replace the value flowing through the model (ablation, patching, steering); it must
// never modify the tensor in place, which may be a view of the model's weights or KV cache.
// Adapters never modify a fired tensor in place afterwards, so a hook may keep a reference to it
// without copying.
#pragma once
#include <hooklens/capture_context.h>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hooklens {

// Which events a hook listens to. Empty lists mean "all".
struct HookFilter {
  // Name patterns: shell-style globs ('*' any run of characters, '?' one character), or an
  // ECMAScript regular expression prefixed with "re:". A name matches if any pattern matches.
  std::vector<std::string> names;
  std::vector<int> layers;
  std::vector<int> steps;
  std::vector<int> blocks;
  std::vector<Phase> phases;
  std::vector<int> prompts;

  bool matches_name(std::string_view name) const;
  bool matches(std::string_view name, const CaptureContext& ctx) const;
};

// `tensor` may be reassigned to replace the value (same shape and dtype).
using HookFn = std::function<void(std::string_view name, const CaptureContext& ctx, at::Tensor& tensor)>;

class HookSet {
 public:
  HookSet();
  ~HookSet();
  HookSet(HookSet&&) noexcept;
  HookSet& operator=(HookSet&&) noexcept;

  void add(HookFilter filter, HookFn fn);
  bool empty() const { return entries_.empty(); }

  // Cheap: no tensor is touched. Adapters skip all work for a point nobody wants.
  bool wants(std::string_view name, const CaptureContext& ctx) const;
  // Runs every matching hook in registration order. Throws Error if a hook replaced the tensor
  // with one of another shape or dtype.
  void fire(std::string_view name, const CaptureContext& ctx, at::Tensor& tensor) const;

 private:
  friend HookSet per_batch_row(const HookSet& inner, int first_prompt, int rows);
  struct Entry;
  std::vector<Entry> entries_;
};

// For a forward pass over a batch of `rows` prompts numbered from `first_prompt`: a hook set that
// runs `inner` once per batch row, with ctx.prompt = first_prompt + row and that row (dimension 0
// kept, size 1) as the tensor, so every hook sees exactly what an unbatched pass shows it. A row a
// hook replaces is written back into (a copy of) the batch. `inner` must outlive the result.
HookSet per_batch_row(const HookSet& inner, int first_prompt, int rows);

// True if `pattern` (glob or "re:" regex, as in HookFilter::names) matches `name`.
bool hook_name_matches(std::string_view pattern, std::string_view name);

}  // namespace hooklens

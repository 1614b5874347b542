// Capture slicing: keep only some heads, query positions and key positions of a captured tensor, so
// that long runs (e.g. a masked-diffusion model's attention over many steps) stay a manageable size.
#pragma once
#include <hooklens/hooks.h>
#include <hooklens/model.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace hooklens {

// Absolute positions [begin, end); end -1 = to the end.
struct PositionRange {
  std::int64_t begin = 0, end = -1;
};

struct CaptureSlice {
  std::vector<int> heads;                      // empty = all; kept in this order
  std::optional<PositionRange> queries, keys;  // absolute positions

  bool empty() const { return heads.empty() && !queries && !keys; }  // nothing to slice
  // "A:B", "A:" or ":B" with 0 <= A < B. Throws UsageError for anything else.
  static PositionRange parse_range(const std::string& text);
};

// Slices `tensor` (as fired at hook point `point`) along its "head", "query"/"pos" and "key" dims;
// dims the point does not have are left alone. Row r of the tensor is position
// ctx.query_offset + r and key column c is position ctx.key_offset + c; the returned context's
// query_offset and key_offset are those of the first row and column kept. Returns nullopt when
// nothing of this event lies in the slice (e.g. a decode step whose query row is outside the
// range). Returns `tensor` itself when nothing is cut away; a cut tensor owns compact storage, so it
// does not keep the whole fired tensor alive in a sink's queue. Throws UsageError for a head outside
// the tensor's head count or listed twice, or for a malformed range.
std::optional<std::pair<at::Tensor, CaptureContext>> slice_capture(const HookPointInfo& point, const at::Tensor& tensor,
                                                                    const CaptureContext& ctx, const CaptureSlice& slice);

}  // namespace hooklens

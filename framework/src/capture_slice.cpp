#include <hooklens/capture_slice.h>
#include <hooklens/error.h>

#include <ATen/ops/clone.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/narrow.h>
#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <limits>
#include <set>
#include <string_view>

namespace hooklens {

namespace {

constexpr std::int64_t kNoEnd = std::numeric_limits<std::int64_t>::max();

std::optional<std::int64_t> parse_position(std::string_view text) {
  std::int64_t value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end || value < 0) return std::nullopt;
  return value;
}

void check_range(const PositionRange& r, const char* what) {
  if (r.begin < 0 || r.end < -1 || (r.end != -1 && r.end <= r.begin))
    throw UsageError(fmt::format("capture slice: {} range [{}, {}) is empty or negative", what, r.begin, r.end));
}

int dim_of(const HookPointInfo& point, std::initializer_list<const char*> names) {
  for (std::size_t i = 0; i < point.dims.size(); ++i)
    for (const char* name : names)
      if (point.dims[i] == name) return int(i);
  return -1;
}

// Narrows `dim` (whose index i is position first + i) to the positions in `range`. Returns the new
// first position, or nullopt when no position of the tensor lies in the range.
std::optional<std::int64_t> narrow_positions(at::Tensor& t, int dim, std::int64_t first, const PositionRange& range,
                                             bool& cut) {
  const std::int64_t size = t.size(dim);
  const std::int64_t lo = std::max(range.begin, first);
  const std::int64_t hi = std::min(range.end == -1 ? kNoEnd : range.end, first + size);
  if (lo >= hi) return std::nullopt;
  if (hi - lo < size) {
    t = t.narrow(dim, lo - first, hi - lo);
    cut = true;
  }
  return lo;
}

void check_heads(const std::vector<int>& heads, std::int64_t count, const std::string& point) {
  std::set<int> seen;
  for (int h : heads) {
    if (h < 0 || h >= count)
      throw UsageError(fmt::format("capture slice: head {} is out of range: {} has {} heads", h, point, count));
    if (!seen.insert(h).second) throw UsageError(fmt::format("capture slice: head {} is listed twice", h));
  }
}

// `heads` were checked by check_heads.
void select_heads(at::Tensor& t, int dim, const std::vector<int>& heads, bool& cut) {
  if (std::int64_t(heads.size()) == t.size(dim) && std::is_sorted(heads.begin(), heads.end())) return;  // all, in order
  cut = true;
  bool consecutive = true;
  for (std::size_t i = 1; i < heads.size(); ++i) consecutive = consecutive && heads[i] == heads[i - 1] + 1;
  if (consecutive) {
    t = t.narrow(dim, heads.front(), std::int64_t(heads.size()));
    return;
  }
  at::Tensor index = at::empty({std::int64_t(heads.size())}, at::kLong);
  std::copy(heads.begin(), heads.end(), index.data_ptr<std::int64_t>());
  t = t.index_select(dim, index.to(t.device()));
}

}  // namespace

PositionRange CaptureSlice::parse_range(const std::string& text) {
  const auto fail = [&text]() {
    return UsageError(fmt::format("bad position range '{}': expected A:B, A: or :B with 0 <= A < B", text));
  };
  const auto colon = text.find(':');
  if (colon == std::string::npos) throw fail();
  const std::string_view all(text), a = all.substr(0, colon), b = all.substr(colon + 1);
  if (a.empty() && b.empty()) throw fail();
  PositionRange range;
  if (!a.empty()) {
    auto v = parse_position(a);
    if (!v) throw fail();
    range.begin = *v;
  }
  if (!b.empty()) {
    auto v = parse_position(b);
    if (!v || *v <= range.begin) throw fail();
    range.end = *v;
  }
  return range;
}

std::optional<std::pair<at::Tensor, CaptureContext>> slice_capture(const HookPointInfo& point, const at::Tensor& tensor,
                                                                    const CaptureContext& ctx, const CaptureSlice& slice) {
  if (slice.empty()) return std::make_pair(tensor, ctx);
  if (std::int64_t(point.dims.size()) != tensor.dim())
    throw Error(fmt::format("capture slice: {} fired a {}-d tensor but names {} dims", point.name, tensor.dim(),
                            point.dims.size()));
  at::Tensor t = tensor;
  CaptureContext out = ctx;
  bool cut = false;
  const int head_dim = dim_of(point, {"head"}), query_dim = dim_of(point, {"query", "pos"}),
            key_dim = dim_of(point, {"key"});
  const bool by_head = !slice.heads.empty() && head_dim >= 0;
  if (by_head) check_heads(slice.heads, t.size(head_dim), point.name);
  if (slice.queries && query_dim >= 0) {
    check_range(*slice.queries, "query");
    auto first = narrow_positions(t, query_dim, ctx.query_offset, *slice.queries, cut);
    if (!first) return std::nullopt;
    out.query_offset = *first;
  }
  if (slice.keys && key_dim >= 0) {
    check_range(*slice.keys, "key");
    auto first = narrow_positions(t, key_dim, ctx.key_offset, *slice.keys, cut);
    if (!first) return std::nullopt;
    out.key_offset = *first;
  }
  // Heads last: index_select then copies only the rows and columns kept.
  if (by_head) select_heads(t, head_dim, slice.heads, cut);
  if (!cut) return std::make_pair(tensor, out);
  // A view would keep the whole fired tensor alive while a sink queues the slice, and sinks count
  // only the slice's bytes against their memory bound: store the slice in storage of its own.
  if (t.storage().nbytes() != t.nbytes()) t = t.clone(at::MemoryFormat::Contiguous);
  return std::make_pair(std::move(t), out);
}

}  // namespace hooklens

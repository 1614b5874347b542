#include <hooklens/analyzer.h>
#include <hooklens/error.h>

#include <fmt/format.h>

#include <algorithm>

namespace hooklens {

PatternRows PatternRows::of(const at::Tensor& pattern, const CaptureContext& ctx, const ModelInfo& model) {
  if (pattern.dim() < 2) throw Error(fmt::format("an attention pattern needs [query, key] dims, got {}", pattern.dim()));
  PatternRows p;
  p.rows = pattern.size(-2);
  p.cols = pattern.size(-1);
  p.query_offset = ctx.query_offset;
  p.key_offset = ctx.key_offset;
  if (ctx.layer >= 0 && std::size_t(ctx.layer) < model.layer_attention.size()) p.kind = model.layer_attention[ctx.layer];
  p.window = model.window_size;
  return p;
}

std::pair<std::int64_t, std::int64_t> PatternRows::visible(std::int64_t r) const {
  const std::int64_t q = query_position(r);
  std::int64_t first = 0, last = key_offset + cols;  // absolute, [first, last)
  if (kind != AttentionKind::bidirectional) last = std::min(last, q + 1);
  if (kind == AttentionKind::local) first = q - window + 1;
  first = std::max(first, key_offset) - key_offset;
  last = last - key_offset;
  if (last <= first) return {0, 0};
  return {first, last};
}

}  // namespace hooklens

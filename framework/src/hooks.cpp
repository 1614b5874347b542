#include <hooklens/error.h>
#include <hooklens/hooks.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <regex>

namespace hooklens {

const char* phase_name(Phase phase) {
  switch (phase) {
    case Phase::prefill: return "prefill";
    case Phase::decode: return "decode";
    case Phase::denoise: return "denoise";
  }
  return "?";
}

std::optional<Phase> parse_phase(std::string_view name) {
  for (Phase p : {Phase::prefill, Phase::decode, Phase::denoise})
    if (name == phase_name(p)) return p;
  return std::nullopt;
}

namespace {

// Iterative glob match with single-star backtracking: linear in practice, no recursion.
bool glob_match(std::string_view pattern, std::string_view text) {
  size_t p = 0, t = 0, star = std::string_view::npos, star_t = 0;
  while (t < text.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == text[t])) {
      ++p, ++t;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      star_t = t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++star_t;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

constexpr std::string_view kRegexPrefix = "re:";

bool is_regex(std::string_view pattern) { return pattern.substr(0, kRegexPrefix.size()) == kRegexPrefix; }

std::regex compile_regex(std::string_view pattern) {
  try {
    return std::regex(std::string(pattern.substr(kRegexPrefix.size())), std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    throw UsageError(fmt::format("invalid hook regex '{}': {}", pattern, e.what()));
  }
}

template <class T>
bool listed(const std::vector<T>& allowed, const T& value) {
  return allowed.empty() || std::find(allowed.begin(), allowed.end(), value) != allowed.end();
}

bool context_matches(const HookFilter& f, const CaptureContext& ctx) {
  return listed(f.phases, ctx.phase) && listed(f.steps, ctx.step) && listed(f.blocks, ctx.block) &&
         listed(f.prompts, ctx.prompt) &&
         (f.layers.empty() || (ctx.layer >= 0 && listed(f.layers, ctx.layer)));
}

}  // namespace

bool hook_name_matches(std::string_view pattern, std::string_view name) {
  if (is_regex(pattern)) return std::regex_match(name.begin(), name.end(), compile_regex(pattern));
  return glob_match(pattern, name);
}

bool HookFilter::matches_name(std::string_view name) const {
  if (names.empty()) return true;
  return std::any_of(names.begin(), names.end(),
                     [&](const std::string& p) { return hook_name_matches(p, name); });
}

bool HookFilter::matches(std::string_view name, const CaptureContext& ctx) const {
  return context_matches(*this, ctx) && matches_name(name);
}

// A filter with its regexes compiled once, or a predicate that decides instead (per_batch_row).
struct HookSet::Entry {
  HookFilter filter;
  std::vector<std::regex> regexes;  // one per "re:" pattern
  std::vector<std::string> globs;   // the other patterns
  HookFn fn;
  std::function<bool(std::string_view, const CaptureContext&)> predicate;

  bool matches(std::string_view name, const CaptureContext& ctx) const {
    if (predicate) return predicate(name, ctx);
    if (!context_matches(filter, ctx)) return false;
    if (filter.names.empty()) return true;
    for (const auto& g : globs)
      if (glob_match(g, name)) return true;
    for (const auto& r : regexes)
      if (std::regex_match(name.begin(), name.end(), r)) return true;
    return false;
  }
};

HookSet::HookSet() = default;
HookSet::~HookSet() = default;
HookSet::HookSet(HookSet&&) noexcept = default;
HookSet& HookSet::operator=(HookSet&&) noexcept = default;

void HookSet::add(HookFilter filter, HookFn fn) {
  Entry e{std::move(filter), {}, {}, std::move(fn), {}};
  for (const auto& p : e.filter.names) {
    if (is_regex(p))
      e.regexes.push_back(compile_regex(p));
    else
      e.globs.push_back(p);
  }
  entries_.push_back(std::move(e));
}

bool HookSet::wants(std::string_view name, const CaptureContext& ctx) const {
  for (const auto& e : entries_)
    if (e.matches(name, ctx)) return true;
  return false;
}

void HookSet::fire(std::string_view name, const CaptureContext& ctx, at::Tensor& tensor) const {
  for (const auto& e : entries_) {
    if (!e.matches(name, ctx)) continue;
    const at::Tensor before = tensor;
    e.fn(name, ctx, tensor);
    if (!tensor.is_same(before) &&
        (tensor.sizes() != before.sizes() || tensor.scalar_type() != before.scalar_type()))
      throw Error(fmt::format("a hook on '{}' replaced a {} tensor of shape [{}] with a {} tensor of shape [{}]",
                              name, c10::toString(before.scalar_type()), fmt::join(before.sizes(), ", "),
                              c10::toString(tensor.scalar_type()), fmt::join(tensor.sizes(), ", ")));
  }
}

HookSet per_batch_row(const HookSet& inner, int first_prompt, int rows) {
  const auto row_context = [first_prompt](CaptureContext ctx, int row) {
    ctx.prompt = first_prompt + row;
    return ctx;
  };
  HookSet outer;
  HookSet::Entry e;
  e.predicate = [&inner, rows, row_context](std::string_view name, const CaptureContext& ctx) {
    for (int r = 0; r < rows; ++r)
      if (inner.wants(name, row_context(ctx, r))) return true;
    return false;
  };
  e.fn = [&inner, rows, row_context](std::string_view name, const CaptureContext& ctx, at::Tensor& batch) {
    if (batch.dim() == 0 || batch.size(0) != rows)
      throw Error(fmt::format("hook point '{}' fired a tensor of shape [{}] in a batch of {} prompts", name,
                              fmt::join(batch.sizes(), ", "), rows));
    at::Tensor result = batch;
    for (int r = 0; r < rows; ++r) {
      const CaptureContext row_ctx = row_context(ctx, r);
      if (!inner.wants(name, row_ctx)) continue;
      const at::Tensor row = batch.narrow(0, r, 1);
      at::Tensor seen = row;
      inner.fire(name, row_ctx, seen);
      if (seen.is_same(row)) continue;
      if (result.is_same(batch)) result = batch.clone();  // hooks never write into a fired tensor
      result.narrow(0, r, 1).copy_(seen);
    }
    batch = result;
  };
  outer.entries_.push_back(std::move(e));
  return outer;
}

}  // namespace hooklens

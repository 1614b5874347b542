// Parsing and describing interventions (hooklens/intervention.h); applying them is intervention.cpp.
#include <hooklens/intervention.h>

#include <hooklens/error.h>

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>

namespace hooklens {
namespace {

std::optional<std::int64_t> parse_int(std::string_view text) {
  std::int64_t value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end) return std::nullopt;
  return value;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  return s;
}

// Error messages quote the user's text: refused first if it would break their one line.
void check_printable(std::string_view text, std::string_view option) {
  if (std::any_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; }))
    throw UsageError(fmt::format("{}: the text holds a control character (a line break or tab?)", option));
}

// The index of the ']' closing a site's selectors, or npos when it has none; `text` up to it must
// be HOOK[...].
std::size_t selectors_end(std::string_view text) {
  const auto open = text.find('[');
  if (open == std::string_view::npos) return std::string_view::npos;
  return text.find(']', open);
}

}  // namespace

IndexRange IndexRange::parse(std::string_view text, std::string_view what) {
  check_printable(text, what);
  const auto fail = [&] {
    return UsageError(fmt::format("{}: '{}' is not an index I or a range A:B, A: or :B (negative counts from the end)",
                                  what, text));
  };
  text = trim(text);
  IndexRange r;
  const auto colon = text.find(':');
  if (colon == std::string_view::npos) {
    const auto v = parse_int(text);
    if (!v) throw fail();
    r.begin = *v;
    r.end = *v == -1 ? std::nullopt : std::optional<std::int64_t>(*v + 1);
    return r;
  }
  const std::string_view a = trim(text.substr(0, colon)), b = trim(text.substr(colon + 1));
  if (a.empty() && b.empty()) throw fail();
  if (!a.empty()) {
    const auto v = parse_int(a);
    if (!v) throw fail();
    r.begin = *v;
  }
  if (!b.empty()) {
    const auto v = parse_int(b);
    if (!v) throw fail();
    r.end = *v;
    // Both of one sign can be ordered now; mixed signs only against a length.
    if (((r.begin >= 0) == (*v >= 0) && *v <= r.begin) || (*v == 0 && r.begin < 0))
      throw UsageError(fmt::format("{}: range '{}' is empty", what, text));
  }
  return r;
}

std::pair<std::int64_t, std::int64_t> IndexRange::absolute(std::int64_t total) const {
  const auto at = [total](std::int64_t i) { return std::clamp<std::int64_t>(i < 0 ? total + i : i, 0, total); };
  const std::int64_t first = at(begin), last = end ? at(*end) : total;
  return {first, std::max(first, last)};
}

std::pair<std::int64_t, std::int64_t> IndexRange::resolve(std::int64_t offset, std::int64_t size,
                                                          std::int64_t total) const {
  const auto [first, last] = absolute(total);
  const std::int64_t a = std::clamp<std::int64_t>(first - offset, 0, size);
  const std::int64_t b = std::clamp<std::int64_t>(last - offset, 0, size);
  return {a, std::max(a, b)};
}

std::string IndexRange::text() const {
  if (end && *end == begin + 1 && begin != -1) return std::to_string(begin);
  if (!end && begin == -1) return "-1";
  if (!end) return fmt::format("{}:", begin);
  return fmt::format("{}:{}", begin == 0 ? std::string() : std::to_string(begin), *end);
}

InterventionSite InterventionSite::parse(std::string_view text, std::string_view option) {
  check_printable(text, option);
  text = trim(text);
  InterventionSite site;
  const auto open = text.find('[');
  site.hook = std::string(trim(text.substr(0, open)));
  const auto bad = [&](const std::string& why) {
    return UsageError(fmt::format("{} '{}': {}", option, text, why));
  };
  if (site.hook.empty()) throw bad("expected HOOK or HOOK[KEY=RANGE,...], e.g. blocks.1.hook_resid_post[pos=3]");
  if (site.hook.find_first_of("*?]= ") != std::string::npos)
    throw bad("name one hook point exactly (no patterns), e.g. blocks.1.attn.hook_z[head=3]");
  if (open == std::string_view::npos) return site;
  const auto close = text.find(']', open);
  if (close == std::string_view::npos || close + 1 != text.size()) throw bad("the selectors must end with ']'");
  std::string_view list = text.substr(open + 1, close - open - 1);
  if (trim(list).empty()) throw bad("empty selectors '[]'");
  while (!list.empty()) {
    const auto comma = list.find(',');
    const std::string_view item = trim(list.substr(0, comma));
    list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
    const auto eq = item.find('=');
    if (eq == std::string_view::npos) throw bad(fmt::format("selector '{}' is not KEY=RANGE", item));
    const std::string key(trim(item.substr(0, eq)));
    if (key.empty()) throw bad(fmt::format("selector '{}' has no key", item));
    const std::string what = fmt::format("{} '{}' {}", option, text, key);
    const IndexRange range = IndexRange::parse(item.substr(eq + 1), what);
    const bool seen = std::any_of(site.select.begin(), site.select.end(), [&](const auto& s) { return s.first == key; }) ||
                      (key == "step" && site.steps) || (key == "block" && site.blocks);
    if (seen) throw bad(fmt::format("'{}' is selected twice", key));
    if (key == "step" || key == "block") {
      if (range.begin < 0 || (range.end && *range.end < 0))
        throw bad(fmt::format("{} counts from 0 (no negative {}s)", key, key));
      (key == "step" ? site.steps : site.blocks) = range;
    } else {
      site.select.emplace_back(key, range);
    }
  }
  return site;
}

std::string InterventionSite::text() const {
  std::vector<std::string> items;
  for (const auto& [key, range] : select) items.push_back(key + "=" + range.text());
  if (steps) items.push_back("step=" + steps->text());
  if (blocks) items.push_back("block=" + blocks->text());
  if (items.empty()) return hook;
  std::string out = hook + "[";
  for (std::size_t i = 0; i < items.size(); ++i) out += (i ? "," : "") + items[i];
  return out + "]";
}

std::string InterventionSite::dim_of(const std::string& key, const std::vector<std::string>& dims) {
  const auto has = [&](const char* d) { return std::find(dims.begin(), dims.end(), d) != dims.end(); };
  if (key == "batch") return "";  // one row at a time: prompts are not a dim to select
  if (key == "pos" && !has("pos") && has("query")) return "query";
  if (key == "query" && !has("query") && has("pos")) return "pos";
  if (key == "neuron" && has("d_mlp")) return "d_mlp";
  return has(key.c_str()) ? key : "";
}

const char* intervention_kind_name(InterventionKind kind) {
  switch (kind) {
    case InterventionKind::zero_ablate: return "zero_ablate";
    case InterventionKind::patch: return "patch";
    case InterventionKind::steer: return "steer";
    case InterventionKind::mean_ablate: return "mean_ablate";
    case InterventionKind::resample_ablate: return "resample_ablate";
  }
  return "?";
}

std::pair<std::string, std::string> split_tensor_file(std::string_view text) {
  constexpr std::string_view suffix = ".safetensors:";
  const auto at = text.rfind(suffix);
  if (at == std::string_view::npos) return {std::string(text), ""};
  return {std::string(text.substr(0, at + suffix.size() - 1)), std::string(text.substr(at + suffix.size()))};
}

InterventionSpec InterventionSpec::patch(std::string_view text) {
  InterventionSpec s;
  s.kind = InterventionKind::patch;
  s.site = InterventionSite::parse(text, "--patch");
  return s;
}

InterventionSpec InterventionSpec::steer(std::string_view text) {
  check_printable(text, "--steer");
  InterventionSpec s;
  s.kind = InterventionKind::steer;
  const auto close = selectors_end(text);
  const auto eq = text.find('=', close == std::string_view::npos ? 0 : close);
  if (eq == std::string_view::npos)
    throw UsageError(fmt::format("--steer '{}': expected SITE=FILE.safetensors[:TENSOR][*SCALE], e.g. "
                                 "blocks.1.hook_resid_pre=vec.safetensors*4",
                                 text));
  s.site = InterventionSite::parse(text.substr(0, eq), "--steer");
  std::string_view vector = text.substr(eq + 1);
  const auto star = vector.rfind('*');
  if (star != std::string_view::npos) {
    const std::string scale(trim(vector.substr(star + 1)));
    char* end = nullptr;
    s.scale = std::strtod(scale.c_str(), &end);
    if (scale.empty() || end != scale.c_str() + scale.size() || !std::isfinite(s.scale))
      throw UsageError(fmt::format("--steer '{}': scale '{}' is not a finite number", text, scale));
    vector = vector.substr(0, star);
  }
  s.vector = std::string(trim(vector));
  if (s.vector.empty()) throw UsageError(fmt::format("--steer '{}': no vector file after '='", text));
  return s;
}

InterventionSpec InterventionSpec::ablation(InterventionKind kind, std::string_view text) {
  InterventionSpec s;
  s.kind = kind;
  const std::string option = s.option();
  check_printable(text, option);
  const auto close = selectors_end(text);
  const auto at = text.find('@', close == std::string_view::npos ? 0 : close);
  s.site = InterventionSite::parse(text.substr(0, at), option);
  if (at != std::string_view::npos) {
    s.vector = std::string(trim(text.substr(at + 1)));
    if (s.vector.empty()) throw UsageError(fmt::format("{} '{}': no direction file after '@'", option, text));
  }
  return s;
}

std::string InterventionSpec::option() const {
  switch (kind) {
    case InterventionKind::zero_ablate: return "--ablate";
    case InterventionKind::patch: return "--patch";
    case InterventionKind::steer: return "--steer";
    case InterventionKind::mean_ablate: return "--mean-ablate";
    case InterventionKind::resample_ablate: return "--resample-ablate";
  }
  return "?";
}

}  // namespace hooklens

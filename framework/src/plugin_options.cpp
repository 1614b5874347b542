#include <hooklens/plugin_options.h>

#include <hooklens/error.h>
#include <hooklens/json_read.h>  // brief_json
#include <hooklens/text.h>

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>

namespace hooklens {
namespace {

const nlohmann::json kNull;

std::string_view trim_spaces(std::string_view s) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  return s;
}

std::optional<std::int64_t> integer_of(std::string_view s) {
  s = trim_spaces(s);
  std::int64_t out = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return out;
}

// " >= 1", " in 0..5", or "" for any integer.
template <typename T>
std::string range_text(T min, T max) {
  const bool low = min != std::numeric_limits<T>::lowest(), high = max != std::numeric_limits<T>::max();
  if (low && high) return fmt::format(" in {}..{}", min, max);
  if (low) return fmt::format(" >= {}", min);
  if (high) return fmt::format(" <= {}", max);
  return "";
}

}  // namespace

PluginOptions::PluginOptions(std::string plugin, const nlohmann::json& options, std::vector<std::string> known)
    : plugin_(std::move(plugin)), options_(options.is_object() ? options : nlohmann::json::object()) {
  if (!options.is_null() && !options.is_object())
    throw UsageError(fmt::format("{}: options must be a JSON object of KEY: VALUE, not {}", plugin_, brief_json(options)));
  for (const auto& item : options_.items())
    if (std::find(known.begin(), known.end(), item.key()) == known.end())
      throw UsageError(fmt::format("{}: unknown option '{}' ({})", plugin_, brief_text(item.key()),
                                   known.empty() ? std::string("it has none") : fmt::format("known: {}", fmt::join(known, ", "))));
}

// "neurons.k=\"zero\": option 'k' must be ...": the NAME.KEY=VALUE a user gave, then what is wrong.
void PluginOptions::refuse(const std::string& key, const std::string& problem) const {
  throw UsageError(fmt::format("{}.{}={}: option '{}' {}", plugin_, key, brief_json(value(key)), key, problem));
}

bool PluginOptions::has(const std::string& key) const { return !value(key).is_null(); }

const nlohmann::json& PluginOptions::value(const std::string& key) const {
  const auto it = options_.find(key);
  return it == options_.end() ? kNull : *it;
}

std::int64_t PluginOptions::parse_integer(const std::string& key, const nlohmann::json& v, const std::string& what) const {
  if (v.is_number_integer()) {
    if (v.is_number_unsigned() && v.get<std::uint64_t>() > std::uint64_t(kMax)) refuse(key, "must be " + what);
    return v.get<std::int64_t>();
  }
  if (v.is_string())
    if (const auto n = integer_of(v.get_ref<const std::string&>())) return *n;
  refuse(key, "must be " + what);
}

std::optional<std::int64_t> PluginOptions::optional_integer(const std::string& key, std::int64_t min, std::int64_t max) const {
  if (!has(key)) return std::nullopt;
  const std::string what = "an integer" + range_text(min, max);
  const std::int64_t n = parse_integer(key, value(key), what);
  if (n < min || n > max) refuse(key, "must be " + what);
  return n;
}

std::int64_t PluginOptions::integer(const std::string& key, std::int64_t fallback, std::int64_t min, std::int64_t max) const {
  return optional_integer(key, min, max).value_or(fallback);
}

std::optional<double> PluginOptions::number(const std::string& key, double min, double max) const {
  if (!has(key)) return std::nullopt;
  const nlohmann::json& v = value(key);
  const std::string what = "a number" + range_text(min, max);
  double x = std::nan("");
  if (v.is_number()) {
    x = v.get<double>();
  } else if (v.is_string()) {
    const std::string s(trim_spaces(v.get_ref<const std::string&>()));
    char* end = nullptr;
    if (!s.empty()) x = std::strtod(s.c_str(), &end);
    if (s.empty() || end != s.c_str() + s.size()) x = std::nan("");
  }
  if (!std::isfinite(x) || x < min || x > max) refuse(key, "must be " + what);
  return x;
}

std::optional<double> PluginOptions::positive_number(const std::string& key) const {
  const std::optional<double> x = number(key);
  if (x && !(*x > 0)) refuse(key, "must be a positive number");
  return x;
}

bool PluginOptions::boolean(const std::string& key, bool fallback) const {
  if (!has(key)) return fallback;
  const nlohmann::json& v = value(key);
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number_integer() && (v == 0 || v == 1)) return v == 1;
  if (v.is_string()) {
    const std::string& s = v.get_ref<const std::string&>();
    if (s == "true" || s == "1") return true;
    if (s == "false" || s == "0") return false;
  }
  refuse(key, "must be true or false (or 1 or 0)");
}

std::optional<std::string> PluginOptions::string(const std::string& key) const {
  if (!has(key)) return std::nullopt;
  const nlohmann::json& v = value(key);
  if (!v.is_string()) refuse(key, "must be a string");
  return v.get<std::string>();
}

std::string PluginOptions::choice(const std::string& key, const std::vector<std::string>& choices,
                                  const std::string& fallback) const {
  if (!has(key)) return fallback;
  const nlohmann::json& v = value(key);
  if (v.is_string() && std::find(choices.begin(), choices.end(), v.get<std::string>()) != choices.end())
    return v.get<std::string>();
  refuse(key, fmt::format("must be one of {}", fmt::join(choices, ", ")));
}

std::optional<std::vector<int>> PluginOptions::int_list(const std::string& key, int min, int max) const {
  if (!has(key)) return std::nullopt;
  const nlohmann::json& v = value(key);
  const std::string what = "a list of integers" + range_text(min, max) + " such as 2, [0, 2] or \"0,2\"";
  std::vector<std::int64_t> items;
  if (v.is_number_integer()) {
    items.push_back(parse_integer(key, v, what));
  } else if (v.is_array()) {
    for (const nlohmann::json& e : v) {
      if (!e.is_number_integer()) refuse(key, "must be " + what);
      items.push_back(parse_integer(key, e, what));
    }
  } else if (v.is_string()) {
    for (const std::string& item : split_list(v.get_ref<const std::string&>())) {
      const std::optional<std::int64_t> n = integer_of(item);
      if (!n) refuse(key, "must be " + what);
      items.push_back(*n);
    }
  } else {
    refuse(key, "must be " + what);
  }
  std::vector<int> out;
  for (const std::int64_t n : items) {
    if (n < min || n > max) refuse(key, fmt::format("must be {} ({} is not)", what, n));
    out.push_back(int(n));
  }
  return out;
}

}  // namespace hooklens

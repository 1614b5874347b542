// The options of one analyzer or renderer, read the same way by every plugin.
//
// Options are a JSON object: an analyzer's begin() finds them in run["options"] (strings, from
// `--analyze-option NAME.KEY=VALUE`), a renderer's render() gets them as an argument (numbers and
// lists, from `hooklens render`'s flags or from code). Each getter accepts both spellings:
//   integer       3 or "3"
//   number        0.5 or "0.5" (finite)
//   boolean       true/false, "true"/"false", 1/0, "1"/"0"
//   string        "text"
//   integer list  2, [0, 2] or "0,2" (spaces around items allowed)
// An absent key, or a null value, is "not given": the getter returns nullopt (or the fallback).
// Every refusal is a UsageError of one line that names the plugin and the key, e.g.
//   neurons.k="zero": option 'k' must be an integer >= 1
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace hooklens {

class PluginOptions {
 public:
  // `options` must be null (no options) or an object whose every key is in `known`; otherwise a
  // UsageError such as "figures: unknown option 'colour' (known: layers, heads)".
  PluginOptions(std::string plugin, const nlohmann::json& options, std::vector<std::string> known);

  const std::string& plugin() const { return plugin_; }
  bool has(const std::string& key) const;
  // The raw value (null when absent), for a plugin-specific form such as "all".
  const nlohmann::json& value(const std::string& key) const;

  // An integer in [min, max]; `fallback` when absent.
  std::int64_t integer(const std::string& key, std::int64_t fallback, std::int64_t min, std::int64_t max = kMax) const;
  std::optional<std::int64_t> optional_integer(const std::string& key, std::int64_t min = kMin, std::int64_t max = kMax) const;
  // A finite number in [min, max]; positive_number() wants > 0.
  std::optional<double> number(const std::string& key, double min = -kHuge, double max = kHuge) const;
  std::optional<double> positive_number(const std::string& key) const;
  bool boolean(const std::string& key, bool fallback) const;
  std::optional<std::string> string(const std::string& key) const;
  // One of `choices`; `fallback` when absent.
  std::string choice(const std::string& key, const std::vector<std::string>& choices, const std::string& fallback) const;
  // Integers each in [min, max] (int-sized).
  std::optional<std::vector<int>> int_list(const std::string& key, int min = std::numeric_limits<int>::min(),
                                           int max = std::numeric_limits<int>::max()) const;

 private:
  static constexpr std::int64_t kMin = std::numeric_limits<std::int64_t>::min();
  static constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
  static constexpr double kHuge = std::numeric_limits<double>::max();

  [[noreturn]] void refuse(const std::string& key, const std::string& problem) const;
  std::int64_t parse_integer(const std::string& key, const nlohmann::json& v, const std::string& what) const;

  std::string plugin_;
  nlohmann::json options_;
};

}  // namespace hooklens

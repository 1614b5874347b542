// Comparing analyzer reports: what a run over several processes must reproduce.
#pragma once
#include <hooklens/json_read.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <string>

namespace test {

// The first difference between two reports, "" when none: the same keys, strings, integers, bools
// and nulls; doubles within 1e-9 relative (+1e-12 absolute). (A report read back from its file
// holds its non-negative integers as unsigned: integers compare by value.)
inline std::string report_difference(const nlohmann::json& a, const nlohmann::json& b, const std::string& where = "report") {
  if (a.is_number() && b.is_number()) {
    if (!a.is_number_float() && !b.is_number_float()) return a == b ? "" : fmt::format("{}: {} vs {}", where, a.dump(), b.dump());
    const double x = a.get<double>(), y = b.get<double>();
    return a.is_number_float() == b.is_number_float() &&
                   std::abs(x - y) <= 1e-9 * std::max(std::abs(x), std::abs(y)) + 1e-12
               ? ""
               : fmt::format("{}: {} vs {}", where, a.dump(), b.dump());
  }
  if (a.type() != b.type()) return fmt::format("{}: {} vs {}", where, hooklens::brief_json(a), hooklens::brief_json(b));
  if (a.is_object()) {
    if (a.size() != b.size()) return fmt::format("{}: {} keys vs {}", where, a.size(), b.size());
    for (const auto& [key, value] : a.items()) {
      if (!b.contains(key)) return fmt::format("{}: key {} only in the first", where, key);
      const std::string d = report_difference(value, b[key], where + "." + key);
      if (!d.empty()) return d;
    }
    return "";
  }
  if (a.is_array()) {
    if (a.size() != b.size()) return fmt::format("{}: {} items vs {}", where, a.size(), b.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
      const std::string d = report_difference(a[i], b[i], fmt::format("{}[{}]", where, i));
      if (!d.empty()) return d;
    }
    return "";
  }
  return a == b ? "" : fmt::format("{}: {} vs {}", where, hooklens::brief_json(a), hooklens::brief_json(b));
}

}  // namespace test

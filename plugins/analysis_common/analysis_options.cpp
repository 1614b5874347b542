#include "analysis_options.h"

#include <hooklens/error.h>

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>

namespace hooklens::analysis {

Options::Options(std::string analyzer, const nlohmann::json& options, const std::vector<std::string>& known)
    : analyzer_(std::move(analyzer)), options_(options.is_object() ? options : nlohmann::json::object()) {
  if (!options.is_null() && !options.is_object())
    throw UsageError(fmt::format("{}: options must be a JSON object of KEY: VALUE strings", analyzer_));
  for (const auto& [key, value] : options_.items())
    if (std::find(known.begin(), known.end(), key) == known.end())
      throw UsageError(fmt::format("--analyze-option {}.{}: unknown option (known: {})", analyzer_, key,
                                   known.empty() ? std::string("none") : fmt::format("{}", fmt::join(known, ", "))));
}

std::optional<std::int64_t> Options::optional_integer(const std::string& key, std::int64_t min) const {
  if (!options_.contains(key)) return std::nullopt;
  const nlohmann::json& v = options_.at(key);
  std::int64_t out = 0;
  bool ok = false;
  if (v.is_number_integer()) {
    out = v.get<std::int64_t>();
    ok = true;
  } else if (v.is_string()) {
    const std::string& s = v.get_ref<const std::string&>();
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    ok = !s.empty() && ec == std::errc() && end == s.data() + s.size();
  }
  if (!ok) throw UsageError(fmt::format("--analyze-option {}.{}={}: not an integer", analyzer_, key, v.dump()));
  if (out < min) throw UsageError(fmt::format("--analyze-option {}.{}={}: must be at least {}", analyzer_, key, out, min));
  return out;
}

std::int64_t Options::integer(const std::string& key, std::int64_t fallback, std::int64_t min) const {
  return optional_integer(key, min).value_or(fallback);
}

nlohmann::json finite(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); }

nlohmann::json finite_list(const std::vector<double>& values) {
  nlohmann::json out = nlohmann::json::array();
  for (double v : values) out.push_back(finite(v));
  return out;
}

std::string run_mode(const nlohmann::json& run) {
  return run.contains("mode") && run["mode"].is_string() ? run["mode"].get<std::string>() : "none";
}

std::vector<std::string> position_tokens(const nlohmann::json& manifest, int prompt) {
  std::vector<std::string> out;
  const nlohmann::json& prompts = manifest.value("prompts", nlohmann::json::array());
  if (prompt < 0 || std::size_t(prompt) >= prompts.size()) return out;
  for (const auto& t : prompts[std::size_t(prompt)].value("tokens", nlohmann::json::array()))
    out.push_back(t.is_string() ? t.get<std::string>() : t.dump());
  const nlohmann::json generation = manifest.value("generation", nlohmann::json::object());
  const std::string mode = generation.value("mode", "none");
  const nlohmann::json steps = generation.value("steps", nlohmann::json::array());
  if (mode == "autoregressive") {
    for (const auto& s : steps) out.push_back(s.value("token_string", ""));
  } else if (mode == "masked_diffusion") {
    const std::size_t total = generation.value("output_ids", nlohmann::json::array()).size();
    while (out.size() < total) out.push_back("<mask>");
  }
  return out;
}

}  // namespace hooklens::analysis

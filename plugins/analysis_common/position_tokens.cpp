#include "position_tokens.h"

namespace hooklens::analysis {

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

#include "position_tokens.h"

#include <hooklens/error.h>
#include <hooklens/json_read.h>
#include <hooklens/run_format.h>

#include <fmt/format.h>

namespace hooklens::analysis {

GenerationMode run_mode(const nlohmann::json& run) {
  if (!run.contains("mode")) return GenerationMode::none;
  const auto mode = run["mode"].is_string() ? parse_generation_mode(run["mode"].get<std::string>()) : std::nullopt;
  if (!mode) throw Error(fmt::format("the run's mode {} is not none, autoregressive or masked_diffusion", brief_json(run["mode"])));
  return *mode;
}

std::vector<std::string> position_tokens(const nlohmann::json& manifest, int prompt) {
  std::vector<std::string> out;
  const nlohmann::json& prompts = manifest.value("prompts", nlohmann::json::array());
  if (prompt < 0 || std::size_t(prompt) >= prompts.size()) return out;
  for (const auto& t : prompts[std::size_t(prompt)].value("tokens", nlohmann::json::array()))
    out.push_back(t.is_string() ? t.get<std::string>() : t.dump());
  const nlohmann::json generation = manifest.value("generation", nlohmann::json::object());
  const GenerationMode mode = decode_generation_mode(manifest);
  const nlohmann::json steps = generation.value("steps", nlohmann::json::array());
  if (mode == GenerationMode::autoregressive) {
    for (const auto& s : steps) out.push_back(s.value("token_string", ""));
  } else if (mode == GenerationMode::masked_diffusion) {
    const std::size_t total = generation.value("output_ids", nlohmann::json::array()).size();
    while (out.size() < total) out.push_back("<mask>");
  }
  return out;
}

}  // namespace hooklens::analysis

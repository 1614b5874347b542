// PluginRegistry::adapter_for: the one loader function that calls into an Adapter, so it needs
// hooklens/model.h (and with it libtorch's headers), which plugin_loader.cpp stays free of.
#include <hooklens/error.h>
#include <hooklens/json_read.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace hooklens {
namespace {

// Why no adapter recognised a model directory, from its config.json (where adapters look first).
std::string config_clue(const std::filesystem::path& model) {
  std::error_code ec;
  if (!std::filesystem::is_directory(model, ec)) return "";
  const auto file = model / "config.json";
  if (!std::filesystem::exists(file, ec)) return fmt::format("; {} has no config.json", model.string());
  try {
    const nlohmann::json config = read_json_file(file);
    const auto type = config.is_object() ? config.find("model_type") : config.end();
    if (type == config.end() || !type->is_string())
      return fmt::format("; {} has no string \"model_type\"", file.string());
    return fmt::format("; {} says model_type '{}'", file.string(), brief_text(type->get<std::string>()));
  } catch (const Error& e) {
    return fmt::format("; {}", e.what());
  }
}

}  // namespace

std::shared_ptr<Adapter> PluginRegistry::adapter_for(const std::filesystem::path& model, std::string* name) const {
  std::string tried;
  for (const auto& record : plugins_) {
    if (record.kind != "adapter") continue;
    tried += (tried.empty() ? "" : ", ") + record.name;
    try {
      auto adapter = create_adapter(record.name);
      if (adapter->accepts(model)) {
        if (name) *name = record.name;
        return adapter;
      }
    } catch (const std::exception& e) {
      tried += fmt::format(" (failed: {})", e.what());  // a broken adapter must not hide the others
    }
  }
  std::string searched;
  for (const auto& dir : search_path_) searched += (searched.empty() ? "" : ":") + dir.string();
  throw Error(fmt::format("{}: no adapter plugin accepts this model (tried: {}; searched: {}){}", model.string(),
                          tried.empty() ? "none found" : tried, searched.empty() ? "no directory" : searched,
                          config_clue(model)));
}

}  // namespace hooklens

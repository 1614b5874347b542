// PluginRegistry::adapter_for: the one loader function that calls into an Adapter, so it needs
// hooklens/model.h (and with it libtorch's headers), which plugin_loader.cpp stays free of.
#include <hooklens/error.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>

#include <fmt/format.h>

namespace hooklens {

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
  throw Error(fmt::format("{}: no adapter plugin accepts this model (tried: {}; searched: {})", model.string(),
                          tried.empty() ? "none found" : tried, searched.empty() ? "no directory" : searched));
}

}  // namespace hooklens

// The custom adapter of the fuzz target's own build (adapters/custom compiled into the target, whose
// plugin entry is then the executable's own hooklens_plugin_entry).
#pragma once
#include "fuzz_util.h"
#include "hooklens/plugin.h"

#include <memory>

extern "C" const void* hooklens_plugin_entry;

namespace fuzz {

inline std::shared_ptr<hooklens::Adapter> custom_adapter() {
  return plugin_object<hooklens::Adapter>(hooklens_plugin_entry);
}

// The custom adapter's score for `model` (Adapter::score: 0 when it does not read it).
inline int custom_score(const std::filesystem::path& model) {
  using Info = const hooklens_plugin_info* (*)();
  const hooklens_plugin_info* plugin = reinterpret_cast<Info>(reinterpret_cast<std::uintptr_t>(hooklens_plugin_entry))();
  return plugin->score(model.c_str());
}

}  // namespace fuzz

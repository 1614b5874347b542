// The custom adapter of the fuzz target's own build (adapters/custom compiled into the target, whose
// plugin entry is then the executable's own hooklens_plugin_entry).
#pragma once
#include "hooklens/plugin.h"

#include <cstdint>
#include <memory>

extern "C" const void* hooklens_plugin_entry;

namespace fuzz {

inline std::shared_ptr<hooklens::Adapter> custom_adapter() {
  using Info = const hooklens_plugin_info* (*)();
  const hooklens_plugin_info* plugin = reinterpret_cast<Info>(reinterpret_cast<std::uintptr_t>(hooklens_plugin_entry))();
  return std::shared_ptr<hooklens::Adapter>(static_cast<hooklens::Adapter*>(plugin->create()),
                                            [plugin](hooklens::Adapter* a) { plugin->destroy(a); });
}

}  // namespace fuzz

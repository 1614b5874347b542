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

}  // namespace fuzz

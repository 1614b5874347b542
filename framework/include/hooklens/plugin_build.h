// A plugin's build identity: what it must share with the hooklens that loads it beyond the plugin
// ABI version (hooklens/plugin.h), in the spirit of ImGui's IMGUI_CHECKVERSION. Every plugin
// exports one (HOOKLENS_DEFINE_PLUGIN fills it in the plugin's own .cpp, with HOOKLENS_PLUGIN_BUILD
// from hooklens/plugin_define.h); libhooklens computes its own the same way, and the loader refuses
// a plugin whose identity differs, before calling into it, instead of crashing on a layout it
// misreads (e.g. a plugin built against another libtorch whose library happens to load).
// Torch-free: the loader includes it.
#pragma once
#include <cstdint>
#include <string>

extern "C" {
struct hooklens_plugin_build {
  const char* compiler;     // family and major version, e.g. "GCC 12", "Clang 14"
  const char* cxx_library;  // e.g. "libstdc++ (C++11 ABI)": std::string and std::list differ between the two ABIs
  const char* torch;        // libtorch's version from <torch/version.h>, e.g. "1.13.0"
  // Sizes of types that cross the boundary: a change the version numbers miss shows here.
  std::uint32_t sizeof_string, sizeof_path, sizeof_tensor, sizeof_capture_context, sizeof_hook_set,
      sizeof_model_info, sizeof_hook_point_info, sizeof_load_options;
};
}

namespace hooklens {

// This hooklens's own build identity (computed inside libhooklens with HOOKLENS_PLUGIN_BUILD).
const hooklens_plugin_build& host_plugin_build();

// Empty if `plugin` equals host_plugin_build(); else one line saying what differs, e.g. "plugin
// was built with libtorch 2.1.0, this hooklens with libtorch 1.13.0".
std::string plugin_build_mismatch(const hooklens_plugin_build& plugin);

}  // namespace hooklens

// What hooklens/plugin_build.h declares: this hooklens's build identity, computed with the same
// macro that every plugin expands in its own .cpp (so both sides are measured the same way), and
// the comparison the loader makes with a plugin's.
#include <hooklens/message_text.h>
#include <hooklens/plugin_build.h>
#include <hooklens/plugin_define.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstring>
#include <vector>

namespace hooklens {

const hooklens_plugin_build& host_plugin_build() {
  static const hooklens_plugin_build build = HOOKLENS_PLUGIN_BUILD;
  return build;
}

std::string plugin_build_mismatch(const hooklens_plugin_build& plugin) {
  const hooklens_plugin_build& host = host_plugin_build();
  std::vector<std::string> theirs, ours;
  auto text = [&](const std::string& what, const char* plugin_value, const char* host_value) {
    const std::string p = plugin_value ? brief_text(plugin_value) : "(none)";
    if (p == host_value) return;
    theirs.push_back(what + p);
    ours.push_back(what + host_value);
  };
  auto size = [&](const char* type, std::uint32_t plugin_value, std::uint32_t host_value) {
    if (plugin_value == host_value) return;
    theirs.push_back(fmt::format("sizeof({}) {}", type, plugin_value));
    ours.push_back(fmt::format("sizeof({}) {}", type, host_value));
  };
  text("libtorch ", plugin.torch, host.torch);
  text("", plugin.compiler, host.compiler);
  text("", plugin.cxx_library, host.cxx_library);
  size("std::string", plugin.sizeof_string, host.sizeof_string);
  size("std::filesystem::path", plugin.sizeof_path, host.sizeof_path);
  size("at::Tensor", plugin.sizeof_tensor, host.sizeof_tensor);
  size("hooklens::CaptureContext", plugin.sizeof_capture_context, host.sizeof_capture_context);
  size("hooklens::HookSet", plugin.sizeof_hook_set, host.sizeof_hook_set);
  size("hooklens::ModelInfo", plugin.sizeof_model_info, host.sizeof_model_info);
  size("hooklens::HookPointInfo", plugin.sizeof_hook_point_info, host.sizeof_hook_point_info);
  size("hooklens::LoadOptions", plugin.sizeof_load_options, host.sizeof_load_options);
  if (theirs.empty()) return "";
  return fmt::format("plugin was built with {}, this hooklens with {}", fmt::join(theirs, ", "), fmt::join(ours, ", "));
}

}  // namespace hooklens

// Helpers for tests that run models: loading through the adapter plugin, recording hook points.
#pragma once
#include "test_util.h"

#include <hooklens/hooks.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>

#include <map>
#include <string>
#include <vector>

namespace test {

// The named adapter plugin's score for `model` (Adapter::score in hooklens/model.h; 0: not its).
inline int adapter_score(const std::string& adapter, const fs::path& model) {
  return hooklens::PluginRegistry::score_from(plugin_file(adapter), model);
}

// Loads `dir` through the named adapter plugin from the build tree.
inline std::shared_ptr<hooklens::Model> load_model(const std::string& adapter, const fs::path& dir,
                                                   const hooklens::LoadOptions& options = {}) {
  REQUIRE(adapter_score(adapter, dir) > 0);
  auto a = std::static_pointer_cast<hooklens::Adapter>(
      hooklens::PluginRegistry::create_from(plugin_file(adapter), "adapter"));
  return hooklens::tie_lifetime(a->load(dir, options), a);
}

// Records every event of the hooked names, keyed "name@step".
struct Recorder {
  std::map<std::string, at::Tensor> seen;
  hooklens::HookSet hooks;
  explicit Recorder(std::vector<std::string> names) {
    hooks.add({std::move(names)}, [this](std::string_view name, const hooklens::CaptureContext& ctx, at::Tensor& t) {
      seen[fmt::format("{}@{}", name, ctx.step)] = t;
    });
  }
  const at::Tensor& at(const std::string& name, int step = 0) const {
    auto it = seen.find(fmt::format("{}@{}", name, step));
    REQUIRE(it != seen.end());
    return it->second;
  }
};

}  // namespace test

// An adapter plugin for the loader tests: accepts model paths ending in TEST_ADAPTER_EXT.
#include <hooklens/error.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>

#include <boost/dll/alias.hpp>

namespace {

class TestAdapter final : public hooklens::Adapter {
 public:
  bool accepts(const std::filesystem::path& model) const override { return model.extension() == TEST_ADAPTER_EXT; }
  std::unique_ptr<hooklens::Model> load(const std::filesystem::path& model, const hooklens::LoadOptions&) const override {
    throw hooklens::Error(model.string() + ": the test adapter loads nothing");
  }
};

const hooklens_plugin_info* test_adapter_info() {
  static const hooklens_plugin_info info{HOOKLENS_PLUGIN_ABI_VERSION, "adapter", TEST_ADAPTER_NAME, "0.0.1",
                                         "accepts paths ending in " TEST_ADAPTER_EXT,
                                         []() -> void* { return static_cast<hooklens::Adapter*>(new TestAdapter); },
                                         [](void* object) { delete static_cast<hooklens::Adapter*>(object); }};
  return &info;
}

}  // namespace

HOOKLENS_PLUGIN(test_adapter_info)

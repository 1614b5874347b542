// An adapter plugin for the loader tests: scores TEST_ADAPTER_SCORE (default 100) for model paths
// ending in TEST_ADAPTER_EXT, 0 for others, and throws for paths ending in ".throw". Creating one
// appends its name to HOOKLENS_TEST_ADAPTERS_CREATED, so a test can see which adapters were made.
#include <hooklens/error.h>
#include <hooklens/model.h>
#include <hooklens/plugin_define.h>

#include <cstdlib>
#include <string>

#ifndef TEST_ADAPTER_SCORE
#define TEST_ADAPTER_SCORE 100
#endif

namespace {

class TestAdapter final : public hooklens::Adapter {
 public:
  TestAdapter() {
    const char* created = std::getenv("HOOKLENS_TEST_ADAPTERS_CREATED");
    setenv("HOOKLENS_TEST_ADAPTERS_CREATED", (std::string(created ? created : "") + TEST_ADAPTER_NAME " ").c_str(), 1);
  }
  static int score(const std::filesystem::path& model) {
    if (model.extension() == ".throw") throw hooklens::Error(TEST_ADAPTER_NAME " cannot score this");
    return model.extension() == TEST_ADAPTER_EXT ? TEST_ADAPTER_SCORE : 0;
  }
  std::unique_ptr<hooklens::Model> load(const std::filesystem::path& model, const hooklens::LoadOptions&) const override {
    throw hooklens::Error(model.string() + ": " TEST_ADAPTER_NAME " loads nothing");
  }
};

}  // namespace

HOOKLENS_DEFINE_PLUGIN(hooklens::Adapter, TestAdapter, "adapter", TEST_ADAPTER_NAME, "0.0.1",
                       "scores paths ending in " TEST_ADAPTER_EXT)

// A well-formed sink plugin for the loader tests, its descriptor written by hand (as a plugin may)
// rather than by HOOKLENS_DEFINE_PLUGIN. Its destroy() leaves a trace in the environment
// (HOOKLENS_TEST_SINK_DESTROYED counts calls) so a test can see the loader used it.
#include <hooklens/plugin_define.h>
#include <hooklens/sink.h>

#include <cstdlib>
#include <string>

#ifndef TEST_SINK_VERSION
#error "define TEST_SINK_VERSION"
#endif

namespace {

class TestSink final : public hooklens::CaptureSink {
 public:
  void open(const nlohmann::json&) override {}
  void capture(std::string_view, const hooklens::CaptureContext&, const at::Tensor&) override {}
  void finish(const nlohmann::json&) override {}
  void abort(const std::string&) noexcept override {}
  std::string location() const override { return "test_sink " TEST_SINK_VERSION; }
};

void destroy_sink(void* object) {
  delete static_cast<hooklens::CaptureSink*>(object);
  const char* count = std::getenv("HOOKLENS_TEST_SINK_DESTROYED");
  setenv("HOOKLENS_TEST_SINK_DESTROYED", std::to_string((count ? std::atoi(count) : 0) + 1).c_str(), 1);
}

const hooklens_plugin_info* test_sink_info() {
  static const hooklens_plugin_build build = HOOKLENS_PLUGIN_BUILD;
  static const hooklens_plugin_info info{HOOKLENS_PLUGIN_ABI_VERSION,
                                         &build,
                                         "sink",
                                         "test_sink",
                                         TEST_SINK_VERSION,
                                         "a sink that does nothing",
                                         []() -> void* { return static_cast<hooklens::CaptureSink*>(new TestSink); },
                                         destroy_sink,
                                         nullptr};
  return &info;
}

}  // namespace

HOOKLENS_PLUGIN(test_sink_info)

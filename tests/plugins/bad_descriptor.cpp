// Libraries the loader must refuse, one per compile definition:
//   TEST_ABI_VERSION=N      a descriptor built for another ABI version
//   TEST_KIND="..."         a descriptor of an unknown kind (or "adapter", which then has no score)
//   TEST_NO_ENTRY           no hooklens_plugin_entry symbol at all
//   TEST_TORCH="x.y.z"      a build identity naming another libtorch
//   TEST_SIZE_DELTA=N       a build identity whose sizeof(hooklens::ModelInfo) is N bytes off
// The loader must refuse them before it creates anything: create() aborts the test program.
#include <hooklens/plugin_define.h>

#include <cstdlib>

#ifndef TEST_ABI_VERSION
#define TEST_ABI_VERSION HOOKLENS_PLUGIN_ABI_VERSION
#endif
#ifndef TEST_KIND
#define TEST_KIND "sink"
#endif

namespace {

hooklens_plugin_build forged_build() {
  hooklens_plugin_build build = HOOKLENS_PLUGIN_BUILD;
#ifdef TEST_TORCH
  build.torch = TEST_TORCH;
#endif
#ifdef TEST_SIZE_DELTA
  build.sizeof_model_info += TEST_SIZE_DELTA;
#endif
  return build;
}

const hooklens_plugin_info* bad_info() {
  static const hooklens_plugin_build build = forged_build();
  static const hooklens_plugin_info info{TEST_ABI_VERSION,
                                         &build,
                                         TEST_KIND,
                                         "bad",
                                         "0.0.0",
                                         "must be refused",
                                         []() -> void* { std::abort(); },
                                         [](void*) { std::abort(); },
                                         nullptr};
  return &info;
}

}  // namespace

#ifdef TEST_NO_ENTRY
extern "C" __attribute__((visibility("default"))) const hooklens_plugin_info* not_the_entry() { return bad_info(); }
#else
HOOKLENS_PLUGIN(bad_info)
#endif

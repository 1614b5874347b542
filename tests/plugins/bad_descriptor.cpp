// Libraries the loader must refuse, one per compile definition:
//   TEST_ABI_VERSION=N  a descriptor built for another ABI version
//   TEST_KIND="..."     a descriptor of an unknown kind
//   TEST_NO_ENTRY       no hooklens_plugin_entry symbol at all
// No libtorch: only the descriptor matters.
#include <hooklens/plugin.h>

#include <boost/dll/alias.hpp>

#ifndef TEST_ABI_VERSION
#define TEST_ABI_VERSION HOOKLENS_PLUGIN_ABI_VERSION
#endif
#ifndef TEST_KIND
#define TEST_KIND "sink"
#endif

namespace {

const hooklens_plugin_info* bad_info() {
  static const hooklens_plugin_info info{TEST_ABI_VERSION, TEST_KIND, "bad", "0.0.0", "must be refused",
                                         []() -> void* { return new int(0); },
                                         [](void* object) { delete static_cast<int*>(object); }};
  return &info;
}

}  // namespace

#ifdef TEST_NO_ENTRY
extern "C" __attribute__((visibility("default"))) const hooklens_plugin_info* not_the_entry() { return bad_info(); }
#else
HOOKLENS_PLUGIN(bad_info)
#endif

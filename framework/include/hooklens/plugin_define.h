// For plugin authors: defines the entry point of a plugin library in one line.
//
//   HOOKLENS_DEFINE_PLUGIN(hooklens::Adapter, MyAdapter, "adapter", "my_arch", "1.0", "reads my models")
//
// Use it once, at global scope, in one .cpp of the plugin. It exports the plugin's build identity
// (hooklens/plugin_build.h), computed here, in the plugin's own translation unit; an adapter class
// must also have `static int score(const std::filesystem::path& model)` (hooklens/model.h), which
// the loader calls to choose an adapter without creating one.
//
// Plugin sources include libtorch already (every interface passes tensors or models), so the
// headers the identity needs cost nothing here; keep this header out of code that is no plugin.
#pragma once
#include <hooklens/hooks.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>
#include <hooklens/plugin_build.h>

#include <ATen/core/Tensor.h>
#include <boost/dll/alias.hpp>
#include <torch/version.h>

#include <filesystem>
#include <string>
#include <type_traits>

#define HOOKLENS_BUILD_STRINGIFY_(x) #x
#define HOOKLENS_BUILD_STRINGIFY(x) HOOKLENS_BUILD_STRINGIFY_(x)
#if defined(__clang__)
#define HOOKLENS_BUILD_COMPILER "Clang " HOOKLENS_BUILD_STRINGIFY(__clang_major__)
#elif defined(__GNUC__)
#define HOOKLENS_BUILD_COMPILER "GCC " HOOKLENS_BUILD_STRINGIFY(__GNUC__)
#else
#define HOOKLENS_BUILD_COMPILER "another compiler"
#endif
#if defined(_LIBCPP_VERSION)
#define HOOKLENS_BUILD_CXX_LIBRARY "libc++"
#elif defined(__GLIBCXX__) && _GLIBCXX_USE_CXX11_ABI
#define HOOKLENS_BUILD_CXX_LIBRARY "libstdc++ (C++11 ABI)"
#elif defined(__GLIBCXX__)
#define HOOKLENS_BUILD_CXX_LIBRARY "libstdc++ (old ABI)"
#else
#define HOOKLENS_BUILD_CXX_LIBRARY "another C++ library"
#endif

// The build identity of the translation unit it is expanded in: an initializer of hooklens_plugin_build.
#define HOOKLENS_PLUGIN_BUILD                                                                                     \
  {                                                                                                             \
    HOOKLENS_BUILD_COMPILER, HOOKLENS_BUILD_CXX_LIBRARY, TORCH_VERSION, sizeof(std::string),                    \
        sizeof(std::filesystem::path), sizeof(at::Tensor), sizeof(hooklens::CaptureContext),                    \
        sizeof(hooklens::HookSet), sizeof(hooklens::ModelInfo), sizeof(hooklens::HookPointInfo),                \
        sizeof(hooklens::LoadOptions)                                                                           \
  }

namespace hooklens::plugin_define {

template <class Impl, class = void>
struct has_score : std::false_type {};
template <class Impl>
struct has_score<Impl, std::enable_if_t<std::is_convertible_v<decltype(&Impl::score), int (*)(const std::filesystem::path&)>>>
    : std::true_type {};

// The descriptor's score function for Interface = Adapter; null for the other kinds.
template <class Interface, class Impl>
constexpr int (*score_function())(const char*) {
  if constexpr (std::is_same_v<Interface, Adapter>) {
    static_assert(has_score<Impl>::value,
                  "an adapter plugin class needs `static int score(const std::filesystem::path& model)`");
    return [](const char* model) { return Impl::score(std::filesystem::path(model)); };
  } else {
    return nullptr;
  }
}

}  // namespace hooklens::plugin_define

#define HOOKLENS_DEFINE_PLUGIN(Interface, Impl, kind, name, version, description)                              \
  namespace hooklens_plugin_definition {                                                                     \
  static void* create() { return static_cast<Interface*>(new Impl()); }                                      \
  static void destroy(void* object) { delete static_cast<Interface*>(object); }                              \
  static const hooklens_plugin_info* info() {                                                                \
    static const hooklens_plugin_build build = HOOKLENS_PLUGIN_BUILD;                                        \
    static const hooklens_plugin_info plugin{HOOKLENS_PLUGIN_ABI_VERSION,                                    \
                                             &build,                                                         \
                                             kind,                                                           \
                                             name,                                                           \
                                             version,                                                        \
                                             description,                                                    \
                                             &create,                                                        \
                                             &destroy,                                                       \
                                             hooklens::plugin_define::score_function<Interface, Impl>()};   \
    return &plugin;                                                                                          \
  }                                                                                                          \
  }                                                                                                          \
  HOOKLENS_PLUGIN(hooklens_plugin_definition::info)

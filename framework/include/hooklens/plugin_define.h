// For plugin authors: defines the entry point of a plugin library in one line.
//
//   HOOKLENS_DEFINE_PLUGIN(hooklens::Adapter, MyAdapter, "adapter", "my_arch", "1.0", "reads my models")
//
// Use it once, at global scope, in one .cpp of the plugin.
#pragma once
#include <hooklens/plugin.h>

#include <boost/dll/alias.hpp>

#define HOOKLENS_DEFINE_PLUGIN(Interface, Impl, kind, name, version, description)                         \
  namespace hooklens_plugin_definition {                                                                \
  static void* create() { return static_cast<Interface*>(new Impl()); }                                 \
  static void destroy(void* object) { delete static_cast<Interface*>(object); }                         \
  static const hooklens_plugin_info* info() {                                                           \
    static const hooklens_plugin_info plugin{HOOKLENS_PLUGIN_ABI_VERSION, kind, name, version, description, \
                                             &create, &destroy};                                        \
    return &plugin;                                                                                     \
  }                                                                                                     \
  }                                                                                                     \
  HOOKLENS_PLUGIN(hooklens_plugin_definition::info)

// The plugin ABI and the loader (implemented in plugin.cpp).
//
// A plugin shared library exports one C-linkage entry point (a Boost.DLL alias named
// "hooklens_plugin_entry") returning a hooklens_plugin_info. The loader checks, in this order and
// before it calls anything else in the library:
//   1. `abi_version` (the only field read before it matches);
//   2. `build`, the plugin's build identity (hooklens/plugin_build.h: compiler, C++ library ABI,
//      libtorch version, sizes of the shared types), against this hooklens's own;
//   3. the other fields (kind, name, create/destroy, and `score` for an adapter).
// `create` returns a new object of the kind's interface (kind "adapter": hooklens::Adapter; "sink":
// hooklens::CaptureSink; "analyzer": hooklens::Analyzer; "renderer": hooklens::Renderer); `destroy`
// deletes it inside the library. Objects handed out by the loader keep their library loaded.
//
// When HOOKLENS_PLUGIN_ABI_VERSION changes (as LLVM's pass-plugin API version does): whenever a
// plugin built against the previous headers could misread what crosses the boundary, i.e.
//   - the layout of hooklens_plugin_info or hooklens_plugin_build, or the meaning of a field;
//   - the virtual functions (added, removed, reordered, another signature or contract) of the
//     classes `create` returns and of those they hand back or receive: Adapter, Model, ModelState,
//     Tokenizer, CaptureSink, Analyzer, Renderer;
//   - the members or layout of the types passed between a plugin and libhooklens: ModelInfo,
//     HookPointInfo, CaptureContext, HookSet, LoadOptions, TransformerSpec, TransformerWeights,
//     LayerWeights, and any other type of a public header both sides use;
//   - the required static members of a plugin class (Adapter's `score`).
// Not for: new functions in libhooklens, new header-only helpers, changes inside .cpp files that
// keep every contract. The build identity catches what the number cannot (another compiler,
// libtorch or standard library, a size that changed), but not a reordered virtual function or a
// member of the same size: those need the number.
//
// Version 2: the build identity and the adapters' static score; Adapter::accepts removed.
// Version 3: Analyzer::merges_state, save_state and merge_state (runs over several processes).
// Version 4: Analyzer::use_model and Model::unembed (the logit lens).
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#define HOOKLENS_PLUGIN_ABI_VERSION 4u

extern "C" {
struct hooklens_plugin_build;  // hooklens/plugin_build.h

struct hooklens_plugin_info {
  std::uint32_t abi_version;           // HOOKLENS_PLUGIN_ABI_VERSION the plugin was built against
  const hooklens_plugin_build* build;  // how the plugin was built; must equal this hooklens's
  const char* kind;                    // "adapter" | "sink" | "analyzer" | "renderer"
  const char* name;
  const char* version;
  const char* description;
  void* (*create)();
  void (*destroy)(void*);
  // Adapters only (null otherwise): how well the adapter reads the model at this path, without an
  // Adapter being created; Adapter::score in hooklens/model.h says what the numbers mean.
  int (*score)(const char* model);
};
}

// In a plugin's .cpp: `HOOKLENS_PLUGIN(my_info_function)` where
// `const hooklens_plugin_info* my_info_function()`. Include <boost/dll/alias.hpp> first.
// HOOKLENS_DEFINE_PLUGIN (hooklens/plugin_define.h) writes all of it in one line.
#define HOOKLENS_PLUGIN(info_function) BOOST_DLL_ALIAS(info_function, hooklens_plugin_entry)

namespace hooklens {

class Adapter;
class Analyzer;
class CaptureSink;
class Renderer;

struct PluginRecord {
  std::filesystem::path path;
  std::string kind, name, version, description;
};

class PluginRegistry {
 public:
  // Directories searched, in order: each entry of HOOKLENS_PLUGIN_PATH (':'-separated), the build
  // tree's plugins/ (beside the executable's ../plugins), the install tree's lib/hooklens/plugins.
  static std::vector<std::filesystem::path> default_search_path();

  explicit PluginRegistry(std::vector<std::filesystem::path> search_path = default_search_path());
  ~PluginRegistry();

  // Every plugin found, in search-path order (then by file name within a directory). Libraries
  // that fail to load, lack the entry point, have another ABI version or build identity, or a bad
  // descriptor are not listed; their errors are in `problems()` (one line each, naming the file).
  const std::vector<PluginRecord>& plugins() const;
  const std::vector<std::string>& problems() const;

  // Reads one library's descriptor; throws Error naming the file on any failure.
  static PluginRecord inspect(const std::filesystem::path& library);

  // A new object from the named plugin of that kind; throws Error if there is none.
  std::shared_ptr<Adapter> create_adapter(const std::string& name) const;
  std::shared_ptr<CaptureSink> create_sink(const std::string& name) const;
  std::shared_ptr<Analyzer> create_analyzer(const std::string& name) const;
  std::shared_ptr<Renderer> create_renderer(const std::string& name) const;
  // The adapter that scores the model highest (Adapter::score); only that one is created. On a
  // tie the one listed first in plugins() wins, with a warning naming the others. Throws Error
  // listing the adapters tried when none scores above 0.
  std::shared_ptr<Adapter> adapter_for(const std::filesystem::path& model, std::string* name = nullptr) const;

  // Loads a library directly (not from the search path) and creates its object.
  static std::shared_ptr<void> create_from(const std::filesystem::path& library, const std::string& kind);
  // Loads an adapter library directly and returns its score for `model`, creating nothing.
  static int score_from(const std::filesystem::path& library, const std::filesystem::path& model);

 private:
  std::shared_ptr<void> create(const std::string& kind, const std::string& name) const;
  std::vector<std::filesystem::path> search_path_;
  std::vector<PluginRecord> plugins_;
  std::vector<std::string> problems_;
};

// Keeps whatever `owner` holds (e.g. the library an adapter came from) alive as long as `object`.
template <class T, class Owner>
std::shared_ptr<T> tie_lifetime(std::unique_ptr<T> object, std::shared_ptr<Owner> owner) {
  struct Holder {
    std::shared_ptr<Owner> owner;  // destroyed after the object
    std::unique_ptr<T> object;
  };
  auto holder = std::make_shared<Holder>(Holder{std::move(owner), std::move(object)});
  T* raw = holder->object.get();
  return std::shared_ptr<T>(holder, raw);
}

}  // namespace hooklens

// The plugin ABI and the loader.
//
// A plugin shared library exports one C-linkage entry point (a Boost.DLL alias named
// "hooklens_plugin_entry") returning a hooklens_plugin_info. The host reads `abi_version` first and
// refuses a mismatch before touching anything else. `create` returns a new object of the kind's
// interface (kind "adapter": hooklens::Adapter; "sink": hooklens::CaptureSink; "analyzer":
// hooklens::Analyzer; "renderer": hooklens::Renderer); `destroy` deletes it inside the library.
// Objects handed out by the loader keep their library loaded.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#define HOOKLENS_PLUGIN_ABI_VERSION 1u

extern "C" {
struct hooklens_plugin_info {
  std::uint32_t abi_version;  // HOOKLENS_PLUGIN_ABI_VERSION the plugin was built against
  const char* kind;           // "adapter" | "sink" | "analyzer" | "renderer"
  const char* name;
  const char* version;
  const char* description;
  void* (*create)();
  void (*destroy)(void*);
};
}

// In a plugin's .cpp: `HOOKLENS_PLUGIN(my_info_function)` where
// `const hooklens_plugin_info* my_info_function()`. Include <boost/dll/alias.hpp> first.
#define HOOKLENS_PLUGIN(info_function) BOOST_DLL_ALIAS(info_function, hooklens_plugin_entry)

namespace hooklens {

class Adapter;
class Analyzer;
class CaptureSink;
class Renderer;

struct PluginRecord {
  std::filesystem::path path;
  std::string kind, name, version, description;
  std::uint32_t abi_version = 0;
};

class PluginRegistry {
 public:
  // Directories searched, in order: each entry of HOOKLENS_PLUGIN_PATH (':'-separated), the build
  // tree's plugins/ (beside the executable's ../plugins), the install tree's lib/hooklens/plugins.
  static std::vector<std::filesystem::path> default_search_path();

  explicit PluginRegistry(std::vector<std::filesystem::path> search_path = default_search_path());
  ~PluginRegistry();

  // Every plugin found. Libraries that fail to load, lack the entry point, or have another ABI
  // version are not listed; their errors are in `problems()` (one line each, naming the file).
  const std::vector<PluginRecord>& plugins() const;
  const std::vector<std::string>& problems() const;

  // Reads one library's descriptor; throws Error naming the file on any failure.
  static PluginRecord inspect(const std::filesystem::path& library);

  // A new object from the named plugin of that kind; throws Error if there is none.
  std::shared_ptr<Adapter> create_adapter(const std::string& name) const;
  std::shared_ptr<CaptureSink> create_sink(const std::string& name) const;
  std::shared_ptr<Analyzer> create_analyzer(const std::string& name) const;
  std::shared_ptr<Renderer> create_renderer(const std::string& name) const;
  // The adapter whose accepts() says yes to the model; throws Error listing the adapters tried.
  std::shared_ptr<Adapter> adapter_for(const std::filesystem::path& model, std::string* name = nullptr) const;

  // Loads a library directly (not from the search path) and creates its object.
  static std::shared_ptr<void> create_from(const std::filesystem::path& library, const std::string& kind);

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

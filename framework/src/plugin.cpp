// What hooklens/plugin.h declares: the plugin loader (finds hooklens_*.so libraries, checks their
// descriptor and build identity, hands out objects that keep their library loaded) and the choice
// of an adapter by score. No libtorch here: Adapter and the other interfaces are only forward
// declared (a void* -> T* cast needs no definition), and a score is a plain function of the
// descriptor. This hooklens's own build identity comes from plugin_build.cpp, which has libtorch.
#include <hooklens/error.h>
#include <hooklens/json_read.h>
#include <hooklens/plugin.h>
#include <hooklens/plugin_build.h>

#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <dlfcn.h>
#include <elf.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <set>
#include <system_error>

namespace fs = std::filesystem;

namespace hooklens {
namespace {

constexpr const char* kEntryName = "hooklens_plugin_entry";
const char* const kKinds[] = {"adapter", "sink", "analyzer", "renderer"};

struct LoadedPlugin {
  std::shared_ptr<boost::dll::shared_library> library;
  const hooklens_plugin_info* info = nullptr;
  PluginRecord record;
};

// dlopen maps an ELF file's segments without comparing them with the file's size, so a truncated
// library (an interrupted copy) kills the process with SIGBUS. Checking the program headers first
// turns that into an Error. Anything that is not a 64-bit ELF file is left to dlopen's messages.
void check_elf_extents(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  Elf64_Ehdr header{};
  if (!in.read(reinterpret_cast<char*>(&header), sizeof header) || std::memcmp(header.e_ident, ELFMAG, SELFMAG) != 0 ||
      header.e_ident[EI_CLASS] != ELFCLASS64)
    return;
  std::error_code ec;
  const std::uint64_t size = fs::file_size(path, ec);
  auto fail = [&] {
    throw Error(fmt::format("{}: cannot load plugin: truncated or corrupt ELF file ({} bytes)", path.string(), size));
  };
  if (ec || header.e_phentsize != sizeof(Elf64_Phdr) || header.e_phoff > size ||
      std::uint64_t(header.e_phnum) * sizeof(Elf64_Phdr) > size - header.e_phoff)
    fail();
  in.seekg(static_cast<std::streamoff>(header.e_phoff));
  for (unsigned i = 0; i < header.e_phnum; ++i) {
    Elf64_Phdr segment{};
    if (!in.read(reinterpret_cast<char*>(&segment), sizeof segment)) fail();
    if (segment.p_offset > size || segment.p_filesz > size - segment.p_offset) fail();
  }
}

std::shared_ptr<boost::dll::shared_library> load_library(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Error(fmt::format("{}: cannot load plugin: no such file", path.string()));
  if (fs::is_directory(path, ec)) throw Error(fmt::format("{}: cannot load plugin: it is a directory", path.string()));
  check_elf_extents(path);
  auto library = std::make_shared<boost::dll::shared_library>();
  boost::system::error_code load_error;
  // rtld_now: an unresolved symbol is reported here, not as a crash at the first call.
  library->load(boost::dll::fs::path(path.string()),
                boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local, load_error);
  if (load_error || !library->is_loaded()) {
    const char* pending = dlerror();  // Boost.DLL leaves dlopen's message pending; read it here
    std::string why = pending ? pending : load_error.message();
    const std::string prefix = path.string() + ": ";  // dlerror often repeats the path
    if (why.compare(0, prefix.size(), prefix) == 0) why.erase(0, prefix.size());
    throw Error(fmt::format("{}: cannot load plugin: {}", path.string(), why));
  }
  return library;
}

// Loads the library and validates its descriptor (plugin.h): the ABI version first, before any
// other field; then the build identity, before anything else of the library is trusted; then the rest.
LoadedPlugin load_plugin(const fs::path& path) {
  LoadedPlugin loaded;
  loaded.library = load_library(path);
  if (!loaded.library->has(kEntryName))
    throw Error(fmt::format("{}: not a hooklens plugin (no '{}' entry point)", path.string(), kEntryName));
  auto& entry = loaded.library->get_alias<const hooklens_plugin_info*()>(kEntryName);
  const hooklens_plugin_info* info = entry();
  if (!info) throw Error(fmt::format("{}: plugin entry point returned no descriptor", path.string()));
  if (info->abi_version != HOOKLENS_PLUGIN_ABI_VERSION)
    throw Error(fmt::format("{}: plugin was built for hooklens plugin ABI version {}, this hooklens has ABI version {};"
                            " rebuild the plugin",
                            path.string(), info->abi_version, HOOKLENS_PLUGIN_ABI_VERSION));
  if (!info->build) throw Error(fmt::format("{}: plugin descriptor has no build identity", path.string()));
  const std::string mismatch = plugin_build_mismatch(*info->build);
  if (!mismatch.empty())
    throw Error(fmt::format("{}: {}; rebuild the plugin against this hooklens", path.string(), mismatch));
  if (!info->kind || !info->name || !info->version || !info->description || !info->create || !info->destroy)
    throw Error(fmt::format("{}: plugin descriptor has a null field", path.string()));
  const std::string kind = info->kind;
  if (std::find(std::begin(kKinds), std::end(kKinds), kind) == std::end(kKinds))
    throw Error(fmt::format("{}: plugin has unknown kind '{}' (expected adapter, sink, analyzer or renderer)",
                            path.string(), brief_text(kind)));
  if (!*info->name) throw Error(fmt::format("{}: plugin has an empty name", path.string()));
  if (kind == "adapter" && !info->score)
    throw Error(fmt::format("{}: adapter plugin '{}' has no score function", path.string(), brief_text(info->name)));
  loaded.info = info;
  loaded.record = PluginRecord{path, kind, info->name, info->version, info->description};
  return loaded;
}

// The adapter's score for `model`. What the score throws becomes an Error of libhooklens's own,
// made while the library is still loaded: the original's code may go with the library.
int score_of(const LoadedPlugin& loaded, const fs::path& model) {
  const PluginRecord& record = loaded.record;
  if (record.kind != "adapter")
    throw Error(fmt::format("{}: is a {} plugin ('{}'), expected a plugin of kind 'adapter'", record.path.string(),
                            record.kind, record.name));
  try {
    return loaded.info->score(model.c_str());
  } catch (const std::exception& e) {
    throw Error(fmt::format("{}: adapter '{}' cannot score {}: {}", record.path.string(), record.name, model.string(),
                            one_line(e.what())));
  } catch (...) {
    throw Error(fmt::format("{}: adapter '{}' cannot score {}: it threw something that is no std::exception",
                            record.path.string(), record.name, model.string()));
  }
}

// The object is destroyed by its own library, and only then may the library be unloaded: the
// deleter owns the library handle and drops it right after destroy().
struct PluginObjectDeleter {
  std::shared_ptr<boost::dll::shared_library> library;
  void (*destroy)(void*);
  void operator()(void* object) {
    destroy(object);
    library.reset();
  }
};

std::shared_ptr<void> create_object(const LoadedPlugin& loaded) {
  const auto& record = loaded.record;
  void* object = nullptr;
  try {
    object = loaded.info->create();
  } catch (const std::exception& e) {
    throw Error(fmt::format("{}: {} plugin '{}' failed to create its object: {}", record.path.string(), record.kind,
                            record.name, e.what()));
  }
  if (!object)
    throw Error(fmt::format("{}: {} plugin '{}' created no object", record.path.string(), record.kind, record.name));
  return std::shared_ptr<void>(object, PluginObjectDeleter{loaded.library, loaded.info->destroy});
}

bool is_plugin_file_name(const fs::path& file) {
  const std::string name = file.filename().string();
  return name.size() > 12 && name.compare(0, 9, "hooklens_") == 0 && file.extension() == ".so";
}

void add_existing_dir(std::vector<fs::path>& dirs, const fs::path& dir) {
  std::error_code ec;
  if (dir.empty() || !fs::is_directory(dir, ec)) return;
  const fs::path canonical = fs::weakly_canonical(dir, ec);
  const fs::path& key = ec ? dir : canonical;
  if (std::find(dirs.begin(), dirs.end(), key) == dirs.end()) dirs.push_back(key);
}

std::string join_names(const std::vector<PluginRecord>& plugins, const std::string& kind) {
  std::string names;
  for (const auto& p : plugins)
    if (p.kind == kind) names += (names.empty() ? "" : ", ") + p.name;
  return names.empty() ? "none" : names;
}

std::string join_paths(const std::vector<fs::path>& dirs) {
  std::string out;
  for (const auto& d : dirs) out += (out.empty() ? "" : ":") + d.string();
  return out.empty() ? "(no directory)" : out;
}

// Why no adapter recognised a model directory, from its config.json (where adapters look first).
std::string config_clue(const fs::path& model) {
  std::error_code ec;
  if (!fs::is_directory(model, ec)) return "";
  const auto file = model / "config.json";
  if (!fs::exists(file, ec)) return fmt::format("; {} has no config.json", model.string());
  try {
    const nlohmann::json config = read_json_file(file);
    const auto type = config.is_object() ? config.find("model_type") : config.end();
    if (type == config.end() || !type->is_string())
      return fmt::format("; {} has no string \"model_type\"", file.string());
    return fmt::format("; {} says model_type '{}'", file.string(), brief_text(type->get<std::string>()));
  } catch (const Error& e) {
    return fmt::format("; {}", e.what());
  }
}

}  // namespace

std::vector<fs::path> PluginRegistry::default_search_path() {
  std::vector<fs::path> dirs;
  if (const char* env = std::getenv("HOOKLENS_PLUGIN_PATH")) {
    std::string value = env;
    std::size_t start = 0;
    while (start <= value.size()) {
      const std::size_t end = std::min(value.find(':', start), value.size());
      add_existing_dir(dirs, value.substr(start, end - start));  // empty entries are skipped
      start = end + 1;
    }
  }
  boost::system::error_code ec;
  const auto exe = boost::dll::program_location(ec);
  const fs::path exe_dir = ec ? fs::path() : fs::path(exe.parent_path().string());
  if (!exe_dir.empty()) add_existing_dir(dirs, exe_dir / ".." / "plugins");  // build tree
#ifdef HOOKLENS_INSTALL_PLUGIN_DIR
  add_existing_dir(dirs, HOOKLENS_INSTALL_PLUGIN_DIR);
#endif
  if (!exe_dir.empty()) add_existing_dir(dirs, exe_dir / ".." / "lib" / "hooklens" / "plugins");  // relocated install
  return dirs;
}

PluginRegistry::PluginRegistry(std::vector<fs::path> search_path) : search_path_(std::move(search_path)) {
  std::set<std::pair<std::string, std::string>> seen;  // (kind, name): the first directory wins
  for (const auto& dir : search_path_) {
    std::vector<fs::path> files;
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
      if (is_plugin_file_name(it->path())) files.push_back(it->path());
    if (ec) {
      problems_.push_back(fmt::format("{}: cannot list plugin directory: {}", dir.string(), ec.message()));
      continue;
    }
    std::sort(files.begin(), files.end());
    for (const auto& file : files) {
      try {
        PluginRecord record = inspect(file);
        if (seen.insert({record.kind, record.name}).second) plugins_.push_back(std::move(record));
      } catch (const std::exception& e) {
        problems_.push_back(e.what());
      }
    }
  }
}

PluginRegistry::~PluginRegistry() = default;

const std::vector<PluginRecord>& PluginRegistry::plugins() const { return plugins_; }
const std::vector<std::string>& PluginRegistry::problems() const { return problems_; }

PluginRecord PluginRegistry::inspect(const fs::path& library) { return load_plugin(library).record; }

std::shared_ptr<void> PluginRegistry::create_from(const fs::path& library, const std::string& kind) {
  LoadedPlugin loaded = load_plugin(library);
  if (loaded.record.kind != kind)
    throw Error(fmt::format("{}: is a {} plugin ('{}'), expected a plugin of kind '{}'", library.string(), loaded.record.kind,
                            loaded.record.name, kind));
  return create_object(loaded);
}

int PluginRegistry::score_from(const fs::path& library, const fs::path& model) {
  const LoadedPlugin loaded = load_plugin(library);
  return score_of(loaded, model);
}

std::shared_ptr<void> PluginRegistry::create(const std::string& kind, const std::string& name) const {
  for (const auto& record : plugins_)
    if (record.kind == kind && record.name == name) return create_from(record.path, kind);
  throw Error(fmt::format("no {} plugin named '{}' (found {} plugins: {}; searched {})", kind, name, kind,
                          join_names(plugins_, kind), join_paths(search_path_)));
}

std::shared_ptr<Adapter> PluginRegistry::create_adapter(const std::string& name) const {
  return std::static_pointer_cast<Adapter>(create("adapter", name));
}

std::shared_ptr<CaptureSink> PluginRegistry::create_sink(const std::string& name) const {
  return std::static_pointer_cast<CaptureSink>(create("sink", name));
}

std::shared_ptr<Analyzer> PluginRegistry::create_analyzer(const std::string& name) const {
  return std::static_pointer_cast<Analyzer>(create("analyzer", name));
}

std::shared_ptr<Renderer> PluginRegistry::create_renderer(const std::string& name) const {
  return std::static_pointer_cast<Renderer>(create("renderer", name));
}

// Each adapter's library is loaded to ask its score, and unloaded again unless it wins; only the
// winner's object is created.
std::shared_ptr<Adapter> PluginRegistry::adapter_for(const fs::path& model, std::string* name) const {
  std::string tried;
  std::optional<LoadedPlugin> best;
  int best_score = 0;
  std::vector<std::string> tied;  // adapters that scored best_score after `best` was found
  for (const auto& record : plugins_) {
    if (record.kind != "adapter") continue;
    tried += (tried.empty() ? "" : ", ") + record.name;
    LoadedPlugin loaded;  // outlives the handler below, which may still touch the library's exception
    try {
      loaded = load_plugin(record.path);
      const int score = score_of(loaded, model);
      if (score > best_score) {
        best = std::move(loaded);
        best_score = score;
        tied.clear();
      } else if (best && score == best_score) {
        tied.push_back(record.name);
      }
    } catch (const std::exception& e) {
      tried += fmt::format(" (failed: {})", one_line(e.what()));  // a broken adapter must not hide the others
    }
  }
  if (best) {
    if (!tied.empty())
      warn(fmt::format("{}: adapters {} and {} read it equally well (score {}); using {}, found first "
                       "(--adapter NAME chooses)",
                       model.string(), best->record.name, fmt::to_string(fmt::join(tied, ", ")), best_score,
                       best->record.name));
    if (name) *name = best->record.name;
    return std::static_pointer_cast<Adapter>(create_object(*best));
  }
  std::string searched;
  for (const auto& dir : search_path_) searched += (searched.empty() ? "" : ":") + dir.string();
  throw Error(fmt::format("{}: no adapter plugin accepts this model (tried: {}; searched: {}){}", model.string(),
                          tried.empty() ? "none found" : tried, searched.empty() ? "no directory" : searched,
                          config_clue(model)));
}

}  // namespace hooklens

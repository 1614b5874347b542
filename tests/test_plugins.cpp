// The plugin loader against small test plugins (tests/plugins/, built into build/test_plugins):
// good ones are found, described and created; bad ones are refused with a message naming the file.
#include "test_util.h"

#include <hooklens/error.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>
#include <hooklens/runtime.h>
#include <hooklens/sink.h>

#include <catch2/catch.hpp>
#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <functional>

namespace fs = std::filesystem;
using hooklens::PluginRecord;
using hooklens::PluginRegistry;

using test::error_of;
using test::TempDir;

namespace {

const fs::path kPlugins = HOOKLENS_TEST_PLUGIN_DIR;
const fs::path kGood = kPlugins / "good";
const fs::path kOther = kPlugins / "other";
const fs::path kBad = kPlugins / "bad";

bool is_loaded(const fs::path& library) {
  void* handle = dlopen(library.c_str(), RTLD_LAZY | RTLD_NOLOAD);
  if (handle) dlclose(handle);
  return handle != nullptr;
}

const PluginRecord* find(const PluginRegistry& registry, const std::string& name) {
  for (const auto& p : registry.plugins())
    if (p.name == name) return &p;
  return nullptr;
}

void write_text(const fs::path& file, const std::string& text) { std::ofstream(file, std::ios::binary) << text; }

// A copy of `from` with every `find` replaced by `replace` (same length, so the ELF layout holds).
void write_patched(const fs::path& from, const fs::path& to, const std::string& find, const std::string& replace) {
  REQUIRE(find.size() == replace.size());
  std::string bytes = test::read_file(from);
  std::size_t count = 0;
  for (std::size_t at = bytes.find(find); at != std::string::npos; at = bytes.find(find, at + find.size()), ++count)
    bytes.replace(at, find.size(), replace);
  REQUIRE(count > 0);
  write_text(to, bytes);
}

// A shared library that is no hooklens plugin, found where Debian keeps zlib.
fs::path foreign_library() {
  for (const char* path : {"/usr/lib/x86_64-linux-gnu/libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/libz.so.1"})
    if (fs::exists(path)) return path;
  return {};
}

}  // namespace

TEST_CASE("a good plugin is found, described and created") {
  PluginRegistry registry({kGood});
  CHECK(registry.problems().empty());
  REQUIRE(registry.plugins().size() == 3);
  const PluginRecord* sink = find(registry, "test_sink");
  REQUIRE(sink);
  CHECK(sink->kind == "sink");
  CHECK(sink->version == "1.2.3");
  CHECK(sink->description == "a sink that does nothing");
  CHECK(sink->abi_version == HOOKLENS_PLUGIN_ABI_VERSION);
  CHECK(sink->path == kGood / "hooklens_test_sink.so");
  REQUIRE(find(registry, "adapter_a"));
  CHECK(find(registry, "adapter_a")->kind == "adapter");

  SECTION("the object keeps its library loaded, and is destroyed by the library's destroy()") {
    const fs::path library = kGood / "hooklens_test_sink.so";
    CHECK_FALSE(is_loaded(library));  // inspecting did not leave it loaded
    unsetenv("HOOKLENS_TEST_SINK_DESTROYED");
    std::shared_ptr<hooklens::CaptureSink> object;
    {
      PluginRegistry scoped({kGood});
      object = scoped.create_sink("test_sink");
    }
    REQUIRE(object);
    CHECK(is_loaded(library));
    CHECK(object->location() == "test_sink 1.2.3");  // code from the library still runs
    CHECK(std::getenv("HOOKLENS_TEST_SINK_DESTROYED") == nullptr);
    object.reset();
    REQUIRE(std::getenv("HOOKLENS_TEST_SINK_DESTROYED") != nullptr);
    CHECK(std::string(std::getenv("HOOKLENS_TEST_SINK_DESTROYED")) == "1");
    CHECK_FALSE(is_loaded(library));  // and the library went after the object
  }

  SECTION("create_from loads a library directly and checks its kind") {
    auto object = PluginRegistry::create_from(kGood / "hooklens_test_sink.so", "sink");
    CHECK(std::static_pointer_cast<hooklens::CaptureSink>(object)->location() == "test_sink 1.2.3");
    const std::string error = error_of([] { PluginRegistry::create_from(kGood / "hooklens_test_sink.so", "adapter"); });
    CHECK_THAT(error, Catch::Contains("hooklens_test_sink.so") && Catch::Contains("sink") &&
                          Catch::Contains("expected a plugin of kind 'adapter'"));
  }

  SECTION("unknown names and kind mismatches list what there is") {
    const std::string unknown = error_of([&] { registry.create_sink("nope"); });
    CHECK_THAT(unknown, Catch::Contains("'nope'") && Catch::Contains("test_sink") && Catch::Contains(kGood.string()));
    const std::string wrong_kind = error_of([&] { registry.create_adapter("test_sink"); });
    CHECK_THAT(wrong_kind, Catch::Contains("no adapter plugin named 'test_sink'") &&
                               Catch::Contains("adapter_a, adapter_b"));
  }

  SECTION("adapter_for asks each adapter") {
    std::string name;
    auto adapter = registry.adapter_for("/models/tiny.b", &name);
    REQUIRE(adapter);
    CHECK(name == "adapter_b");
    CHECK(adapter->accepts("x.b"));
    CHECK_FALSE(adapter->accepts("x.a"));
    const std::string none = error_of([&] { registry.adapter_for("/models/tiny.c"); });
    CHECK_THAT(none, Catch::Contains("/models/tiny.c") && Catch::Contains("adapter_a, adapter_b"));
  }
}

TEST_CASE("bad libraries are refused with a message naming the file") {
  SECTION("another ABI version") {
    const std::string error = error_of([] { PluginRegistry::inspect(kBad / "hooklens_bad_abi.so"); });
    CHECK_THAT(error, Catch::Contains((kBad / "hooklens_bad_abi.so").string()) && Catch::Contains("ABI version 999") &&
                          Catch::Contains("ABI version 1"));
  }
  SECTION("an unknown kind") {
    CHECK_THAT(error_of([] { PluginRegistry::inspect(kBad / "hooklens_bad_kind.so"); }),
               Catch::Contains("hooklens_bad_kind.so") && Catch::Contains("'gizmo'"));
  }
  SECTION("no entry point") {
    CHECK_THAT(error_of([] { PluginRegistry::inspect(kBad / "hooklens_no_entry.so"); }),
               Catch::Contains("hooklens_no_entry.so") && Catch::Contains("hooklens_plugin_entry"));
  }
  SECTION("a missing path, a directory, a text file and a truncated library") {
    TempDir tmp;
    CHECK_THAT(error_of([&] { PluginRegistry::inspect(tmp.path / "hooklens_missing.so"); }),
               Catch::Contains("hooklens_missing.so") && Catch::Contains("no such file"));
    CHECK_THAT(error_of([&] { PluginRegistry::inspect(tmp.path); }), Catch::Contains("directory"));
    write_text(tmp.path / "hooklens_garbage.so", "this is not a shared library\n");
    CHECK_THAT(error_of([&] { PluginRegistry::inspect(tmp.path / "hooklens_garbage.so"); }),
               Catch::Contains("hooklens_garbage.so: cannot load plugin: "));
    std::string elf(4096, '\0');
    std::ifstream(kGood / "hooklens_test_sink.so", std::ios::binary).read(elf.data(), elf.size());
    REQUIRE(elf.compare(1, 3, "ELF") == 0);
    write_text(tmp.path / "hooklens_truncated.so", elf);
    CHECK_THAT(error_of([&] { PluginRegistry::inspect(tmp.path / "hooklens_truncated.so"); }),
               Catch::Contains("hooklens_truncated.so: cannot load plugin: "));
    CHECK_THAT(error_of([&] { PluginRegistry::create_from(tmp.path / "hooklens_garbage.so", "sink"); }),
               Catch::Contains("hooklens_garbage.so"));
  }
}

TEST_CASE("foreign libraries are refused: empty, no hooklens entry point, another libtorch, a missing symbol") {
  TempDir tmp;
  write_text(tmp.path / "hooklens_empty.so", "");
  CHECK_THAT(error_of([&] { PluginRegistry::inspect(tmp.path / "hooklens_empty.so"); }),
             Catch::Contains("hooklens_empty.so: cannot load plugin: "));
  // Linked against a libtorch this machine does not have (its soname changed in a copy).
  write_patched(kGood / "hooklens_test_sink.so", tmp.path / "hooklens_other_torch.so", "libtorch_cpu.so",
                "libtorch_cpX.so");
  CHECK_THAT(error_of([&] { PluginRegistry::inspect(tmp.path / "hooklens_other_torch.so"); }),
             Catch::Contains("hooklens_other_torch.so: cannot load plugin: ") && Catch::Contains("libtorch_cpX.so"));
  // Needing a symbol the loaded libraries lack (as one built against another libtorch would):
  // refused when loaded (RTLD_NOW), not a crash at the first call.
  write_patched(kGood / "hooklens_test_sink.so", tmp.path / "hooklens_missing_symbol.so", "setenv", "setenX");
  CHECK_THAT(error_of([&] { PluginRegistry::inspect(tmp.path / "hooklens_missing_symbol.so"); }),
             Catch::Contains("hooklens_missing_symbol.so: cannot load plugin: ") && Catch::Contains("setenX"));
  const fs::path zlib = foreign_library();
  if (zlib.empty()) {
    WARN("skipped the foreign-library case: no libz.so.1 found");
    return;
  }
  fs::copy_file(zlib, tmp.path / "hooklens_zlib.so");
  CHECK_THAT(error_of([&] { PluginRegistry::inspect(tmp.path / "hooklens_zlib.so"); }),
             Catch::Contains("hooklens_zlib.so: not a hooklens plugin (no 'hooklens_plugin_entry' entry point)"));
  PluginRegistry registry({tmp.path, kGood});
  CHECK(registry.plugins().size() == 3);  // the good ones, found after the bad ones
  REQUIRE(registry.problems().size() == 4);
  for (const char* name :
       {"hooklens_empty.so", "hooklens_missing_symbol.so", "hooklens_other_torch.so", "hooklens_zlib.so"})
    CHECK(std::count_if(registry.problems().begin(), registry.problems().end(),
                        [&](const std::string& p) { return p.find(name) != std::string::npos; }) == 1);
}

TEST_CASE("the registry lists what it could not load as problems, without throwing") {
  TempDir tmp;
  for (const char* name : {"hooklens_bad_abi.so", "hooklens_bad_kind.so", "hooklens_no_entry.so"})
    fs::copy_file(kBad / name, tmp.path / name);
  write_text(tmp.path / "hooklens_garbage.so", "not a library");
  write_text(tmp.path / "notes.txt", "not a plugin name: ignored");
  write_text(tmp.path / "libhooklens_other.so", "not a plugin name: ignored");
  fs::create_directories(tmp.path / "hooklens_dir.so");  // a directory is not a plugin either

  PluginRegistry registry({tmp.path, kGood, tmp.path / "does-not-exist"});
  CHECK(registry.plugins().size() == 3);
  CHECK(find(registry, "test_sink"));
  CHECK_FALSE(find(registry, "bad"));
  const auto& problems = registry.problems();
  REQUIRE(problems.size() == 6);  // four bad libraries, one directory, one missing directory
  auto mentions = [&](const std::string& text) {
    return std::count_if(problems.begin(), problems.end(),
                         [&](const std::string& p) { return p.find(text) != std::string::npos; });
  };
  for (const char* name : {"hooklens_bad_abi.so", "hooklens_bad_kind.so", "hooklens_no_entry.so",
                           "hooklens_garbage.so", "hooklens_dir.so", "does-not-exist"})
    CHECK(mentions(name) == 1);
  for (const auto& p : problems) CHECK(p.find('\n') == std::string::npos);
}

TEST_CASE("HOOKLENS_PLUGIN_PATH comes first, in order, and the first directory wins") {
  const std::string good = fs::canonical(kGood).string(), other = fs::canonical(kOther).string();
  setenv("HOOKLENS_PLUGIN_PATH", (":" + other + "::" + good + ":/does/not/exist").c_str(), 1);
  auto path = PluginRegistry::default_search_path();
  REQUIRE(path.size() >= 2);
  CHECK(path[0] == other);
  CHECK(path[1] == good);
  CHECK(std::find(path.begin(), path.end(), fs::path("/does/not/exist")) == path.end());
  const fs::path build_plugins = fs::path(HOOKLENS_BUILD_DIR) / "plugins";
  if (fs::is_directory(build_plugins)) {
    REQUIRE(path.size() >= 3);
    CHECK(path[2] == fs::canonical(build_plugins));  // the build tree, beside bin/
  }
  {
    PluginRegistry registry;
    REQUIRE(find(registry, "test_sink"));
    CHECK(find(registry, "test_sink")->version == "2.0.0");
    CHECK(find(registry, "test_sink")->path.parent_path() == other);
    CHECK(registry.create_sink("test_sink")->location() == "test_sink 2.0.0");
  }
  setenv("HOOKLENS_PLUGIN_PATH", (good + ":" + other).c_str(), 1);
  {
    PluginRegistry registry;
    REQUIRE(find(registry, "test_sink"));
    CHECK(find(registry, "test_sink")->version == "1.2.3");
  }
  setenv("HOOKLENS_PLUGIN_PATH", "", 1);
  for (const auto& dir : PluginRegistry::default_search_path()) {
    CHECK(dir != good);
    CHECK(dir != other);
  }
}

TEST_CASE("libhooklens is built with optimisation unless this is a Debug build") {
  // The default build type's flags once came out empty: everything compiled at -O0, unnoticed.
  CHECK(hooklens::built_with_optimisation() == bool(HOOKLENS_EXPECT_OPTIMISED));
}

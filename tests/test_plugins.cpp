// The plugin loader against small test plugins (tests/plugins/, built into build/test_plugins):
// good ones are found, described and created; bad ones are refused with a message naming the file.
#include "test_util.h"

#include <hooklens/error.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>
#include <hooklens/plugin_build.h>
#include <hooklens/runtime.h>
#include <hooklens/sink.h>

#include <catch2/catch.hpp>
#include <fmt/ranges.h>
#include <dlfcn.h>
#include <torch/version.h>
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
const fs::path kScores = kPlugins / "scores";

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

// The names of the test adapters created since the last call, in order (test_adapter.cpp).
std::string adapters_created() {
  const char* created = std::getenv("HOOKLENS_TEST_ADAPTERS_CREATED");
  std::string names = created ? created : "";
  unsetenv("HOOKLENS_TEST_ADAPTERS_CREATED");
  return names;
}

// Collects the warnings given while it lives.
struct Warnings {
  std::vector<std::string> lines;
  Warnings() {
    hooklens::set_warning_handler([this](const std::string& line) { lines.push_back(line); });
  }
  ~Warnings() { hooklens::set_warning_handler({}); }
};

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

  SECTION("adapter_for asks each adapter's score and creates only the one it chooses") {
    adapters_created();
    std::string name;
    auto adapter = registry.adapter_for("/models/tiny.b", &name);
    REQUIRE(adapter);
    CHECK(name == "adapter_b");
    CHECK(adapters_created() == "adapter_b ");  // adapter_a, listed first, was scored, not created
    CHECK_THAT(error_of([&] { adapter->load("/models/tiny.b", {}); }), Catch::Contains("adapter_b loads nothing"));
    const std::string none = error_of([&] { registry.adapter_for("/models/tiny.c"); });
    CHECK(none == "/models/tiny.c: no adapter plugin accepts this model (tried: adapter_a, adapter_b; searched: " +
                      kGood.string() + ")");
    CHECK(adapters_created().empty());
  }

  SECTION("a score that throws is reported with the others, and hides none of them") {
    const std::string error = error_of([&] { registry.adapter_for("/models/tiny.throw"); });
    CHECK_THAT(error, Catch::Contains("tried: adapter_a (failed: " + (kGood / "hooklens_adapter_a.so").string() +
                                      ": adapter 'adapter_a' cannot score /models/tiny.throw: adapter_a cannot score "
                                      "this), adapter_b (failed: "));
    CHECK_THAT(error_of([] { PluginRegistry::score_from(kGood / "hooklens_adapter_b.so", "m.throw"); }),
               Catch::EndsWith("hooklens_adapter_b.so: adapter 'adapter_b' cannot score m.throw: adapter_b cannot score this"));
  }

  SECTION("score_from asks one library, creating nothing") {
    adapters_created();
    CHECK(PluginRegistry::score_from(kGood / "hooklens_adapter_a.so", "m.a") == 100);
    CHECK(PluginRegistry::score_from(kGood / "hooklens_adapter_a.so", "m.b") == 0);
    CHECK(adapters_created().empty());
    CHECK_THAT(error_of([] { PluginRegistry::score_from(kGood / "hooklens_test_sink.so", "m.a"); }),
               Catch::Contains("hooklens_test_sink.so: is a sink plugin ('test_sink'), expected a plugin of kind 'adapter'"));
  }

  SECTION("--adapter NAME (open_model with a name) uses that adapter whatever its score") {
    TempDir tmp;
    write_text(tmp.path / "model.b", "");
    adapters_created();
    std::string used;
    CHECK_THAT(error_of([&] { hooklens::open_model(registry, tmp.path / "model.b", "adapter_a", {}, &used); }),
               Catch::Contains("adapter_a loads nothing"));
    CHECK(adapters_created() == "adapter_a ");
    CHECK_THAT(error_of([&] { hooklens::open_model(registry, tmp.path / "model.b"); }),
               Catch::Contains("adapter_b loads nothing"));
    CHECK(adapters_created() == "adapter_b ");
  }
}

TEST_CASE("adapter choice: the highest score wins; a tie goes to the adapter found first, with a warning") {
  PluginRegistry registry({kScores, kGood});  // adapter_generic and adapter_twin are listed first
  REQUIRE(registry.problems().empty());
  adapters_created();
  std::string name;
  {
    Warnings warnings;
    registry.adapter_for("/models/tiny.b", &name);
    CHECK(warnings.lines.empty());
  }
  CHECK(name == "adapter_b");  // 100 beats adapter_generic's 10
  CHECK(adapters_created() == "adapter_b ");
  Warnings warnings;
  registry.adapter_for("/models/tiny.a", &name);
  CHECK(name == "adapter_twin");  // 100 each: adapter_twin's directory comes first
  CHECK(adapters_created() == "adapter_twin ");
  REQUIRE(warnings.lines.size() == 1);
  CHECK(warnings.lines[0] == "/models/tiny.a: adapters adapter_twin and adapter_a read it equally well (score 100); "
                             "using adapter_twin, found first (--adapter NAME chooses)");
}

TEST_CASE("bad libraries are refused with a message naming the file") {
  SECTION("another ABI version") {
    const std::string error = error_of([] { PluginRegistry::inspect(kBad / "hooklens_bad_abi.so"); });
    CHECK(error == fmt::format("{}: plugin was built for hooklens plugin ABI version 999, this hooklens has ABI "
                               "version {}; rebuild the plugin",
                               (kBad / "hooklens_bad_abi.so").string(), HOOKLENS_PLUGIN_ABI_VERSION));
  }
  SECTION("another libtorch, or a type of another size: refused before anything is created") {
    const fs::path torch = kBad / "hooklens_other_torch.so", size = kBad / "hooklens_other_size.so";
    CHECK(error_of([&] { PluginRegistry::inspect(torch); }) ==
          torch.string() + ": plugin was built with libtorch 9.9.9, this hooklens with libtorch " TORCH_VERSION
                           "; rebuild the plugin against this hooklens");
    // create() of these plugins aborts: reaching it would end the test program.
    CHECK_THAT(error_of([&] { PluginRegistry::create_from(torch, "sink"); }), Catch::Contains("libtorch 9.9.9"));
    const std::uint32_t ours = hooklens::host_plugin_build().sizeof_model_info;
    CHECK(ours == sizeof(hooklens::ModelInfo));
    CHECK(error_of([&] { PluginRegistry::create_from(size, "sink"); }) ==
          fmt::format("{}: plugin was built with sizeof(hooklens::ModelInfo) {}, this hooklens with "
                      "sizeof(hooklens::ModelInfo) {}; rebuild the plugin against this hooklens",
                      size.string(), ours + 8, ours));
  }
  SECTION("an adapter without a score function") {
    CHECK_THAT(error_of([] { PluginRegistry::inspect(kBad / "hooklens_no_score.so"); }),
               Catch::Contains("hooklens_no_score.so: adapter plugin 'bad' has no score function"));
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
    test::skip("no libz.so.1 found: the foreign-library case did not run");
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
  const std::vector<std::string> bad = {"hooklens_bad_abi.so",     "hooklens_bad_kind.so",    "hooklens_no_entry.so",
                                        "hooklens_no_score.so",    "hooklens_other_torch.so", "hooklens_other_size.so"};
  for (const std::string& name : bad) fs::copy_file(kBad / name, tmp.path / name);
  write_text(tmp.path / "hooklens_garbage.so", "not a library");
  write_text(tmp.path / "notes.txt", "not a plugin name: ignored");
  write_text(tmp.path / "libhooklens_other.so", "not a plugin name: ignored");
  fs::create_directories(tmp.path / "hooklens_dir.so");  // a directory is not a plugin either

  PluginRegistry registry({tmp.path, kGood, tmp.path / "does-not-exist"});
  CHECK(registry.plugins().size() == 3);
  CHECK(find(registry, "test_sink"));
  CHECK_FALSE(find(registry, "bad"));
  const auto& problems = registry.problems();
  REQUIRE(problems.size() == 9);  // seven bad libraries, one directory, one missing directory
  auto mentions = [&](const std::string& text) {
    return std::count_if(problems.begin(), problems.end(),
                         [&](const std::string& p) { return p.find(text) != std::string::npos; });
  };
  for (const std::string& name : bad) CHECK(mentions(name) == 1);
  for (const char* name : {"hooklens_garbage.so", "hooklens_dir.so", "does-not-exist"}) CHECK(mentions(name) == 1);
  CHECK(mentions((tmp.path / "hooklens_other_torch.so").string() + ": plugin was built with libtorch 9.9.9") == 1);
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

TEST_CASE("the plugins built here pass the build check, and their scores choose the fixtures' adapters") {
  const fs::path built = test::build_dir() / "plugins";
  PluginRegistry registry({built});
  // The plugins this program depends on (tests/CMakeLists.txt), so always rebuilt with libhooklens.
  for (const char* name : {"gpt_neo", "gpt2", "diffusion", "custom", "run_writer"}) {
    INFO(name << ": " << fmt::format("{}", fmt::join(registry.problems(), " | ")));
    CHECK(find(registry, name));
  }
  const fs::path fixtures = test::fixtures();
  if (!fs::is_directory(fixtures)) {
    test::skip("no reference fixtures in " + fixtures.string() + ": the adapter choice on them was not checked");
    return;
  }
  for (const auto& [model, adapter] : std::vector<std::pair<std::string, std::string>>{
           {"tiny-neo-a", "gpt_neo"}, {"tiny-gpt2-a", "gpt2"}, {"llada-tiny-a", "diffusion"},
           {"llama2c/aidreams260K.bin", "custom"}}) {
    INFO(model);
    std::string name;
    registry.adapter_for(fixtures / model, &name);
    CHECK(name == adapter);
    CHECK(PluginRegistry::score_from(built / "hooklens_custom.so", fixtures / model) == (adapter == "custom" ? 50 : 0));
  }
}

TEST_CASE("libhooklens is built with optimisation unless this is a Debug build") {
  // The default build type's flags once came out empty: everything compiled at -O0, unnoticed.
  CHECK(hooklens::built_with_optimisation() == bool(HOOKLENS_EXPECT_OPTIMISED));
}

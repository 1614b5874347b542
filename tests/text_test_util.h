// Helpers for the tests of the text code (tokenizers, chat templates), which link no libtorch
// (test_util.h pulls in ATen).
#pragma once
#include "hooklens/error.h"
#include "test_skip.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <random>
#include <string>

namespace textest {

namespace fs = std::filesystem;
using json = nlohmann::json;

inline fs::path fixtures() { return test::fixtures(); }
inline fs::path reference_script(const std::string& name) {
  return fs::path(HOOKLENS_SOURCE_DIR) / "tests" / "reference" / name;
}

// A fresh directory removed when the object goes out of scope.
struct TempDir {
  fs::path path;
  TempDir() {
    std::random_device rd;
    path = fs::temp_directory_path() / ("hooklens-text-" + std::to_string((std::uint64_t(rd()) << 32) | rd()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path operator/(const std::string& name) const { return path / name; }
};

inline std::string read_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void write_file(const fs::path& file, const std::string& text) {
  std::ofstream out(file, std::ios::binary);
  out << text;
  REQUIRE(out.good());
}

inline json read_json(const fs::path& file) { return json::parse(read_file(file)); }

// Debian's interpreter (python3-regex, python3-jinja2, python3-sentencepiece are Debian packages).
inline const char* const kPython = "/usr/bin/python3";

inline bool python_has(const std::string& modules) {
  return std::system((std::string(kPython) + " -c 'import " + modules + "' >/dev/null 2>&1").c_str()) == 0;
}

// Runs tests/reference/SCRIPT with ARGS (quoted by the caller); its output goes to `log`.
inline int run_reference(const std::string& script, const std::string& args, const fs::path& log) {
  return std::system((std::string(kPython) + " '" + reference_script(script).string() + "' " + args + " >'" +
                      log.string() + "' 2>&1")
                         .c_str());
}

// Expects `f` to throw exactly hooklens::Error (not UsageError) with a one-line message holding
// every part; returns the message.
template <class F>
std::string check_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    FAIL("no exception thrown");
  } catch (const hooklens::UsageError& e) {
    FAIL(std::string("UsageError instead of Error: ") + e.what());
  } catch (const hooklens::Error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find('\n') == std::string::npos);
    for (const auto& part : parts) CHECK_THAT(msg, Catch::Matchers::Contains(part));
    return msg;
  }
  return {};
}

}  // namespace textest

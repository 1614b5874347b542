// Shared helpers for the tests: fixture paths, temporary directories, tensor comparison.
#pragma once
#include <ATen/core/Tensor.h>
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <hooklens/error.h>

#include <cstdlib>
#include <functional>
#include <filesystem>
#include <random>
#include <string>

namespace test {

namespace fs = std::filesystem;

inline fs::path fixtures() {
  const char* env = std::getenv("HOOKLENS_FIXTURES");
  return env && *env ? fs::path(env) : fs::path(HOOKLENS_FIXTURES_DIR);
}
inline fs::path build_dir() { return HOOKLENS_BUILD_DIR; }
inline fs::path plugin_file(const std::string& name) { return build_dir() / "plugins" / ("hooklens_" + name + ".so"); }

// A fresh directory removed when the object goes out of scope.
struct TempDir {
  fs::path path;
  TempDir() {
    std::random_device rd;
    path = fs::temp_directory_path() / fmt::format("hooklens-test-{:x}", (std::uint64_t(rd()) << 32) | rd());
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path operator/(const std::string& name) const { return path / name; }
};

inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  REQUIRE(a.sizes() == b.sizes());
  return a.to(at::kDouble).sub(b.to(at::kDouble)).abs().max().item<double>();
}

// The message of the hooklens::Error `f` throws, or "(no error)".
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const hooklens::Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace test

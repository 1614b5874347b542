// Shared helpers for the tests: fixture paths, temporary directories, tensor comparison.
#pragma once
#include <ATen/core/Tensor.h>
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <hooklens/error.h>
#include <hooklens/hooks.h>

#include "refusal_util.h"
#include "test_skip.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <string>

#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

namespace test {

namespace fs = std::filesystem;

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

// A small tmpfs mounted at a fresh directory (`path`), for a full disk or a read-only directory.
// Mounting needs root with CAP_SYS_ADMIN: where it is refused, `mounted` is false and `why` says
// why, and the test skips with a WARN. Unmounted (lazily) before its directory is removed.
struct TmpfsMount {
  TempDir dir;
  fs::path path;
  bool mounted = false;
  std::string why;
  explicit TmpfsMount(const std::string& size) : path(dir.path / "mnt") {
    fs::create_directories(path);
    mounted = ::mount("tmpfs", path.c_str(), "tmpfs", 0, ("size=" + size).c_str()) == 0;
    if (!mounted) why = std::string("cannot mount a tmpfs: ") + std::strerror(errno);
  }
  TmpfsMount(const TmpfsMount&) = delete;
  TmpfsMount& operator=(const TmpfsMount&) = delete;
  ~TmpfsMount() {
    if (mounted) ::umount2(path.c_str(), MNT_DETACH);
  }
  bool remount_read_only() {
    return ::mount("tmpfs", path.c_str(), "tmpfs", MS_REMOUNT | MS_RDONLY, nullptr) == 0;
  }
};

inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  REQUIRE(a.sizes() == b.sizes());
  return a.to(at::kDouble).sub(b.to(at::kDouble)).abs().max().item<double>();
}

// Debian's interpreter: the one that has python3-torch (the python3 first on PATH may not).
inline const char* const kPython = "/usr/bin/python3";

// True if kPython can import every module in `modules` (e.g. "torch, numpy").
inline bool python_has(const std::string& modules) {
  return std::system(fmt::format("{} -c 'import {}' >/dev/null 2>&1", kPython, modules).c_str()) == 0;
}

inline std::string read_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Runs `kPython SCRIPT ARGS` (ARGS quoted by the caller) with stdout and stderr in `log`; returns
// the exit status.
inline int run_python(const fs::path& script, const std::string& args, const fs::path& log) {
  return std::system(fmt::format("{} '{}' {} >'{}' 2>&1", kPython, script.string(), args, log.string()).c_str());
}

// Runs build/bin/hooklens with ARGS (quoted by the caller), stdout and stderr in `log`; returns the
// exit status (0, 1 error, 2 usage error). `env` is prepended, e.g. "HOOKLENS_PLUGIN_PATH=/x".
inline int run_hooklens(const std::string& args, const fs::path& log, const std::string& env = "") {
  const int status = std::system(
      fmt::format("{} '{}' {} >'{}' 2>&1", env, (build_dir() / "bin/hooklens").string(), args, log.string()).c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Runs build/bin/hooklens like run_hooklens and also returns its peak resident memory (the kernel's
// ru_maxrss of that process, measured from outside: the shell execs hooklens, so wait4 sees it).
struct Measured {
  int status = -1;             // exit status, -1 when killed by a signal
  std::int64_t peak_rss_kib = 0;
};
inline Measured run_hooklens_measured(const std::string& args, const fs::path& log) {
  const std::string command =
      fmt::format("exec '{}' {} >'{}' 2>&1", (build_dir() / "bin/hooklens").string(), args, log.string());
  const pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  Measured m;
  int status = 0;
  struct rusage usage {};
  if (pid < 0 || wait4(pid, &status, 0, &usage) != pid) return m;
  m.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  m.peak_rss_kib = usage.ru_maxrss;
  return m;
}

// Runs build/bin/hooklens ARGS (output to LOG) and requires success, showing the log when it fails.
inline void require_hooklens(const std::string& args, const fs::path& log) {
  const int status = run_hooklens(args, log);
  INFO("hooklens " << args << "\n" << read_file(log));
  REQUIRE(status == 0);
}

// Runs build/bin/hooklens ARGS (output to LOG) and checks that it refused with status 1 (a crash
// gives -1) and printed exactly one line, "hooklens: error: ..."; returns that line.
inline std::string hooklens_refusal(const std::string& args, const fs::path& log) {
  const int status = run_hooklens(args, log);
  const std::string text = read_file(log);
  INFO("hooklens " << args << "\n" << text);
  CHECK(status == 1);
  CHECK(text.rfind("hooklens: error: ", 0) == 0);
  CHECK(std::count(text.begin(), text.end(), '\n') == 1);
  return text;
}

inline hooklens::CaptureContext context(int prompt, hooklens::Phase phase, int step, int block, int layer,
                                        std::int64_t query_offset, int pass = 0) {
  hooklens::CaptureContext ctx;
  ctx.prompt = prompt;
  ctx.phase = phase;
  ctx.step = step;
  ctx.block = block;
  ctx.layer = layer;
  ctx.query_offset = query_offset;
  ctx.pass = pass;
  return ctx;
}

}  // namespace test

// Shared by the fuzz targets: splitting one input into named parts, a scratch directory for
// readers that take files, and the checks every target makes on a refusal.
#pragma once
#include "hooklens/error.h"
#include "hooklens/plugin.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace fuzz {

// One part of an input: a line "==> NAME <==" starts a part called NAME, which holds everything
// up to the newline before the next such line. Text before the first header belongs to a part
// called `first` (so a plain file is a valid input). Readable seeds, and easy for the fuzzer to
// cut and splice (the header is in each target's dictionary).
struct Part {
  std::string name;
  std::string_view body;
};

inline std::vector<Part> split_parts(std::string_view input, const std::string& first) {
  static constexpr std::string_view kOpen = "==> ", kClose = " <==";
  std::vector<Part> parts;
  std::string name = first;
  std::size_t body = 0;
  for (std::size_t line = 0; line <= input.size();) {
    const std::size_t eol = std::min(input.find('\n', line), input.size());
    const std::string_view text = input.substr(line, eol - line);
    if (text.size() >= kOpen.size() + kClose.size() && text.substr(0, kOpen.size()) == kOpen &&
        text.substr(text.size() - kClose.size()) == kClose) {
      // The newline before a header is the header's; text before a first-line header is no part.
      if (line > 0) parts.push_back({name, input.substr(body, std::max(body, line - 1) - body)});
      name = std::string(text.substr(kOpen.size(), text.size() - kOpen.size() - kClose.size()));
      body = std::min(eol + 1, input.size());
    }
    line = eol + 1;
  }
  parts.push_back({name, input.substr(std::min(body, input.size()))});
  return parts;
}

// A private directory for this process, removed at exit; each input rewrites its files.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "hooklens-fuzz-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) std::abort();
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }

  void write(const std::string& name, std::string_view content) const {
    std::ofstream out(path_ / name, std::ios::binary | std::ios::trunc);
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    if (!out) std::abort();
  }
  void remove(const std::string& name) const {
    std::error_code ec;
    std::filesystem::remove(path_ / name, ec);
  }

 private:
  std::filesystem::path path_;
};

// A new object of the plugin compiled into the target whose entry point is `entry` (the custom
// adapter's own hooklens_plugin_entry, or a renamed one when several plugins share a target).
template <class T>
std::shared_ptr<T> plugin_object(const void* entry) {
  using Info = const hooklens_plugin_info* (*)();
  const hooklens_plugin_info* plugin = reinterpret_cast<Info>(reinterpret_cast<std::uintptr_t>(entry))();
  return std::shared_ptr<T>(static_cast<T*>(plugin->create()), [plugin](T* object) { plugin->destroy(object); });
}

// A fuzz target's own finding: prints why and aborts, which libFuzzer (and the replay driver)
// report as a crash with the input saved.
[[noreturn]] inline void violated(const std::string& what) {
  std::fprintf(stderr, "fuzz: violated: %s\n", what.c_str());
  std::abort();
}

// Errors go to users as one line "hooklens: error: ...": a message must be one line, and must not
// end where its reason should be ("...: " with nothing after it).
inline void check_refusal(const hooklens::Error& e) {
  const std::string_view what = e.what();
  if (what.find('\n') != std::string_view::npos)
    violated(std::string("an error message of more than one line: ") + e.what());
  if (what.empty() || (what.size() >= 2 && what.substr(what.size() - 2) == ": "))
    violated(std::string("an error message without its reason: '") + e.what() + "'");
}

// Runs `f`: a hooklens::Error it throws is a refusal, which must be one proper line (check_refusal).
template <typename F>
void attempt(F f) {
  try {
    f();
  } catch (const hooklens::Error& e) {
    check_refusal(e);
  }
}

// Warnings also reach users as one line ("hooklens: warning: ..."): installs a handler that checks
// that and keeps them off the fuzzer's output.
inline void check_warnings() {
  hooklens::set_warning_handler([](const std::string& message) {
    if (message.find('\n') != std::string::npos) violated("a warning of more than one line: " + message);
  });
}

}  // namespace fuzz

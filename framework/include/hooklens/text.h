// Small string and text-file helpers used across hooklens, its plugins and examples (one copy of each).
#pragma once
#include <hooklens/error.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

namespace hooklens {

inline bool ends_with(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

// The items of a separated list, as written: "0,2" -> {"0", "2"}, "" -> {""}, "1," -> {"1", ""}.
// Callers check the items (an empty one is usually a typo to refuse, not to skip).
inline std::vector<std::string> split_list(std::string_view list, char separator = ',') {
  std::vector<std::string> items;
  for (std::size_t start = 0;;) {
    const std::size_t end = list.find(separator, start);
    items.emplace_back(list.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
    if (end == std::string_view::npos) return items;
    start = end + 1;
  }
}

// A comma-separated list of token ids, "464,3797,318": integers >= 0. UsageError naming `option`
// and the item otherwise (the range of the model's vocabulary is its reader's to check).
std::vector<std::int64_t> parse_token_ids(std::string_view list, std::string_view option);

// Writes `text` to `file`, replacing it; throws Error naming the file when it cannot.
inline void write_text_file(const std::filesystem::path& file, std::string_view text) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(text.data(), std::streamsize(text.size()));
  if (!out.flush()) throw Error(file.string() + ": cannot write the file");
}

// Replaces `file` with `content` so that a crash leaves the old file or the new one, never a part:
// written to FILE.tmp, synced, renamed over FILE, and the directory synced. Error naming the file.
void write_file_atomically(const std::filesystem::path& file, std::string_view content);
// Flushes a directory's entry changes (renames) to disk; best effort, as not every filesystem lets
// a directory be opened.
void sync_directory(const std::filesystem::path& dir) noexcept;

}  // namespace hooklens

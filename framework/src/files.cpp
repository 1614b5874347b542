// Durable file replacement and token-id lists (hooklens/text.h).
#include <hooklens/text.h>

#include <hooklens/message_text.h>

#include <fmt/format.h>

#include <charconv>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace hooklens {

namespace {
[[noreturn]] void throw_io(const std::filesystem::path& file, const char* what) {
  throw Error(fmt::format("{}: {}: {}", file.string(), what, std::strerror(errno)));
}
}  // namespace

void sync_directory(const std::filesystem::path& dir) noexcept {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

void write_file_atomically(const std::filesystem::path& file, std::string_view content) {
  const std::filesystem::path tmp = std::filesystem::path(file) += ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw_io(tmp, "cannot create");
  // The data must be on disk before the rename, or a crash could leave the name over an empty file.
  const bool written = std::fwrite(content.data(), 1, content.size(), f) == content.size() && std::fflush(f) == 0 &&
                       ::fsync(fileno(f)) == 0;
  const int saved = errno;
  if (std::fclose(f) != 0 || !written) {
    if (!written) errno = saved;
    throw_io(tmp, "cannot write");
  }
  if (std::rename(tmp.c_str(), file.c_str()) != 0) throw_io(file, "cannot rename into place");
  sync_directory(file.parent_path());
}

std::vector<std::int64_t> parse_token_ids(std::string_view list, std::string_view option) {
  std::vector<std::int64_t> ids;
  for (const std::string& item : split_list(list)) {
    std::int64_t id = -1;
    const char* end = item.data() + item.size();
    const auto [ptr, ec] = std::from_chars(item.data(), end, id);
    if (item.empty() || ec != std::errc() || ptr != end || id < 0)
      throw UsageError(fmt::format("{} '{}': '{}' is not a token id", option, brief_text(list), brief_text(item)));
    ids.push_back(id);
  }
  return ids;
}

}  // namespace hooklens

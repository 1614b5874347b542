// Read-only memory maps of weight files: tensors view the mapping, so a checkpoint's bytes are
// paged in from the page cache as they are used instead of being copied into the heap.
#include "hooklens/mapped_file.h"

#include "hooklens/error.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace hooklens {

std::shared_ptr<const MappedFile> MappedFile::open(const std::filesystem::path& file) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(fmt::format("{}: cannot open: {}", file.string(), std::strerror(errno)));
  struct stat info {};
  if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    ::close(fd);
    throw Error(fmt::format("{}: is not a regular file", file.string()));
  }
  std::shared_ptr<MappedFile> mapped(new MappedFile());
  mapped->path_ = file;
  mapped->size_ = static_cast<std::uint64_t>(info.st_size);
  if (mapped->size_ > 0) {
    // MAP_PRIVATE + PROT_READ: nothing can write through to the file, and pages stay shared with
    // the page cache (clean, so the kernel may drop and re-read them under memory pressure).
    void* p = mmap(nullptr, mapped->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw Error(fmt::format("{}: cannot map {} bytes: {}", file.string(), mapped->size_, std::strerror(err)));
    }
    mapped->data_ = static_cast<const unsigned char*>(p);
  }
  ::close(fd);  // the mapping stays valid without the descriptor
  return mapped;
}

MappedFile::~MappedFile() {
  if (data_) munmap(const_cast<unsigned char*>(data_), size_);
}

at::Tensor MappedFile::tensor(std::uint64_t offset, c10::ScalarType type, const std::vector<std::int64_t>& shape) const {
  // numel * itemsize in 128 bits, saturating, so a hostile shape cannot wrap past the bounds check.
  unsigned __int128 bytes = c10::elementSize(type);
  for (const std::int64_t d : shape) {
    if (d < 0) throw Error(fmt::format("{}: negative dimension in shape [{}]", path_.string(), fmt::join(shape, ", ")));
    bytes *= static_cast<std::uint64_t>(d);
    if (bytes > size_) bytes = static_cast<unsigned __int128>(size_) + 1;
  }
  if (offset > size_ || bytes > size_ - offset)
    throw Error(fmt::format("{}: a tensor of shape [{}] at byte {} reaches past the end of the file ({} bytes)",
                            path_.string(), fmt::join(shape, ", "), offset, size_));
  const auto options = at::TensorOptions().dtype(type);
  if (bytes == 0) return at::empty(shape, options);
  const unsigned char* p = data_ + offset;
  // Kernels may assume element alignment; an odd offset (legal in safetensors) gets an aligned copy.
  if (reinterpret_cast<std::uintptr_t>(p) % c10::elementSize(type) != 0) {
    at::Tensor copy = at::empty(shape, options);
    std::memcpy(copy.data_ptr(), p, static_cast<std::size_t>(bytes));
    return copy;
  }
  // The tensor's deleter holds the mapping: it lives as long as any tensor (or view) over it.
  auto keep = shared_from_this();
  return at::from_blob(const_cast<unsigned char*>(p), shape, [keep](void*) {}, options);
}

}  // namespace hooklens

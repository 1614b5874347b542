// Read-only memory maps of weight files (mapped_file.cpp).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <vector>

namespace hooklens {

// A whole file mapped read-only into memory. Tensors made by tensor() view the mapping and keep it
// alive (it is unmapped when the last of them goes), so weights are paged in from the page cache
// as they are used: no heap copy, and the kernel may drop clean pages under memory pressure.
// Nothing may write into such a tensor (the pages are read-only). If the file is truncated while
// mapped, reading the lost pages raises SIGBUS: weight files are expected to stay put while in use.
class MappedFile : public std::enable_shared_from_this<MappedFile> {
 public:
  static std::shared_ptr<const MappedFile> open(const std::filesystem::path& file);  // throws Error
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::uint64_t size() const { return size_; }
  const unsigned char* data() const { return data_; }  // null for an empty file
  // A contiguous tensor of `type` and `shape` over the bytes from `offset`; throws Error when they
  // reach past the end of the file. Misaligned data (legal in safetensors) is copied instead.
  at::Tensor tensor(std::uint64_t offset, c10::ScalarType type, const std::vector<std::int64_t>& shape) const;

 private:
  MappedFile() = default;
  std::filesystem::path path_;
  std::uint64_t size_ = 0;
  const unsigned char* data_ = nullptr;
};

}  // namespace hooklens

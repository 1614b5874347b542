// The safetensors format: reading (validated before any tensor data is touched; every error names
// the file) and writing (safetensors.cpp).
#pragma once
#include <hooklens/tensor_map.h>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace hooklens {

// "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL" <-> scalar types.
std::string safetensors_dtype_name(c10::ScalarType type);
c10::ScalarType parse_safetensors_dtype(const std::string& name);  // throws Error

// Reads every tensor into memory of its own (safe for files that may change while in use, such as
// a run directory's capture shards).
TensorMap read_safetensors(const std::filesystem::path& file);
// The same tensors as views of a read-only memory map of the file (model weights; see MappedFile).
TensorMap map_safetensors(const std::filesystem::path& file);
std::map<std::string, std::string> read_safetensors_metadata(const std::filesystem::path& file);
// What a safetensors header says about one tensor.
struct TensorLayout {
  std::string name;
  c10::ScalarType type;
  std::vector<std::int64_t> shape;
};
// The tensors a file holds, from its header (checked as the readers check it: names, dtypes, shapes
// and data offsets inside the file), in header order; no tensor data is read.
std::vector<TensorLayout> read_safetensors_layout(const std::filesystem::path& file);
// The bytes before the data of a safetensors file holding `tensors` in this order: the 8-byte header
// length and the JSON header (padded to 8 bytes). Each tensor's raw data follows the previous one's,
// so a writer can stream data it produces one tensor at a time (files larger than memory).
std::string safetensors_preamble(const std::vector<TensorLayout>& tensors,
                                 const std::map<std::string, std::string>& metadata = {});

// Writes tensors (contiguous copies are made as needed) in the given order.
void write_safetensors(const std::filesystem::path& file,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace hooklens

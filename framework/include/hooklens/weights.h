// Reading weights as users have them (safetensors, sharded safetensors, pytorch_model.bin) and
// writing safetensors files. Readers validate everything before touching tensor data: the file
// may be truncated or hostile. Every error names the file.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <nlohmann/json_fwd.hpp>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace hooklens {

using TensorMap = std::map<std::string, at::Tensor>;

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

// "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL" <-> scalar types.
std::string safetensors_dtype_name(c10::ScalarType type);
c10::ScalarType parse_safetensors_dtype(const std::string& name);  // throws Error

// Reads every tensor into memory of its own (safe for files that may change while in use, such as
// a run directory's capture shards).
TensorMap read_safetensors(const std::filesystem::path& file);
// The same tensors as views of a read-only memory map of the file (model weights; see MappedFile).
TensorMap map_safetensors(const std::filesystem::path& file);
std::map<std::string, std::string> read_safetensors_metadata(const std::filesystem::path& file);
// A torch.save file (zip format, torch >= 1.6) holding a state dict. The file is memory-mapped:
// every tensor is a view of its stored bytes (tensors that share a storage in the file, such as tied
// weights or slices, share it here too), so loading reads only the pickle and the zip directory. A
// record that is compressed in the zip (torch.save never does this) is extracted into memory.
TensorMap read_pytorch_bin(const std::filesystem::path& file);
// A torch.save file holding a state dict, or a training checkpoint dict that holds one under
// "model", "state_dict" or "model_state_dict" (tried in that order; nanoGPT's ckpt.pt uses "model").
// `found_under` receives that key ("" for a bare state dict); `plain` the top level's entries that
// are plain data (numbers, strings, bools, None, lists and str-keyed dicts of them) as a JSON object,
// e.g. {"model_args": {"n_head": 12, ...}, "iter_num": 5000}. Either pointer may be null.
TensorMap read_pytorch_checkpoint(const std::filesystem::path& file, std::string* found_under = nullptr,
                                  nlohmann::json* plain = nullptr);

// A Hugging Face model directory's weights: model.safetensors, or the shards listed in
// model.safetensors.index.json, or pytorch_model.bin, or the shards listed in
// pytorch_model.bin.index.json (tried in that order).
TensorMap load_hf_weights(const std::filesystem::path& model_dir);
// The tensors an index file ({"weight_map": {tensor: shard file}}) maps, each taken from its shard
// in the index's directory: `.safetensors` shards are mapped, any other is read as a torch.save
// state dict. A shard outside the directory, a missing shard or a tensor missing from its shard is
// an Error naming the index or the shard.
TensorMap load_weight_index(const std::filesystem::path& index_file);

// What a safetensors header says about one tensor.
struct TensorLayout {
  std::string name;
  c10::ScalarType type;
  std::vector<std::int64_t> shape;
};
// The bytes before the data of a safetensors file holding `tensors` in this order: the 8-byte header
// length and the JSON header (padded to 8 bytes). Each tensor's raw data follows the previous one's,
// so a writer can stream data it produces one tensor at a time (files larger than memory).
std::string safetensors_preamble(const std::vector<TensorLayout>& tensors,
                                 const std::map<std::string, std::string>& metadata = {});

// Writes tensors (contiguous copies are made as needed) in the given order.
void write_safetensors(const std::filesystem::path& file,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Removes `name` from `weights` and checks its shape; throws Error naming the tensor, its shape
// and the expected one. `what` names the source (file or directory) in messages.
at::Tensor take_weight(TensorMap& weights, const std::string& name, std::vector<std::int64_t> shape,
                       const std::string& what);

}  // namespace hooklens

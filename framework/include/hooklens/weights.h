// Weights as users have them: a Hugging Face model directory (safetensors, sharded safetensors,
// pytorch_model.bin, sharded .bin), and take_weight, which adapters use to consume the tensors one
// by one (weights.cpp). The file formats have a header each, included here: safetensors.h (read and
// write), pytorch_bin.h (torch.save files), mapped_file.h (the read-only maps tensors view).
// Readers validate everything before touching tensor data: the file may be truncated or hostile.
// Every error names the file.
#pragma once
#include <hooklens/mapped_file.h>
#include <hooklens/pytorch_bin.h>
#include <hooklens/safetensors.h>
#include <hooklens/tensor_map.h>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace hooklens {

// A Hugging Face model directory's weights: model.safetensors, or the shards listed in
// model.safetensors.index.json, or pytorch_model.bin, or the shards listed in
// pytorch_model.bin.index.json (tried in that order).
TensorMap load_hf_weights(const std::filesystem::path& model_dir);
// The tensors an index file ({"weight_map": {tensor: shard file}}) maps, each taken from its shard
// in the index's directory: `.safetensors` shards are mapped, any other is read as a torch.save
// state dict. A shard outside the directory, a missing shard or a tensor missing from its shard is
// an Error naming the index or the shard.
TensorMap load_weight_index(const std::filesystem::path& index_file);

// Removes `name` from `weights` and checks its shape; throws Error naming the tensor, its shape
// and the expected one. `what` names the source (file or directory) in messages.
at::Tensor take_weight(TensorMap& weights, const std::string& name, std::vector<std::int64_t> shape,
                       const std::string& what);

}  // namespace hooklens

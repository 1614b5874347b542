// torch.save files: pytorch_model.bin, state dicts and training checkpoints (pytorch_bin.cpp).
#pragma once
#include <hooklens/tensor_map.h>

#include <nlohmann/json_fwd.hpp>

#include <filesystem>
#include <string>

namespace hooklens {

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

}  // namespace hooklens

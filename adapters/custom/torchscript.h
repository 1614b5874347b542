// TorchScript models (torch.jit.save archives) in the custom adapter; see torchscript.cpp.
#pragma once
#include <hooklens/model.h>
#include <hooklens/tokenizer.h>

#include <filesystem>
#include <memory>

namespace hooklens {

// True if `file` is a .pt/.pth/.ts zip archive holding TorchScript code (not a plain torch.save file).
bool is_torchscript(const std::filesystem::path& file);

// Loads a TorchScript model whose forward takes int64 ids [batch, pos] and returns logits
// [batch, pos, vocab] (or a tuple whose first element they are), with `tokenizer` (may be null).
// Throws Error naming the file.
std::unique_ptr<Model> load_torchscript(const std::filesystem::path& file, std::unique_ptr<Tokenizer> tokenizer);

}  // namespace hooklens

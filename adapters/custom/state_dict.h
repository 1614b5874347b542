// PyTorch state dicts of from-scratch GPTs (torch.save(model.state_dict()), or a training checkpoint
// that holds one; also as safetensors, and sharded with an index file) in the custom adapter,
// described by an architecture spec (docs/architecture-spec.md).
#pragma once
#include <hooklens/model.h>
#include <hooklens/tokenizer.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace hooklens {

// True if `file` is a .pt/.pth torch.save zip archive (a data.pkl record) that is not TorchScript.
bool is_state_dict(const std::filesystem::path& file);

// True if `model` is a state dict in one of the other forms the custom adapter reads (with a spec):
// a .safetensors file, a weight index file (*.index.json), or a directory holding
// model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json
// whose config.json, if it has one, names no model_type (a directory that names one is a Hugging
// Face model for the adapter of that architecture, and a malformed config.json is left to it too).
bool is_state_dict_in_other_form(const std::filesystem::path& model);

// Loads `model` (a .pt/.pth file or one of the forms above) with the spec `options.spec` (a JSON
// file, or the name of a shipped spec). No spec is a UsageError listing the shipped specs; a bad
// spec or a state dict that does not fit it is an Error naming the file. `tokenizer` (may be null)
// must not have more tokens than the model.
std::unique_ptr<Model> load_state_dict(const std::filesystem::path& model, const LoadOptions& options,
                                       std::unique_ptr<Tokenizer> tokenizer);

// Names of the specs shipped with hooklens (specs/*.json found beside the plugin), sorted.
std::vector<std::string> shipped_spec_names();

}  // namespace hooklens

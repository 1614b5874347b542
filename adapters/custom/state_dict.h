// PyTorch state dicts of from-scratch GPTs (torch.save(model.state_dict()), or a training checkpoint
// that holds one) in the custom adapter, described by an architecture spec (docs/architecture-spec.md).
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

// Loads `file` with the spec `options.spec` (a JSON file, or the name of a shipped spec). No spec is
// a UsageError listing the shipped specs; a bad spec or a state dict that does not fit it is an
// Error naming the file. `tokenizer` (may be null) must not have more tokens than the model.
std::unique_ptr<Model> load_state_dict(const std::filesystem::path& file, const LoadOptions& options,
                                       std::unique_ptr<Tokenizer> tokenizer);

// Names of the specs shipped with hooklens (specs/*.json found beside the plugin), sorted.
std::vector<std::string> shipped_spec_names();

}  // namespace hooklens

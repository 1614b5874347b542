// Fuzz target: sharded weights through their index file (load_weight_index, and load_hf_weights on
// the directory). The input is split into files (fuzz_util.h): the text before any header is
// model.safetensors.index.json; "==> NAME <==" parts are shard files NAME (a plain name; other
// names are ignored) written beside it. Every tensor accepted must lie inside its shard.
#include "fuzz_weights_util.h"

#include <filesystem>

namespace {

bool plain_name(const std::string& name) {
  return !name.empty() && name.size() < 64 && name.find_first_of(std::string("/\0", 2)) == std::string::npos &&
         name != "." && name != "..";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fuzz::ScratchDir dir;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path(), ec)) std::filesystem::remove_all(entry, ec);
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  for (const fuzz::Part& p : fuzz::split_parts(input, "model.safetensors.index.json"))
    if (plain_name(p.name)) dir.write(p.name, p.body);

  for (const bool directory : {false, true}) {
    try {
      const hooklens::TensorMap tensors = directory ? hooklens::load_hf_weights(dir.path())
                                                    : hooklens::load_weight_index(dir.path() / "model.safetensors.index.json");
      fuzz::check_tensors(tensors);
    } catch (const hooklens::Error& e) {
      fuzz::check_refusal(e);
    }
  }
  return 0;
}

// Fuzz target: the torch.save reader (zip archive, pickle machine, storages): read_pytorch_bin and
// read_pytorch_checkpoint (with its plain values) on the input as a file. Every tensor accepted
// must lie inside its storage with no more elements than it (fuzz_weights_util.h).
#include "fuzz_weights_util.h"

#include <nlohmann/json.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fuzz::ScratchDir dir;
  dir.write("pytorch_model.bin", std::string_view(reinterpret_cast<const char*>(data), size));
  const auto file = dir.path() / "pytorch_model.bin";
  try {
    fuzz::check_tensors(hooklens::read_pytorch_bin(file));
  } catch (const hooklens::Error& e) {
    fuzz::check_refusal(e);
  }
  try {
    std::string under;
    nlohmann::json plain;
    fuzz::check_tensors(hooklens::read_pytorch_checkpoint(file, &under, &plain));
    if (!plain.is_object()) fuzz::violated("the plain values are not an object");
    (void)plain.dump();
  } catch (const hooklens::Error& e) {
    fuzz::check_refusal(e);
  }
  return 0;
}

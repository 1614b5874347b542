// Fuzz target: the safetensors reader (header and data): map_safetensors, read_safetensors and
// read_safetensors_metadata on the input as a file. Every tensor either reader accepts must lie
// inside the file (fuzz_weights_util.h), and both readers must agree.
#include "fuzz_weights_util.h"

#include <cstring>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fuzz::ScratchDir dir;
  dir.write("model.safetensors", std::string_view(reinterpret_cast<const char*>(data), size));
  const auto file = dir.path() / "model.safetensors";
  hooklens::TensorMap mapped, read;
  try {
    mapped = hooklens::map_safetensors(file);
  } catch (const hooklens::Error& e) {
    fuzz::check_refusal(e);
    try {
      hooklens::read_safetensors(file);
    } catch (const hooklens::Error& e2) {
      fuzz::check_refusal(e2);
      return 0;
    }
    fuzz::violated("read_safetensors accepts a file map_safetensors refuses");
  }
  fuzz::check_tensors(mapped);
  try {
    read = hooklens::read_safetensors(file);
    (void)hooklens::read_safetensors_metadata(file);
  } catch (const hooklens::Error& e) {
    fuzz::violated(std::string("read_safetensors refuses a file map_safetensors accepts: ") + e.what());
  }
  fuzz::check_tensors(read);
  if (read.size() != mapped.size()) fuzz::violated("the two readers give different tensors");
  for (const auto& [name, t] : mapped) {
    const auto it = read.find(name);
    if (it == read.end() || it->second.sizes() != t.sizes() || it->second.scalar_type() != t.scalar_type())
      fuzz::violated("the two readers differ on '" + name + "'");
    // Bytes, not values: NaN is not equal to itself.
    const at::Tensor a = it->second.contiguous(), b = t.contiguous();
    if (a.nbytes() != b.nbytes() || (a.nbytes() && std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) != 0))
      fuzz::violated("the two readers give different bytes for '" + name + "'");
  }
  return 0;
}

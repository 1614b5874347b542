// Fuzz target: the llama2.c checkpoint reader of the custom adapter (legacy and "ak42" version 1
// headers, then the weights as views of the file), through the adapter's score and load. The
// input is the checkpoint (no tokenizer.bin beside it). A load must give a model whose sizes are
// positive and whose weights came from the file, or refuse with a one-line Error.
#include "fuzz_adapter_util.h"
#include "fuzz_util.h"
#include "hooklens/model.h"

#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fuzz::ScratchDir dir;
  static const std::shared_ptr<hooklens::Adapter> adapter = fuzz::custom_adapter();
  static const bool quiet = (fuzz::check_warnings(), true);
  (void)quiet;
  dir.write("model.bin", std::string_view(reinterpret_cast<const char*>(data), size));
  const auto file = dir.path() / "model.bin";
  (void)fuzz::custom_score(file);
  try {
    const std::unique_ptr<hooklens::Model> model = adapter->load(file, {});
    const hooklens::ModelInfo& info = model->info();
    if (info.n_layers <= 0 || info.n_heads <= 0 || info.d_model <= 0 || info.vocab_size <= 0 || info.n_ctx <= 0)
      fuzz::violated("a llama2.c model with a size that is not positive");
    // Every float of the weights is in the file: the embedding alone cannot be larger.
    if (static_cast<std::uint64_t>(info.vocab_size) * static_cast<std::uint64_t>(info.d_model) * 4 > size)
      fuzz::violated("a llama2.c model larger than its file");
  } catch (const hooklens::Error& e) {
    fuzz::check_refusal(e);
  }
  return 0;
}

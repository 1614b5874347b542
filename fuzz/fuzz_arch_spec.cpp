// Fuzz target: architecture specs (--spec files, parsed by the custom adapter's own code: keys,
// "extends" chains with merge patches, tensor templates, layouts, globs), each loaded against a
// fixed tiny nanoGPT-style state dict. The input is split into files (fuzz_util.h): the text before
// any header is spec.json; "==> base.json <==" (any plain NAME.json) is written beside it for
// "extends". A load must give a model or refuse with a one-line Error (a UsageError too).
#include "fuzz_adapter_util.h"
#include "fuzz_util.h"
#include "hooklens/model.h"
#include "hooklens/weights.h"

#include <ATen/ops/randn.h>

#include <cstdint>
#include <filesystem>
#include <vector>

namespace {

// nanoGPT with bias, 2 layers, n_embd 8, vocab 16, block_size 4: the names of specs/nanogpt.json.
void write_state_dict(const std::filesystem::path& file) {
  const std::int64_t V = 16, D = 8, T = 4;
  const at::Tensor wte = at::randn({V, D});
  std::vector<std::pair<std::string, at::Tensor>> t = {{"transformer.wte.weight", wte},
                                                       {"transformer.wpe.weight", at::randn({T, D})},
                                                       {"transformer.ln_f.weight", at::randn({D})},
                                                       {"transformer.ln_f.bias", at::randn({D})},
                                                       {"lm_head.weight", wte}};  // tied
  for (int l = 0; l < 2; ++l) {
    const std::string p = "transformer.h." + std::to_string(l) + ".";
    for (const auto& [name, shape] : std::vector<std::pair<std::string, std::vector<std::int64_t>>>{
             {"ln_1.weight", {D}}, {"ln_1.bias", {D}}, {"attn.c_attn.weight", {3 * D, D}}, {"attn.c_attn.bias", {3 * D}},
             {"attn.c_proj.weight", {D, D}}, {"attn.c_proj.bias", {D}}, {"ln_2.weight", {D}}, {"ln_2.bias", {D}},
             {"mlp.c_fc.weight", {4 * D, D}}, {"mlp.c_fc.bias", {4 * D}}, {"mlp.c_proj.weight", {D, 4 * D}},
             {"mlp.c_proj.bias", {D}}, {"attn.bias", {1, 1, T, T}}})
      t.emplace_back(p + name, at::randn(shape));
  }
  hooklens::write_safetensors(file, t);
}

bool plain_json_name(const std::string& name) {
  return name.size() > 5 && name.size() < 64 && name.find_first_of(std::string("/\0", 2)) == std::string::npos &&
         name.compare(name.size() - 5, 5, ".json") == 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fuzz::ScratchDir dir;
  static const fuzz::ScratchDir models;
  static const std::shared_ptr<hooklens::Adapter> adapter = fuzz::custom_adapter();
  static const bool ready = (fuzz::check_warnings(), write_state_dict(models.path() / "nano.safetensors"), true);
  (void)ready;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path(), ec)) std::filesystem::remove_all(entry, ec);
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  for (const fuzz::Part& p : fuzz::split_parts(input, "spec.json"))
    if (plain_json_name(p.name)) dir.write(p.name, p.body);

  hooklens::LoadOptions options;
  options.spec = (dir.path() / "spec.json").string();
  try {
    const std::unique_ptr<hooklens::Model> model = adapter->load(models.path() / "nano.safetensors", options);
    if (model->info().n_layers != 2 || model->info().d_model != 8) fuzz::violated("a model of other sizes than its weights");
  } catch (const hooklens::Error& e) {  // UsageError too
    fuzz::check_refusal(e);
  }
  return 0;
}

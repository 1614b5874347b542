// Fuzz target: analyzer reports read back (RUN/reports/NAME.json, written by `hooklens analyze`
// or `--analyze` and read by the figures and html_report renderers and the viewer). The run they
// sit in is fixed and valid (made once here: a GPT-2 shape of 3 layers and 4 heads, like the
// tiny-gpt2-a fixture the seeds' reports come from, one prompt of 4 tokens, layer 0's MLP
// activations; no attention patterns, so that rendering draws the reports and little else). The input is split into files (fuzz_util.h): the text before any
// header is reports/head_detectors.json, each "==> NAME <==" part is reports/NAME. The run is then
// rendered as png, svg and html and read by the viewer's run model: each must give its result or
// refuse with a one-line hooklens::Error.
#include "fuzz_run_util.h"
#include "hooklens/weights.h"

#include <ATen/ops/rand.h>

#include <cstdint>
#include <filesystem>
#include <fstream>

namespace {

namespace fs = std::filesystem;

constexpr const char* kManifest = R"({
 "format": "hooklens-run", "version": 1, "complete": true,
 "model": {"adapter": "gpt2", "architecture": "gpt2", "path": "tiny-gpt2-a", "n_layers": 3, "n_heads": 4,
           "n_kv_heads": 4, "d_model": 32, "d_head": 8, "d_mlp": 16, "vocab_size": 50257, "n_ctx": 64,
           "window_size": 0, "weight_dtype": "F32", "layer_attention": ["causal", "causal", "causal"],
           "bos_id": 50256, "eos_id": 50256, "mask_id": null},
 "prompts": [{"text": "The cat sat", "ids": [464, 3797, 3332, 319], "tokens": ["The", " cat", " sat", " on"],
              "source": "prompt"}],
 "generation": {"mode": "none"},
 "captures": [
  {"key": "p0.blocks.0.mlp.hook_post", "hook": "blocks.0.mlp.hook_post", "file": "captures-00000.safetensors",
   "dtype": "F32", "shape": [1, 4, 16], "prompt": 0, "phase": "prefill", "step": 0, "layer": 0}]
})";

void write_run(const fs::path& run) {
  fs::create_directories(run);
  std::ofstream(run / "manifest.json") << kManifest;
  hooklens::write_safetensors(run / "captures-00000.safetensors", {{"p0.blocks.0.mlp.hook_post", at::rand({1, 4, 16})}});
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fuzz::ScratchDir dir;
  static const bool ready = (fuzz::check_warnings(), write_run(dir.path() / "run"), true);
  (void)ready;
  const fs::path run = dir.path() / "run", reports = run / "reports", out = dir.path() / "out";
  std::error_code ec;
  fs::remove_all(reports, ec);
  fs::remove_all(out, ec);
  fs::create_directories(reports);
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  for (const fuzz::Part& p : fuzz::split_parts(input, "head_detectors.json")) {
    if (!fuzz::plain_name(p.name)) continue;
    std::ofstream file(reports / p.name, std::ios::binary | std::ios::trunc);
    file.write(p.body.data(), std::streamsize(p.body.size()));
  }
  fuzz::render_all(run, out, nullptr);
  fuzz::view_run(run);
  return 0;
}

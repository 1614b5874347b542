// Fuzz target: TorchScript archives through the custom adapter: is_torchscript's look at the
// records, torch::jit::load, then what hooklens does itself with the loaded module: the copy and
// inlining of forward's graph with the capture points inserted (Instrumenter, PathNames), the
// defaults of forward's arguments, the size probe, and a forward of two tokens with every hook point
// observed. HOOKLENS_FUZZ_PRINT=1 prints what became of each input.
//
// The input is the archive as its records: parts "==> RECORD <==" (data.pkl, constants.pkl,
// code/__torch__/....py, data/0, version, ...; make_seeds.py writes them from scripted and traced
// models), written back into an archive by libtorch's own writer, so that the zip layer (libtorch's,
// checked by zip_directory for ours) is always well formed and the mutations reach the pickles, the
// TorchScript source and the graphs. A TorchScript archive is code that runs (like a plugin, it is
// trusted: docs/reliability.md); what this target checks is that hooklens's own steps refuse what
// they cannot handle with a one-line Error instead of crashing. Errors libtorch raises while loading
// or running the model's own code are refusals too (the adapter turns them into Errors).
#include "fuzz_adapter_util.h"
#include "fuzz_util.h"
#include "hooklens/hooks.h"
#include "hooklens/model.h"

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fuzz::ScratchDir dir;
  static const std::shared_ptr<hooklens::Adapter> adapter = fuzz::custom_adapter();
  static const bool quiet = (fuzz::check_warnings(), true);
  (void)quiet;
  const auto file = dir.path() / "model.pt";
  {
    caffe2::serialize::PyTorchStreamWriter writer(file.string());
    std::set<std::string> written;
    for (const fuzz::Part& part : fuzz::split_parts({reinterpret_cast<const char*>(data), size}, "data.pkl")) {
      // The writer adds "version" itself, and a name twice or one it cannot store (a folder's, with a
      // '/' at an end or an empty component: the zip writer refuses them, and then throws again from
      // its destructor) is no archive at all.
      const std::string& name = part.name;
      if (name.empty() || name == "version" || name.find('\0') != std::string::npos || name.front() == '/' ||
          name.back() == '/' || name.find("//") != std::string::npos || !written.insert(name).second)
        continue;
      writer.writeRecord(name, part.body.data(), part.body.size());
    }
    writer.writeEndOfFile();
  }
  if (fuzz::custom_score(file) <= 0) {
    if (std::getenv("HOOKLENS_FUZZ_PRINT")) std::fprintf(stderr, "not accepted as TorchScript\n");
    return 0;
  }
  try {
    const std::unique_ptr<hooklens::Model> model = adapter->load(file, {});
    (void)model->hook_points();
    hooklens::HookSet hooks;  // every point observed, so every capture call reaches a hook
    hooks.add({}, [](std::string_view, const hooklens::CaptureContext&, at::Tensor& tensor) {
      if (!tensor.defined()) fuzz::violated("a hook point fired with no tensor");
    });
    const std::int64_t vocab = model->info().vocab_size;
    const at::Tensor ids = at::tensor({std::int64_t(0), vocab > 1 ? std::int64_t(1) : std::int64_t(0)}, at::kLong)
                               .unsqueeze(0);
    const at::Tensor logits = model->forward(ids, hooks, {}, nullptr);
    if (logits.dim() != 3 || logits.size(0) != 1 || logits.size(1) < 1 || logits.size(1) > 2)
      fuzz::violated("forward gave logits that are not [1, positions or 1, vocab]");
    if (std::getenv("HOOKLENS_FUZZ_PRINT")) std::fprintf(stderr, "loaded and ran: %zu hook points\n", model->hook_points().size());
  } catch (const hooklens::Error& e) {
    if (std::getenv("HOOKLENS_FUZZ_PRINT")) std::fprintf(stderr, "refused: %s\n", e.what());
    fuzz::check_refusal(e);
  }
  return 0;
}

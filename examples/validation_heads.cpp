// validation_heads: what the validation-set head script showed: the heads of one layer on a real text
// sequence, drawn one by one beside their average, with a diagnosis of how sharp each head is.
//
//   validation_heads --text-file FILE --seq-len N [--sequence I] [--layer L] [--model DIR] [--out DIR]
//
// Sequence I is cut as `hooklens capture --text-file FILE --seq-len N` cuts its prompts: the file's
// text is tokenized and split into consecutive non-overlapping N-token sequences; I counts from 0.
// One forward pass captures blocks.L.attn.hook_pattern; the statistics come from summarize_heads
// (attention_stats.h, as the attention_stats analyzer computes them). OUT then holds:
//   heads_layer{L}.png  every head of layer L and the head-averaged pattern, on one shared scale,
//                       titled with the file and the sequence
//   summary.json        the file, sequence, token ids and strings, per head its statistics and label
//                       (sharp / medium / uniform by mean normalized entropy), the head-averaged
//                       pattern's, which heads are sharp / medium / uniform, and whether averaging
//                       hides sharp heads (some head is sharp, the average is not)
// The same diagnosis is printed. The default model is models/toy-neo (in the repository).
// Exit status: 0 success, 1 error, 2 usage error.

#include <hooklens/analyzer.h>
#include <hooklens/attention_stats.h>
#include "example_main.h"

#include <hooklens/drawing.h>
#include <hooklens/hook_names.h>
#include <hooklens/head_matrix.h>
#include <hooklens/error.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>
#include <hooklens/text.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mean.h>
#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace drawing = hooklens::drawing;
using hooklens::Error;
using hooklens::UsageError;
using nlohmann::json;

struct Options {
  fs::path model = "models/toy-neo", out = "runs/validation_heads", text_file;
  int seq_len = 0, sequence = 0, layer = 0;
};

// Sequence I of the file, by the CLI's --text-file rule (which reads the first
// seq_len * sequences * 16 + 4096 bytes of the file; here sequences = I + 1).
std::vector<std::int64_t> cut_sequence(const hooklens::Tokenizer& tok, const Options& o) {
  std::ifstream in(o.text_file, std::ios::binary);
  if (!in) throw UsageError(fmt::format("--text-file {}: cannot open it", o.text_file.string()));
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::size_t bytes = std::size_t(o.seq_len) * std::size_t(o.sequence + 1) * 16 + 4096;
  const std::vector<std::int64_t> ids = tok.encode(buffer.str().substr(0, bytes));
  const std::size_t start = std::size_t(o.sequence) * std::size_t(o.seq_len);
  if (start + std::size_t(o.seq_len) > ids.size())
    throw UsageError(fmt::format("--sequence {}: {} holds {} whole {}-token sequences", o.sequence,
                                 o.text_file.string(), ids.size() / std::size_t(o.seq_len), o.seq_len));
  return {ids.begin() + std::ptrdiff_t(start), ids.begin() + std::ptrdiff_t(start) + o.seq_len};
}

// The layer's pattern [1, heads, N, N] from one forward pass over `ids`.
at::Tensor capture_pattern(hooklens::Model& model, std::vector<std::int64_t> ids, int layer) {
  at::Tensor pattern;
  hooklens::HookFilter filter;
  filter.names = {hooklens::hook_names::in_layer(layer, hooklens::hook_names::pattern)};
  hooklens::HookSet hooks;
  hooks.add(filter, [&pattern](std::string_view, const hooklens::CaptureContext&, at::Tensor& t) {
    pattern = t.to(at::kFloat).contiguous().clone();
  });
  const at::Tensor input = at::from_blob(ids.data(), {1, std::int64_t(ids.size())}, at::kLong).clone();
  model.forward(input, hooks, {}, nullptr, hooklens::Logits::none);
  if (!pattern.defined() || pattern.dim() != 4)
    throw Error(fmt::format("{}: no blocks.{}.attn.hook_pattern of shape [1, heads, queries, keys] fired",
                            model.info().path, layer));
  return pattern;
}

json definitions() {
  return {{"entropy", "mean over rows seeing >= 2 keys of -sum w log w (nats); a row is one query's weights over the keys it may see"},
          {"normalized_entropy", "mean over those rows of entropy / log n, n = keys the row sees"},
          {"row_std", "mean over rows of the population std of the row's weights"},
          {"max_weight", "mean over rows of the largest weight"},
          {"self_mass", "mean over rows of the weight on the query's own position"},
          {"label", "sharp if normalized_entropy < thresholds.sharp_below, uniform if > thresholds.uniform_above, else medium"},
          {"head_averaged", "the statistics of the pattern averaged over heads (weights averaged, then the statistics)"},
          {"averaging_hides", "true when some head is sharp and the head-averaged pattern is not"}};
}

void run(const Options& o) {
  if (!fs::exists(o.model))
    throw UsageError(fmt::format("--model {}: no such model (the default, models/toy-neo, is in the repository: run from its root)",
                                 o.model.string()));
  auto model = hooklens::open_model(hooklens::PluginRegistry(), o.model);
  const hooklens::ModelInfo& info = model->info();
  if (!model->tokenizer()) throw UsageError(fmt::format("--model {}: the model has no tokenizer", o.model.string()));
  if (o.layer >= info.n_layers)
    throw UsageError(fmt::format("--layer {}: {} has layers 0-{}", o.layer, o.model.string(), info.n_layers - 1));
  if (o.seq_len > info.n_ctx)
    throw UsageError(fmt::format("--seq-len {}: more than {}'s context of {} tokens", o.seq_len, o.model.string(), info.n_ctx));
  const std::vector<std::int64_t> ids = cut_sequence(*model->tokenizer(), o);
  const at::Tensor pattern = capture_pattern(*model, ids, o.layer);

  hooklens::CaptureContext ctx;
  ctx.layer = o.layer;
  const hooklens::PatternRows rows = hooklens::PatternRows::of(pattern, ctx, info);
  const auto heads = hooklens::summarize_heads(pattern, rows);
  const at::Tensor averaged_pattern = at::mean(pattern, -3, /*keepdim=*/true);
  const json averaged = hooklens::summarize_heads(averaged_pattern, rows).front().to_json();

  const std::string where = fmt::format("{} sequence {}", o.text_file.filename().string(), o.sequence);
  json head_list = json::array(), by_label = {{"sharp", json::array()}, {"medium", json::array()}, {"uniform", json::array()}};
  std::vector<std::string> tokens;
  for (auto id : ids) tokens.push_back(model->tokenizer()->token_string(id));
  std::vector<std::string> labels;
  for (const auto& t : tokens) labels.push_back(drawing::token_label(t, 8));
  labels = drawing::thin_labels(labels, drawing::cell_size(o.seq_len));
  std::vector<drawing::Panel> panels;
  std::vector<drawing::Matrix> matrices;
  for (std::size_t h = 0; h < heads.size(); ++h) {
    json s = heads[h].to_json();
    s["head"] = h;
    if (s["label"].is_string()) by_label[s["label"].get<std::string>()].push_back(h);
    head_list.push_back(s);
    matrices.push_back(drawing::head_matrix(pattern, std::int64_t(h)));
  }
  matrices.push_back(drawing::head_matrix(pattern, -1));
  std::vector<const drawing::Matrix*> all;
  for (const auto& m : matrices) all.push_back(&m);
  const drawing::Scale scale = drawing::sequential_scale(all);
  const int cell = drawing::cell_size(o.seq_len);
  for (std::size_t i = 0; i < matrices.size(); ++i) {
    const bool mean = i == heads.size();
    const json& s = mean ? averaged : head_list[i];
    const std::string title = mean ? fmt::format("{}: L{} head mean", where, o.layer) : fmt::format("{}: L{}H{}", where, o.layer, i);
    panels.push_back({title, fmt::format("{}, entropy {}", s["label"].is_string() ? s["label"].get<std::string>() : "-",
                                         s["entropy"].is_number() ? fmt::format("{:.3f}", s["entropy"].get<double>()) : "-"),
                      matrices[i], scale, cell, cell, labels, labels});
  }
  fs::create_directories(o.out);
  const std::string figure = fmt::format("heads_layer{}.png", o.layer);
  drawing::write_figure(o.out / figure, panels, panels.size() <= 6 ? 0 : 4);  // many heads: a grid

  const bool hides = !by_label["sharp"].empty() && averaged["label"] != "sharp";
  hooklens::write_text_file(o.out / "summary.json",
                      drawing::dump({{"model", o.model.string()}, {"text_file", o.text_file.string()},
                                     {"sequence", o.sequence}, {"seq_len", o.seq_len},
                                     {"tokens_range", {o.sequence * o.seq_len, (o.sequence + 1) * o.seq_len - 1}},
                                     {"ids", ids}, {"tokens", tokens}, {"layer", o.layer},
                                     {"thresholds", {{"sharp_below", hooklens::kSharpBelow}, {"uniform_above", hooklens::kUniformAbove}}},
                                     {"heads", head_list}, {"head_averaged", averaged}, {"labels", by_label},
                                     {"averaging_hides", hides}, {"figure", figure}, {"definitions", definitions()}}));

  std::cout << fmt::format("{} (tokens {}-{}), layer {} of {}\n", where, o.sequence * o.seq_len,
                           (o.sequence + 1) * o.seq_len - 1, o.layer, o.model.string());
  for (const json& s : head_list)
    std::cout << fmt::format("  head {:>2}: entropy {:>7}  normalized {:>6}  {}\n", s["head"].get<int>(),
                             s["entropy"].is_number() ? fmt::format("{:.4f}", s["entropy"].get<double>()) : "-",
                             s["normalized_entropy"].is_number() ? fmt::format("{:.3f}", s["normalized_entropy"].get<double>()) : "-",
                             s["label"].is_string() ? s["label"].get<std::string>() : "-");
  std::cout << fmt::format("  sharp heads {}, medium {}, uniform {}; head-averaged pattern: {}\n", by_label["sharp"].dump(),
                           by_label["medium"].dump(), by_label["uniform"].dump(), averaged["label"].dump());
  std::cout << (hides ? "  averaging hides sharp heads: look at the heads one by one\n"
                      : "  averaging hides no sharp head\n")
            << fmt::format("wrote {} and summary.json to {}\n", figure, o.out.string());
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"The attention heads of one layer on one sequence of a text file (e.g. a validation split), each "
               "beside the head-averaged pattern, with a sharpness diagnosis from attention_stats. Writes "
               "heads_layer{L}.png and summary.json."};
  app.name("validation_heads");
  std::string model = o.model.string(), out = o.out.string(), text_file;
  app.add_option("--model", model, "model directory or file")->capture_default_str();
  app.add_option("--text-file", text_file, "text to cut sequences from (e.g. WikiText's wiki.valid.raw)")->required();
  app.add_option("--seq-len", o.seq_len, "tokens per sequence")->required()->check(CLI::Range(2, 1 << 20));
  app.add_option("--sequence", o.sequence, "which sequence (from 0)")->check(CLI::Range(0, 1 << 20))->capture_default_str();
  app.add_option("--layer", o.layer, "layer to draw")->check(CLI::Range(0, 1 << 20))->capture_default_str();
  app.add_option("--out", out, "output directory")->capture_default_str();
  app.footer("Exit status: 0 success, 1 error, 2 usage error.");
  return run_example(app, argc, argv, [&] {
    o.model = model;
    o.out = out;
    o.text_file = text_file;
    ::run(o);
  });
}

// `hooklens patch-sweep`: the standard activation-patching experiment. The clean prompt's value of
// one hook point is patched into the corrupted prompt's forward pass at each (layer, position) or
// (layer, head) in turn, and a metric of the last position's logits says how much of the clean
// behaviour each patch restores: a table (JSON, CSV) and a heatmap.
#include "cli.h"

#include <hooklens/drawing.h>
#include <hooklens/error.h>
#include <hooklens/hook_names.h>
#include <hooklens/hooks.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>
#include <hooklens/runtime.h>
#include <hooklens/text.h>
#include <hooklens/tokenizer.h>

#include <ATen/ATen.h>
#include <fmt/chrono.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <iostream>
#include <map>

#include <unistd.h>

namespace hooklens::cli {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct SweepOptions {
  std::string model, adapter, tokenizer, spec;
  int threads = 0;
  std::string clean, corrupted, clean_ids, corrupted_ids;
  std::string point = std::string(hook_names::resid_pre);
  std::string by = "position";
  std::vector<int> layers;
  std::string metric = "logit-diff";
  std::string answer, wrong;
  std::optional<std::int64_t> answer_id, wrong_id;
  int batch_size = 16;
  std::string out;
  bool overwrite = false;
  std::vector<std::string> render{"png"};
};

std::vector<std::int64_t> prompt_ids(const Model& model, const std::string& text, const std::string& ids,
                                     const std::string& which) {
  if (text.empty() == ids.empty())
    throw UsageError(fmt::format("give --{0} TEXT or --{0}-ids 1,2,3 (one of them)", which));
  if (!ids.empty()) {
    const std::string option = "--" + which + "-ids";
    auto out = parse_token_ids(ids, option);
    for (auto id : out)
      if (model.info().vocab_size > 0 && id >= model.info().vocab_size)
        throw UsageError(fmt::format("{}: token id {} is outside the vocabulary of {}", option, id, model.info().vocab_size));
    return out;
  }
  if (!model.tokenizer()) throw UsageError(fmt::format("{} has no tokenizer: give --{}-ids", model.info().path, which));
  return model.tokenizer()->encode(text);
}

// One token: --answer-id, or --answer TEXT that the tokenizer makes one token of.
std::optional<std::int64_t> token_of(const Model& model, const std::string& text, std::optional<std::int64_t> id,
                                     const std::string& option) {
  if (id) {
    if (*id < 0 || (model.info().vocab_size > 0 && *id >= model.info().vocab_size))
      throw UsageError(fmt::format("--{}-id {}: not a token id of this model", option, *id));
    return id;
  }
  if (text.empty()) return std::nullopt;
  if (!model.tokenizer()) throw UsageError(fmt::format("--{} TEXT needs a tokenizer: give --{}-id", option, option));
  const auto ids = model.tokenizer()->encode(text, false);
  if (ids.size() != 1)
    throw UsageError(fmt::format("--{} '{}' is {} tokens, not one (a leading space often matters: ' Tom')", option, text,
                                 ids.size()));
  return ids[0];
}

std::string token_text(const Model& model, std::int64_t id) {
  return model.tokenizer() ? model.tokenizer()->token_string(id) : std::to_string(id);
}

// The last position's logits, as float64 [rows, vocab].
at::Tensor last_logits(Model& model, const at::Tensor& ids, const HookSet& hooks) {
  at::Tensor logits = model.forward(ids, hooks, CaptureContext{}, nullptr, Logits::last);
  return logits.select(1, logits.size(1) - 1).to(at::kDouble);
}

void run_sweep(const SweepOptions& o) {
  if (o.metric != "logit-diff" && o.metric != "kl")
    throw UsageError(fmt::format("--metric must be logit-diff or kl, not '{}'", o.metric));
  if (o.by != "position" && o.by != "head") throw UsageError(fmt::format("--by must be position or head, not '{}'", o.by));
  for (const auto& format : o.render)
    if (format != "png" && format != "svg" && format != "pdf")
      throw UsageError(fmt::format("--render must be png, svg or pdf, not '{}'", format));
  init_runtime(o.threads);
  PluginRegistry registry;
  LoadOptions load;
  load.tokenizer = o.tokenizer;
  load.spec = o.spec;
  auto model = open_model(registry, o.model, o.adapter, load);
  const ModelInfo& info = model->info();
  const auto clean = prompt_ids(*model, o.clean, o.clean_ids, "clean");
  const auto corrupted = prompt_ids(*model, o.corrupted, o.corrupted_ids, "corrupted");
  if (clean.size() != corrupted.size())
    throw UsageError(fmt::format("the clean prompt has {} tokens, the corrupted one {}: patching position by position "
                                 "needs the same length",
                                 clean.size(), corrupted.size()));
  if (clean.empty()) throw UsageError("the prompts have no tokens");
  if (std::int64_t(clean.size()) > info.n_ctx)
    throw UsageError(fmt::format("the prompts have {} tokens, more than the model's context of {}", clean.size(), info.n_ctx));

  // The point in each layer, and the dim the sweep walks along.
  std::vector<int> layers = o.layers;
  if (layers.empty())
    for (int l = 0; l < info.n_layers; ++l) layers.push_back(l);
  const auto points = model->hook_points();
  std::vector<std::string> dims;
  for (int l : layers) {
    if (l < 0 || l >= info.n_layers) throw UsageError(fmt::format("--layers {}: the model has layers 0-{}", l, info.n_layers - 1));
    const std::string name = hook_names::in_layer(l, o.point);
    const auto it = std::find_if(points.begin(), points.end(), [&](const auto& p) { return p.name == name; });
    if (it == points.end())
      throw UsageError(fmt::format("--point {}: the model has no {} (`hooklens info --model DIR` lists its points)", o.point,
                                   name));
    dims = it->dims;
  }
  const auto axis_of = [&](std::initializer_list<const char*> names) -> std::int64_t {
    for (const char* n : names) {
      const auto it = std::find(dims.begin(), dims.end(), n);
      if (it != dims.end()) return std::int64_t(it - dims.begin());
    }
    return -1;
  };
  const std::int64_t axis = o.by == "head" ? axis_of({"head"}) : axis_of({"pos", "query"});
  if (axis < 0)
    throw UsageError(fmt::format("--point {} has no {} dim (its dims: {}): {}", o.point, o.by, fmt::join(dims, ", "),
                                 o.by == "head" ? "sweep heads over attn.hook_z, attn.hook_result or attn.hook_pattern"
                                                : "sweep positions over a point with positions"));

  const auto as_batch = [](const std::vector<std::int64_t>& ids, std::int64_t rows) {
    return at::tensor(at::ArrayRef<std::int64_t>(ids), at::kLong).unsqueeze(0).expand({rows, std::int64_t(ids.size())}).contiguous();
  };
  // The clean run's values of the point in every swept layer, and both runs' logits.
  std::map<int, at::Tensor> clean_values;
  HookSet record;
  HookFilter swept;
  swept.names = {hook_names::every_layer(o.point)};
  swept.layers = layers;
  record.add(swept, [&](std::string_view, const CaptureContext& ctx, at::Tensor& t) { clean_values[ctx.layer] = t.clone(); });
  const at::Tensor clean_logits = last_logits(*model, as_batch(clean, 1), record)[0];
  const at::Tensor corrupted_logits = last_logits(*model, as_batch(corrupted, 1), HookSet())[0];

  // The metric of the last position's logits, and what the two runs give.
  const std::optional<std::int64_t> answer_given = token_of(*model, o.answer, o.answer_id, "answer"),
                                    wrong_given = token_of(*model, o.wrong, o.wrong_id, "wrong");
  const std::int64_t answer = answer_given.value_or(clean_logits.argmax().item<std::int64_t>());
  const std::int64_t wrong = wrong_given.value_or(corrupted_logits.argmax().item<std::int64_t>());
  const bool kl = o.metric == "kl";
  if (!kl && answer == wrong)
    throw UsageError(fmt::format("the clean and corrupted prompts both predict '{}': name the two tokens to compare with "
                                 "--answer and --wrong (or use --metric kl)",
                                 token_text(*model, answer)));
  const at::Tensor clean_log_probs = at::log_softmax(clean_logits, -1);
  const auto metric = [&](const at::Tensor& logits) {  // logits [vocab], float64
    if (!kl) return (logits[answer] - logits[wrong]).item<double>();
    return (clean_log_probs.exp() * (clean_log_probs - at::log_softmax(logits, -1))).sum().item<double>();
  };
  const double clean_metric = metric(clean_logits), corrupted_metric = metric(corrupted_logits);
  const double span = corrupted_metric - clean_metric;  // the restored fraction is 1 - (m - clean) / span
  if (!(std::abs(span) > 1e-9 * std::max(1.0, std::abs(clean_metric))))
    throw UsageError(fmt::format("the clean and corrupted prompts give the same {} ({:.6g}): there is nothing to restore",
                                 o.metric, clean_metric));

  // Every cell: one patched forward pass, --batch-size of them together (a row per cell).
  const std::int64_t columns = o.by == "head" ? clean_values.begin()->second.size(axis) : std::int64_t(clean.size());
  struct Cell {
    int layer;
    std::int64_t column;
    double value = 0;
  };
  std::vector<Cell> cells;
  for (int l : layers)
    for (std::int64_t c = 0; c < columns; ++c) cells.push_back({l, c});
  const std::size_t batch = std::size_t(std::max(1, o.batch_size));
  const bool tty = isatty(2);
  for (std::size_t first = 0; first < cells.size(); first += batch) {
    const std::size_t rows = std::min(batch, cells.size() - first);
    HookSet patch;
    patch.add(swept, [&](std::string_view, const CaptureContext& ctx, at::Tensor& t) {
      const at::Tensor& source = clean_values.at(ctx.layer);
      at::Tensor changed = t.clone();
      for (std::size_t r = 0; r < rows; ++r) {
        const Cell& cell = cells[first + r];
        if (cell.layer != ctx.layer) continue;
        // Row r of the batch (dim 0), the cell's position or head, from the clean run's row 0.
        changed[std::int64_t(r)].narrow(axis - 1, cell.column, 1).copy_(source[0].narrow(axis - 1, cell.column, 1));
      }
      t = changed;
    });
    const at::Tensor logits = last_logits(*model, as_batch(corrupted, std::int64_t(rows)), patch);
    for (std::size_t r = 0; r < rows; ++r) cells[first + r].value = metric(logits[std::int64_t(r)]);
    release_free_memory();
    const bool done = first + rows == cells.size();
    if (tty || done)  // rewritten in place on a terminal; one line in a log
      std::cerr << (tty ? "\r\033[K" : "") << fmt::format("patch-sweep: {}/{} patched passes", first + rows, cells.size())
                << (done ? "\n" : "") << std::flush;
  }

  // The table, the heatmap, and what restored most.
  const fs::path out = !o.out.empty() ? fs::path(o.out)
                                      : fs::path(fmt::format("runs/patch-sweep-{:%Y%m%d-%H%M%S}", fmt::localtime(std::time(nullptr))));
  std::error_code ec;
  if (fs::exists(out, ec) && !fs::is_empty(out, ec)) {
    if (!o.overwrite) throw UsageError(fmt::format("{} exists and is not empty: give --overwrite or another --out", out.string()));
    fs::remove_all(out, ec);
  }
  fs::create_directories(out);
  const auto tokens = [&](const std::vector<std::int64_t>& ids) {
    std::vector<std::string> out;
    for (auto id : ids) out.push_back(token_text(*model, id));
    return out;
  };
  std::vector<std::string> column_labels, row_labels;
  for (std::int64_t c = 0; c < columns; ++c) {
    if (o.by == "head") {
      column_labels.push_back(fmt::format("H{}", c));
      continue;
    }
    const std::string tok = drawing::token_label(token_text(*model, corrupted[std::size_t(c)]), 10);
    column_labels.push_back(clean[std::size_t(c)] != corrupted[std::size_t(c)] ? "*" + tok : tok);
  }
  for (int l : layers) row_labels.push_back(fmt::format("L{}", l));
  const auto restored = [&](double m) { return 1.0 - (m - clean_metric) / span; };
  drawing::Matrix matrix;
  matrix.rows = std::int64_t(layers.size());
  matrix.cols = columns;
  json table = json::array();
  std::string csv = fmt::format("layer,{},label,{},restored\n", o.by, o.metric);
  for (const Cell& cell : cells) {
    const std::string label = o.by == "head" ? fmt::format("H{}", cell.column) : token_text(*model, corrupted[std::size_t(cell.column)]);
    matrix.values.push_back(restored(cell.value));
    table.push_back({{"layer", cell.layer}, {o.by, cell.column}, {"metric", cell.value}, {"restored", restored(cell.value)}});
    std::string quoted = label;
    for (std::size_t at = quoted.find('"'); at != std::string::npos; at = quoted.find('"', at + 2)) quoted.insert(at, "\"");
    csv += fmt::format("{},{},\"{}\",{:.9g},{:.9g}\n", cell.layer, cell.column, quoted, cell.value, restored(cell.value));
  }
  const std::string metric_text =
      kl ? "KL(clean || patched) of the last position's next-token distribution"
         : fmt::format("logit difference '{}' - '{}' at the last position", token_text(*model, answer), token_text(*model, wrong));
  const std::string hook = hook_names::every_layer(o.point);
  json report = {{"model", info.to_json()},
                 {"clean", {{"ids", clean}, {"tokens", tokens(clean)}}},
                 {"corrupted", {{"ids", corrupted}, {"tokens", tokens(corrupted)}}},
                 {"point", hook},
                 {"by", o.by},
                 {"layers", layers},
                 {"metric", o.metric},
                 {"metric_text", metric_text},
                 {"clean_metric", clean_metric},
                 {"corrupted_metric", corrupted_metric},
                 {"restored", "1 - (metric - clean) / (corrupted - clean): 1 = the clean run's, 0 = the corrupted run's"},
                 {"cells", table}};
  if (!kl) report.update({{"answer", {{"id", answer}, {"token", token_text(*model, answer)}}},
                          {"wrong", {{"id", wrong}, {"token", token_text(*model, wrong)}}}});
  if (!o.clean.empty()) report["clean"]["text"] = o.clean;
  if (!o.corrupted.empty()) report["corrupted"]["text"] = o.corrupted;
  write_text_file(out / "patch_sweep.json", drawing::dump(report));
  write_text_file(out / "patch_sweep.csv", csv);

  drawing::Panel panel;
  panel.title = fmt::format("Patching {} clean -> corrupted, by layer and {}", hook, o.by);
  panel.caption = fmt::format("restored fraction of the {} (1: clean {:.3g}, 0: corrupted {:.3g}){}", metric_text,
                              clean_metric, corrupted_metric, o.by == "position" ? "; * the positions that differ" : "");
  panel.scale = drawing::signed_scale(matrix);
  panel.scale.lo = std::min(panel.scale.lo, -1.0);
  panel.scale.hi = std::max(panel.scale.hi, 1.0);
  panel.matrix = std::move(matrix);
  const int cell = std::max(drawing::kLabelledCell, drawing::cell_size(std::max<std::int64_t>(columns, std::int64_t(layers.size()))));
  panel.cell_w = panel.cell_h = cell;
  panel.row_labels = row_labels;
  panel.col_labels = drawing::thin_labels(column_labels, cell);
  // The figure's own line says what was corrupted (the prompts are in patch_sweep.json).
  std::vector<std::string> changed;
  for (std::size_t p = 0; p < clean.size(); ++p)
    if (clean[p] != corrupted[p])
      changed.push_back(fmt::format("position {} '{}' -> '{}'", p, drawing::token_label(token_text(*model, clean[p])),
                                    drawing::token_label(token_text(*model, corrupted[p]))));
  const std::size_t shown = std::min<std::size_t>(changed.size(), 4);
  const std::string differences =
      changed.empty() ? std::string("no token differs")
                      : fmt::format("{}{}", fmt::join(changed.begin(), changed.begin() + std::ptrdiff_t(shown), ", "),
                                    changed.size() > shown ? fmt::format(" and {} more", changed.size() - shown) : "");
  std::vector<std::string> figures;
  for (const auto& format : o.render) {
    const fs::path file = out / ("patch_sweep." + format);
    drawing::write_figure(file, {panel}, 1, fmt::format("{} | clean -> corrupted: {}", info.path, differences));
    figures.push_back(file.string());
  }
  std::vector<const Cell*> best;
  for (const Cell& c : cells) best.push_back(&c);
  std::sort(best.begin(), best.end(), [&](const Cell* a, const Cell* b) { return restored(a->value) > restored(b->value); });
  std::cout << fmt::format("patch sweep: {} ({} layers x {} {}s); clean {} {:.4g}, corrupted {:.4g}\n  {}\n  {}\n",
                           out.string(), layers.size(), columns, o.by, o.metric, clean_metric, corrupted_metric,
                           (out / "patch_sweep.json").string(), fmt::join(figures, ", "));
  for (std::size_t i = 0; i < std::min<std::size_t>(3, best.size()); ++i)
    std::cout << fmt::format("  restores most: {} {} {}{}: {:.3f}\n", hook_names::in_layer(best[i]->layer, o.point), o.by,
                             best[i]->column, o.by == "head" ? "" : fmt::format(" ('{}')", token_text(*model, corrupted[std::size_t(best[i]->column)])),
                             restored(best[i]->value));
}

}  // namespace

void add_patch_sweep_command(CLI::App& app) {
  auto o = std::make_shared<SweepOptions>();
  CLI::App* cmd = app.add_subcommand(
      "patch-sweep",
      "Activation patching, the standard plot: patch the clean prompt's value of one point into the corrupted prompt's "
      "pass at each (layer, position) or (layer, head) and measure how much of the clean prediction comes back");
  cmd->add_option("--model", o->model, "Model directory (or file) to load")->required();
  cmd->add_option("--adapter", o->adapter, "Adapter plugin to use instead of the one chosen from config.json");
  cmd->add_option("--tokenizer", o->tokenizer, "Tokenizer, if the model directory has none");
  cmd->add_option("--spec", o->spec, "Architecture spec of a state dict (see `hooklens capture --help`)");
  cmd->add_option("--clean", o->clean, "The clean prompt (the behaviour to restore)");
  cmd->add_option("--corrupted", o->corrupted, "The corrupted prompt: as many tokens, some changed");
  cmd->add_option("--clean-ids", o->clean_ids, "The clean prompt as token ids, e.g. 464,3797,318");
  cmd->add_option("--corrupted-ids", o->corrupted_ids, "The corrupted prompt as token ids");
  cmd->add_option("--point", o->point,
                  "The hook point patched in each layer, its suffix after blocks.L.: hook_resid_pre, hook_attn_out, "
                  "hook_mlp_out, attn.hook_z, ...")
      ->capture_default_str();
  cmd->add_option("--by", o->by, "Walk positions (position) or heads (head: a point with heads, e.g. attn.hook_z)")
      ->capture_default_str();
  cmd->add_option("--layers", o->layers, "Only these layers (comma-separated; default all)")->delimiter(',');
  cmd->add_option("--metric", o->metric,
                  "logit-diff: logit of --answer minus logit of --wrong at the last position; kl: KL divergence of the "
                  "last position's distribution from the clean one")
      ->capture_default_str();
  auto* answer = cmd->add_option("--answer", o->answer, "The clean answer token as text (default: the clean prompt's top prediction)");
  auto* wrong = cmd->add_option("--wrong", o->wrong, "The corrupted answer token as text (default: the corrupted prompt's top prediction)");
  cmd->add_option("--answer-id", o->answer_id, "The clean answer as a token id")->excludes(answer);
  cmd->add_option("--wrong-id", o->wrong_id, "The corrupted answer as a token id")->excludes(wrong);
  cmd->add_option("--batch-size", o->batch_size, "Patched passes run together")->capture_default_str()->check(CLI::Range(1, 4096));
  cmd->add_option("--threads", o->threads, "Compute threads (0 = one per core)")->capture_default_str();
  cmd->add_option("--out", o->out, "Directory for patch_sweep.json, .csv and the figure (default runs/patch-sweep-DATE-TIME)");
  cmd->add_flag("--overwrite", o->overwrite, "Replace a non-empty --out");
  cmd->add_option("--render", o->render, "Figure formats: png, svg, pdf (comma-separated)")->delimiter(',')->capture_default_str();
  cmd->callback([o] { run_sweep(*o); });
}

}  // namespace hooklens::cli

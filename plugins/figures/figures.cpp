// The figures renderer: draws a finished run directory as PNG, SVG or PDF figures (docs/figures.md).
// It reads one forward pass's attention patterns at a time, so memory stays bounded by one pass.

#include <hooklens/analyzer.h>
#include <hooklens/attention_stats.h>
#include <hooklens/drawing.h>
#include <hooklens/error.h>
#include <hooklens/hook_names.h>
#include <hooklens/json_read.h>
#include <hooklens/model.h>
#include <hooklens/plugin_define.h>
#include <hooklens/plugin_options.h>
#include <hooklens/renderer.h>
#include <hooklens/run.h>
#include <hooklens/text.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace drawing = hooklens::drawing;
using drawing::BarChart;
using drawing::Matrix;
using drawing::Panel;
using hooklens::Error;
using hooklens::UsageError;
using nlohmann::json;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr std::int64_t kFullyLabelled = 128;  // up to this many tokens every token gets a label
constexpr std::size_t kChartsPerFigure = 48;  // prompt tokens per "attention to the prompt" figure
constexpr std::size_t kCaptionText = 40;      // characters of the prompt text in captions
constexpr std::size_t kCaptionInterventions = 120;  // bytes of the interventions' lines in captions

// ---- options -------------------------------------------------------------------------------------

struct Options {
  std::vector<int> layers, heads, prompts, steps;  // empty: the default
  std::optional<std::int64_t> target;
};

// The options through PluginOptions (hooklens/plugin_options.h): integer lists as 2, [0, 2] or "0,2".
Options parse_options(const json& options) {
  const hooklens::PluginOptions given("figures", options, {"layers", "heads", "prompts", "steps", "target"});
  Options o;
  o.layers = given.int_list("layers").value_or(std::vector<int>{});
  o.heads = given.int_list("heads").value_or(std::vector<int>{});
  o.prompts = given.int_list("prompts").value_or(std::vector<int>{});
  o.steps = given.int_list("steps").value_or(std::vector<int>{});
  if (const auto target = given.int_list("target")) {  // one position; [5] and "5" as well as 5
    if (target->size() != 1) throw UsageError("figures: option 'target' is one key position");
    o.target = target->front();
  }
  return o;
}

// Checks that every value of option `key` is in [0, count).
void check_range(const std::vector<int>& values, int count, const std::string& key, const fs::path& manifest) {
  for (int v : values)
    if (v < 0 || v >= count)
      throw UsageError(fmt::format("figures: option '{}': {} is not in the run {} (it has {} 0-{})", key, v,
                                   manifest.string(), key, count - 1));
}

std::vector<int> all_up_to(int n) {
  std::vector<int> v(std::size_t(std::max(n, 0)));
  for (int i = 0; i < n; ++i) v[std::size_t(i)] = i;
  return v;
}

bool contains(const std::vector<int>& v, int x) { return std::find(v.begin(), v.end(), x) != v.end(); }

// ---- the run -------------------------------------------------------------------------------------

// A pattern capture of one layer in one forward pass, loaded.
struct Pattern {
  at::Tensor tensor;  // float [1, captured heads, Q, K], contiguous
  hooklens::CaptureContext ctx;
};

class Run {
 public:
  // RunCheck::consistent: every capture's prompt, step, layer, offsets and heads were checked
  // against the model, prompts and generation once, before anything here indexes with them.
  explicit Run(const fs::path& dir)
      : reader_(dir, /*allow_incomplete=*/false, hooklens::RunCheck::consistent), manifest_file_(dir / "manifest.json") {
    const json& m = reader_.manifest();
    model_ = hooklens::ModelInfo::from_json(m.at("model"));
    mode_ = reader_.generation().mode;
    const json& capture = m.value("capture", json::object());
    if (capture.contains("heads") && capture["heads"].is_array() && !capture["heads"].empty())
      captured_heads_ = capture["heads"].get<std::vector<int>>();
    else
      captured_heads_ = all_up_to(model_.n_heads);
    index_patterns();
  }

  const json& manifest() const { return reader_.manifest(); }
  const fs::path& manifest_file() const { return manifest_file_; }
  const hooklens::ModelInfo& model() const { return model_; }
  hooklens::GenerationMode mode() const { return mode_; }
  bool diffusion() const { return mode_ == hooklens::GenerationMode::masked_diffusion; }
  std::size_t prompt_count() const { return reader_.prompts().size(); }
  const std::vector<hooklens::RunIntervention>& interventions() const { return reader_.interventions(); }
  const std::vector<int>& captured_heads() const { return captured_heads_; }
  int unconditional_skipped() const { return unconditional_; }

  // step -> layer -> capture index of prompt `p`'s conditional pattern captures.
  const std::map<int, std::map<int, std::size_t>>& patterns(int p) const {
    static const std::map<int, std::map<int, std::size_t>> none;
    const auto it = patterns_.find(p);
    return it == patterns_.end() ? none : it->second;
  }

  Pattern load(std::size_t index) {
    const hooklens::CaptureEntry& entry = reader_.entry(index);
    at::Tensor t = reader_.load(index).to(at::kFloat).contiguous();
    if (t.dim() != 4 || t.size(0) != 1 || t.size(1) < 1 || t.size(1) != std::int64_t(captured_heads_.size()) || t.size(2) < 1 ||
        t.size(3) < 1)
      throw Error(fmt::format("{}: capture {} ({}) is not a pattern [1, {} heads, query, key]", manifest_file_.string(),
                              index, entry.key, captured_heads_.size()));
    return {t, entry.context};
  }

  // The token strings of prompt `p`'s sequence as the forward pass of `step` saw it.
  std::vector<std::string> tokens(int p, int step) const {
    std::vector<std::string> tokens = reader_.prompts().at(std::size_t(p)).tokens;
    const hooklens::RunGeneration& gen = reader_.generation();
    if (mode_ == hooklens::GenerationMode::autoregressive) {
      for (int s = 0; s < step && std::size_t(s) < gen.token_steps.size(); ++s) {
        const hooklens::TokenStep& chosen = gen.token_steps[std::size_t(s)];
        tokens.push_back(chosen.token_string ? *chosen.token_string
                                             : chosen.token ? "#" + std::to_string(*chosen.token) : std::string("?"));
      }
    } else if (diffusion()) {
      // The input of step s is the sequence after step s - 1 (the prompt and masks for step 0).
      if (step > 0 && std::size_t(step) > gen.denoise_steps.size())
        throw Error(fmt::format("{}: \"generation\" has no step {} (the input of step {})", manifest_file_.string(),
                                step - 1, step));
      const std::vector<std::int64_t>& ids = step > 0 ? gen.denoise_steps.at(std::size_t(step - 1)).ids : gen.output_ids;
      if (ids.size() < tokens.size()) return tokens;  // another prompt than the generated one
      // token_strings is written only when the run had a tokenizer: "#ID" otherwise (RunGeneration::display).
      for (std::size_t i = tokens.size(); i < ids.size(); ++i) tokens.push_back(step == 0 ? "[mask]" : gen.display(ids[i]));
    }
    return tokens;
  }

  // "ARCHITECTURE (model dir), "first 40 characters of the text" [source]".
  std::string describe(int p) const {
    const hooklens::RunPrompt& prompt = reader_.prompts().at(std::size_t(p));
    std::string text = prompt.text;
    if (text.empty())
      for (const std::string& t : prompt.tokens) text += t + " ";
    std::string shown;
    for (unsigned char c : text) {  // cut on a character boundary
      if ((c & 0xC0) != 0x80 && shown.size() >= kCaptionText) {
        shown += "...";
        break;
      }
      shown += char(c);
    }
    // Where the text came from when it is not a user's prompt (--text-file sequence, an analyzer's input).
    const std::string& source = prompt.source;
    return fmt::format("{} ({}), \"{}\"{}", model_.architecture, fs::path(model_.path).filename().string(), shown,
                       source == "prompt" ? "" : " [" + source + "]");
  }

 private:
  void index_patterns() {
    for (std::size_t i = 0; i < reader_.capture_count(); ++i) {
      const hooklens::CaptureEntry& c = reader_.entry(i);
      if (!hooklens::hook_names::layer_of(c.hook, hooklens::hook_names::pattern)) continue;
      if (c.context.pass != 0) {
        ++unconditional_;
        continue;
      }
      patterns_[c.context.prompt][c.context.step][c.context.layer] = i;
    }
  }

  hooklens::RunReader reader_;
  fs::path manifest_file_;
  hooklens::ModelInfo model_;
  hooklens::GenerationMode mode_ = hooklens::GenerationMode::none;
  std::vector<int> captured_heads_;
  std::map<int, std::map<int, std::map<int, std::size_t>>> patterns_;
  int unconditional_ = 0;
};

// ---- matrices from patterns ----------------------------------------------------------------------

// Column index of each model head in `heads` within the captured heads.
std::vector<std::int64_t> head_columns(const std::vector<int>& heads, const std::vector<int>& captured) {
  std::vector<std::int64_t> out;
  for (int h : heads) out.push_back(std::find(captured.begin(), captured.end(), h) - captured.begin());
  return out;
}

// The mean over `columns` (captured-head indices) of a pattern.
Matrix mean_matrix(const Pattern& p, const std::vector<std::int64_t>& columns) {
  const std::int64_t Q = p.tensor.size(2), K = p.tensor.size(3);
  Matrix m{Q, K, std::vector<double>(std::size_t(Q * K), 0.0), p.ctx.query_offset, p.ctx.key_offset};
  const float* data = p.tensor.data_ptr<float>();
  for (std::int64_t h : columns)
    for (std::int64_t i = 0; i < Q * K; ++i) m.values[std::size_t(i)] += data[h * Q * K + i];
  for (double& v : m.values) v /= double(columns.size());
  return m;
}

// "12:_cat" labels of the positions [first, first + count).
std::vector<std::string> position_labels(const std::vector<std::string>& tokens, std::int64_t first, std::int64_t count) {
  std::vector<std::string> out;
  for (std::int64_t i = first; i < first + count; ++i)
    out.push_back(fmt::format("{}:{}", i, i >= 0 && i < std::int64_t(tokens.size()) ? drawing::token_label(tokens[std::size_t(i)]) : "?"));
  return out;
}

// Cells big enough for a label up to kFullyLabelled tokens; past that smaller cells, every n-th labelled.
int labelled_cell(std::int64_t cells) {
  const int cell = drawing::cell_size(cells);
  return cells <= kFullyLabelled ? std::max(cell, drawing::kLabelledCell) : cell;
}

// Attention rollout (Abnar & Zuidema 2020) of square head-averaged patterns of layers 0..L-1:
// A_l = 0.5 W_l + 0.5 I with rows renormalised, R_0 = A_0, R_l = A_l R_(l-1).
std::vector<Matrix> rollout(const std::vector<Matrix>& means) {
  std::vector<Matrix> out;
  for (const Matrix& w : means) {
    const std::int64_t T = w.rows;
    Matrix a = w;
    for (std::int64_t r = 0; r < T; ++r) {
      double sum = 0;
      for (std::int64_t c = 0; c < T; ++c) sum += a.values[std::size_t(r * T + c)] = 0.5 * w.at(r, c) + (r == c ? 0.5 : 0.0);
      for (std::int64_t c = 0; c < T; ++c) a.values[std::size_t(r * T + c)] /= sum;
    }
    if (out.empty()) {
      out.push_back(a);
      continue;
    }
    const Matrix& prev = out.back();
    Matrix r = a;
    for (std::int64_t i = 0; i < T; ++i)
      for (std::int64_t j = 0; j < T; ++j) {
        double s = 0;
        for (std::int64_t k = 0; k < T; ++k) s += a.at(i, k) * prev.at(k, j);
        r.values[std::size_t(i * T + j)] = s;
      }
    out.push_back(r);
  }
  return out;
}

// A [1, 1, rows, cols] float tensor of `m`'s values.
at::Tensor as_tensor(const Matrix& m) {
  std::vector<float> values(m.values.begin(), m.values.end());
  return at::from_blob(values.data(), {1, 1, m.rows, m.cols}, at::kFloat).clone();
}

double finite_or_nan(const json& v) { return v.is_number() ? v.get<double>() : kNaN; }
// Item i of a list of numbers; NaN when it is not one.
double item_or_nan(const json& list, std::size_t i) { return list.is_array() && i < list.size() ? finite_or_nan(list[i]) : kNaN; }

// What ends every figure's caption of a run whose model was changed, so that a figure taken out of
// its run still says so: "intervened: TEXT; TEXT", whole lines while they fit kCaptionInterventions
// ("; +N more" for the rest), the first cut when even it does not; "" for a run nothing changed.
std::string intervened_caption(const std::vector<hooklens::RunIntervention>& interventions) {
  if (interventions.empty()) return "";
  std::string shown;
  std::size_t count = 0;
  for (const hooklens::RunIntervention& i : interventions) {
    const std::string line = hooklens::brief_text(i.text, kCaptionInterventions);  // one line, whatever it holds
    const std::string next = shown.empty() ? line : shown + "; " + line;
    if (count > 0 && next.size() > kCaptionInterventions) break;
    shown = next;
    ++count;
  }
  if (count < interventions.size()) shown += fmt::format("; +{} more", interventions.size() - count);
  return "intervened: " + shown;
}

// ---- the renderer --------------------------------------------------------------------------------

class FiguresRenderer final : public hooklens::Renderer {
 public:
  std::vector<std::string> formats() const override { return {"png", "svg", "pdf"}; }

  json render(const fs::path& run_dir, const std::string& format, const fs::path& out, const json& options) override {
    if (format != "png" && format != "svg" && format != "pdf")
      throw UsageError(fmt::format("figures: format \"{}\" is not one this renderer writes (png, svg, pdf)", format));
    const Options opts = parse_options(options);
    try {
      Run run(run_dir);
      return render_run(run, format, out, opts);
    } catch (const json::exception& e) {  // a manifest that RunReader accepted but lacks a field drawn here
      throw Error(fmt::format("{}: malformed run manifest: {}", (run_dir / "manifest.json").string(), e.what()));
    }
  }

 private:
  // Per-render state: where files go and what was written or skipped.
  struct Job {
    Run* run;
    std::string ext;
    fs::path out;
    Options opts;
    std::vector<int> layers, heads;  // chosen (default: all layers, all captured heads)
    std::vector<std::int64_t> averaged;  // captured-head indices of every captured head: what "heads averaged" means
    std::string intervened;  // intervened_caption of the run
    json files = json::array(), skipped = json::array();

    // Writes figure `stem` (drawing::write_figure), its caption ended with the run's interventions.
    template <typename Part>
    json figure(const std::string& stem, const std::vector<Part>& parts, int columns = 0, const std::string& caption = "") const {
      const std::string line = intervened.empty() ? caption : caption.empty() ? intervened : caption + "; " + intervened;
      return drawing::write_figure(path(stem), parts, columns, line);
    }
    void add(const std::string& stem, const std::string& shows, json geometry) {
      json entry = {{"file", stem + "." + ext}, {"shows", shows}};
      entry.update(geometry);
      files.push_back(std::move(entry));
    }
    void skip(const std::string& what, const std::string& why) { skipped.push_back({{"what", what}, {"why", why}}); }
    fs::path path(const std::string& stem) const { return out / (stem + "." + ext); }
  };

  json render_run(Run& run, const std::string& format, const fs::path& out, const Options& opts) {
    const int n_layers = run.model().n_layers;
    check_range(opts.layers, n_layers, "layers", run.manifest_file());
    check_range(opts.heads, run.model().n_heads, "heads", run.manifest_file());
    check_range(opts.prompts, int(run.prompt_count()), "prompts", run.manifest_file());
    for (int h : opts.heads)
      if (!contains(run.captured_heads(), h))
        throw UsageError(fmt::format("figures: option 'heads': head {} was not captured in {}", h,
                                     run.manifest_file().string()));
    std::error_code ec;
    fs::create_directories(out, ec);
    if (ec) throw Error(fmt::format("{}: cannot create the output directory: {}", out.string(), ec.message()));

    Job job{&run, format, out, opts};
    job.intervened = intervened_caption(run.interventions());
    job.layers = opts.layers.empty() ? all_up_to(n_layers) : opts.layers;
    job.heads = opts.heads.empty() ? run.captured_heads() : opts.heads;
    job.averaged = std::vector<std::int64_t>(run.captured_heads().size());  // every captured head's column
    std::iota(job.averaged.begin(), job.averaged.end(), 0);
    if (run.unconditional_skipped() > 0)
      job.skip(fmt::format("{} unconditional (classifier-free guidance) pattern captures", run.unconditional_skipped()),
               "only the conditional pass is drawn");
    const std::vector<int> prompts = opts.prompts.empty() ? all_up_to(int(run.prompt_count())) : opts.prompts;
    for (int p : prompts) render_prompt(job, p);
    draw_reports(job);
    const json index = {{"run", run.manifest_file().parent_path().string()}, {"format", format},
                        {"files", job.files}, {"skipped", job.skipped}};
    hooklens::write_text_file(out / "figures.json", drawing::dump(index));
    return {{"files", job.files}, {"skipped", job.skipped}};
  }

  // The forward passes of prompt `p` drawn as square heatmaps: step 0 of autoregressive and
  // single-pass runs, the chosen steps (default first and last) of diffusion runs.
  static std::vector<int> full_steps(Job& job, int p) {
    const auto& by_step = job.run->patterns(p);
    std::vector<int> available;
    for (const auto& [step, layers] : by_step)
      if (job.run->diffusion() || step == 0) available.push_back(step);
    for (int s : job.opts.steps)
      if (!by_step.count(s))
        throw UsageError(fmt::format("figures: option 'steps': prompt {} has no attention pattern captured at step {} "
                                     "in {}", p, s, job.run->manifest_file().string()));
    if (!job.opts.steps.empty()) {
      std::vector<int> chosen;
      for (int s : available)
        if (contains(job.opts.steps, s)) chosen.push_back(s);
      if (chosen.empty()) job.skip(fmt::format("prompt {} heatmaps", p), "the chosen steps are decode steps (one query row each)");
      return chosen;
    }
    if (job.run->diffusion() && available.size() > 2) return {available.front(), available.back()};
    return available;
  }

  static void render_prompt(Job& job, int p) {
    const auto& by_step = job.run->patterns(p);
    if (by_step.empty()) {
      job.skip(fmt::format("prompt {}", p), "no blocks.*.attn.hook_pattern captures");
      return;
    }
    for (int step : full_steps(job, p)) {
      const std::string tag = job.run->diffusion() ? fmt::format("p{}_s{}", p, step) : fmt::format("p{}", p);
      std::map<int, Pattern> patterns;
      for (const auto& [layer, index] : by_step.at(step)) patterns.emplace(layer, job.run->load(index));
      const std::vector<std::string> tokens = job.run->tokens(p, step);
      const std::string where = job.run->diffusion() ? fmt::format(", step {}", step) : "";
      const std::string context = job.run->describe(p) + where;
      draw_heatmaps(job, tag, patterns, tokens, context);
      draw_overview(job, tag, patterns, context);
      draw_layer_entropy(job, tag, patterns, context);
      draw_rollout(job, tag, patterns, tokens, context);
      if (job.opts.target) draw_target(job, tag, patterns, tokens, context);
    }
    if (job.run->mode() == hooklens::GenerationMode::autoregressive) draw_prompt_attention(job, p);
    if (job.run->diffusion()) draw_evolution(job, p);
  }

  // Heatmaps of each chosen layer: the head mean, each head of option "heads", and all heads in a grid.
  static void draw_heatmaps(Job& job, const std::string& tag, const std::map<int, Pattern>& patterns,
                            const std::vector<std::string>& tokens, const std::string& context) {
    const std::vector<int>& captured = job.run->captured_heads();
    for (int layer : job.layers) {
      const auto it = patterns.find(layer);
      if (it == patterns.end()) {
        job.skip(fmt::format("{} layer {}", tag, layer), "no pattern captured for this layer");
        continue;
      }
      const Pattern& pat = it->second;
      const std::int64_t Q = pat.tensor.size(2), K = pat.tensor.size(3);
      const int cell = labelled_cell(std::max(Q, K));
      const auto rows = drawing::thin_labels(position_labels(tokens, pat.ctx.query_offset, Q), cell);
      const auto cols = drawing::thin_labels(position_labels(tokens, pat.ctx.key_offset, K), cell);
      const auto one = [&](const std::string& stem, const std::string& who, const std::vector<int>& heads) {
        const Matrix m = mean_matrix(pat, head_columns(heads, captured));
        const Panel panel{fmt::format("layer {}, {}", layer, who), context, m, drawing::sequential_scale({&m}),
                          cell, cell, rows, cols};
        job.add(stem, fmt::format("layer {} attention pattern, {} (rows: queries, columns: keys)", layer, who),
                job.figure(stem, std::vector<Panel>{panel}));
      };
      one(fmt::format("{}_layer{}_mean", tag, layer), fmt::format("mean of {} heads", captured.size()), captured);
      for (int h : job.opts.heads) one(fmt::format("{}_layer{}_head{}", tag, layer, h), fmt::format("head {}", h), {h});

      std::vector<Matrix> per_head;
      for (int h : job.heads) per_head.push_back(mean_matrix(pat, head_columns({h}, captured)));
      std::vector<const Matrix*> all;
      for (const Matrix& m : per_head) all.push_back(&m);
      const drawing::Scale shared = drawing::sequential_scale(all);
      const int small = std::max(2, drawing::cell_size(std::max(Q, K)) / 2);
      std::vector<Panel> panels;
      for (std::size_t i = 0; i < per_head.size(); ++i)
        panels.push_back({fmt::format("layer {} head {}", layer, job.heads[i]), "", per_head[i],
                          shared, small, small, drawing::thin_labels(position_labels(tokens, pat.ctx.query_offset, Q), small),
                          drawing::thin_labels(position_labels(tokens, pat.ctx.key_offset, K), small)});
      const int columns = int(std::ceil(std::sqrt(double(panels.size()))));
      const std::string stem = fmt::format("{}_layer{}_heads", tag, layer);
      job.add(stem, fmt::format("layer {}: every head's pattern on one shared colour scale", layer),
              job.figure(stem, panels, columns, context));
    }
  }

  // Layer x head matrices of each head's mean normalized entropy and mean max weight.
  static void draw_overview(Job& job, const std::string& tag, const std::map<int, Pattern>& patterns,
                            const std::string& context) {
    const std::int64_t L = std::int64_t(job.layers.size()), H = std::int64_t(job.heads.size());
    Matrix entropy{L, H, std::vector<double>(std::size_t(L * H), kNaN)}, max_weight = entropy;
    const auto columns = head_columns(job.heads, job.run->captured_heads());
    for (std::int64_t l = 0; l < L; ++l) {
      const auto it = patterns.find(job.layers[std::size_t(l)]);
      if (it == patterns.end()) continue;
      const auto rows = hooklens::PatternRows::of(it->second.tensor, it->second.ctx, job.run->model());
      const auto heads = hooklens::summarize_heads(it->second.tensor, rows);
      for (std::int64_t h = 0; h < H; ++h) {
        const hooklens::AttentionSummary s = heads[std::size_t(columns[std::size_t(h)])];
        if (s.rows == 0) continue;
        entropy.values[std::size_t(l * H + h)] = s.mean().normalized_entropy;
        max_weight.values[std::size_t(l * H + h)] = s.mean().max_weight;
      }
    }
    std::vector<std::string> row_labels, col_labels;
    for (int l : job.layers) row_labels.push_back(fmt::format("L{}", l));
    for (int h : job.heads) col_labels.push_back(fmt::format("H{}", h));
    const drawing::Scale unit{0.0, 1.0, &drawing::kViridis};
    const std::vector<Panel> panels{
        {"mean normalized entropy (0 sharp, 1 uniform)", "", entropy, unit, 28, 28, row_labels, col_labels},
        {"mean max weight", "", max_weight, unit, 28, 28, row_labels, col_labels}};
    const std::string stem = tag + "_overview";
    job.add(stem, "layer x head overview: each head's mean normalized row entropy and mean max weight",
            job.figure(stem, panels, 0, context + "; rows: layers, columns: heads"));
  }

  // Per layer: the mean entropy of its heads and the entropy of its head-averaged pattern.
  static void draw_layer_entropy(Job& job, const std::string& tag, const std::map<int, Pattern>& patterns,
                                 const std::string& context) {
    BarChart chart{"mean row entropy (nats) per layer", context, {}, {}};
    BarChart::Series heads{"mean of the heads", {}, {68, 1, 84}}, averaged{"head-averaged pattern", {}, {34, 168, 132}};
    const auto& columns = job.averaged;
    for (int layer : job.layers) {
      chart.labels.push_back(fmt::format("L{}", layer));
      const auto it = patterns.find(layer);
      if (it == patterns.end()) {
        heads.values.push_back(kNaN), averaged.values.push_back(kNaN);
        continue;
      }
      const Pattern& pat = it->second;
      const auto rows = hooklens::PatternRows::of(pat.tensor, pat.ctx, job.run->model());
      const auto per_head = hooklens::summarize_heads(pat.tensor, rows);
      double sum = 0;
      for (std::int64_t c : columns) sum += per_head[std::size_t(c)].mean().entropy;
      heads.values.push_back(sum / double(columns.size()));
      averaged.values.push_back(hooklens::summarize_heads(as_tensor(mean_matrix(pat, columns)), rows)[0].mean().entropy);
    }
    chart.series = {heads, averaged};
    chart.bar_w = 16;
    const std::string stem = tag + "_layer_entropy";
    job.add(stem, "per layer: mean row entropy of its heads vs the row entropy of its head-averaged pattern",
            job.figure(stem, std::vector<BarChart>{chart}));
  }

  // The last token's head-averaged attention in each chosen layer, and its attention rollout.
  static void draw_rollout(Job& job, const std::string& tag, const std::map<int, Pattern>& patterns,
                           const std::vector<std::string>& tokens, const std::string& context) {
    const int n_layers = job.run->model().n_layers;
    const auto& columns = job.averaged;
    std::vector<Matrix> means;
    for (int l = 0; l < n_layers; ++l) {
      const auto it = patterns.find(l);
      if (it == patterns.end() || it->second.ctx.query_offset != 0 || it->second.ctx.key_offset != 0 ||
          it->second.tensor.size(2) != it->second.tensor.size(3)) {
        job.skip(tag + " rollout", "needs every layer's full square pattern (a layer is missing or sliced)");
        return;
      }
      means.push_back(mean_matrix(it->second, columns));
      if (means.back().rows != means.front().rows) {
        job.skip(tag + " rollout", "needs every layer's pattern over the same positions");
        return;
      }
    }
    if (means.empty() || means.front().rows < 1 || columns.empty()) {  // a model of no layers, or nothing to average
      job.skip(tag + " rollout", "no layer's pattern to roll out");
      return;
    }
    const std::vector<Matrix> rolled = rollout(means);
    const std::int64_t T = means.front().rows, last = T - 1, L = std::int64_t(job.layers.size());
    Matrix raw{L, T, {}}, flow{L, T, {}};
    std::vector<std::string> row_labels;
    for (int layer : job.layers) {
      for (std::int64_t k = 0; k < T; ++k) raw.values.push_back(means[std::size_t(layer)].at(last, k));
      for (std::int64_t k = 0; k < T; ++k) flow.values.push_back(rolled[std::size_t(layer)].at(last, k));
      row_labels.push_back(fmt::format("L{}", layer));
    }
    const int cell = labelled_cell(T);
    const auto cols = drawing::thin_labels(position_labels(tokens, 0, T), cell);
    const std::string caption = fmt::format("{}; query: last token {}", context, position_labels(tokens, last, 1)[0]);
    const std::vector<Panel> panels{
        {"last token's attention per layer (heads averaged)", "", raw, drawing::sequential_scale({&raw}), cell, cell,
         row_labels, cols},
        {"attention rollout through each layer", "A = 0.5 W + 0.5 I (rows renormalised), R_l = A_l R_(l-1)", flow,
         drawing::sequential_scale({&flow}), cell, cell, row_labels, cols}};
    const std::string stem = tag + "_rollout";
    job.add(stem, "attention flow: the last token's head-averaged attention in each layer, and its attention rollout "
                  "(Abnar & Zuidema 2020) through that layer, over the input tokens",
            job.figure(stem, panels, 0, caption));
  }

  // Per chosen layer, every query's head-averaged attention to the key at option "target".
  static void draw_target(Job& job, const std::string& tag, const std::map<int, Pattern>& patterns,
                          const std::vector<std::string>& tokens, const std::string& context) {
    const std::int64_t target = *job.opts.target, T = std::int64_t(tokens.size());
    if (target < 0 || target >= T)
      throw UsageError(fmt::format("figures: option 'target': position {} is not in the sequence of {} tokens of {}",
                                   target, T, job.run->manifest_file().string()));
    const auto& columns = job.averaged;
    const std::int64_t L = std::int64_t(job.layers.size());
    Matrix m{L, T, std::vector<double>(std::size_t(L * T), kNaN)};
    std::vector<std::string> row_labels;
    for (std::int64_t l = 0; l < L; ++l) {
      row_labels.push_back(fmt::format("L{}", job.layers[std::size_t(l)]));
      const auto it = patterns.find(job.layers[std::size_t(l)]);
      if (it == patterns.end()) continue;
      const Matrix mean = mean_matrix(it->second, columns);
      const std::int64_t col = target - mean.first_col;
      if (col < 0 || col >= mean.cols) continue;
      for (std::int64_t r = 0; r < mean.rows; ++r)
        if (mean.first_row + r < T) m.values[std::size_t(l * T + mean.first_row + r)] = mean.at(r, col);
    }
    const int cell = labelled_cell(T);
    const Panel panel{fmt::format("attention to {} (heads averaged)", position_labels(tokens, target, 1)[0]), context, m,
                      drawing::sequential_scale({&m}), cell, cell, row_labels,
                      drawing::thin_labels(position_labels(tokens, 0, T), cell)};
    const std::string stem = fmt::format("{}_attention_to_{}", tag, target);
    job.add(stem, fmt::format("per layer (rows), each query's head-averaged attention to key position {}", target),
            job.figure(stem, std::vector<Panel>{panel}));
  }

  // Autoregressive runs: per prompt token, a bar chart of the attention it gets from each generated
  // token (the query of the decode step that consumed it), averaged over the chosen heads and layers.
  static void draw_prompt_attention(Job& job, int p) {
    const auto& by_step = job.run->patterns(p);
    const std::vector<std::string> prompt = job.run->tokens(p, 0);
    const std::int64_t P = std::int64_t(prompt.size());
    const auto& columns = job.averaged;
    std::vector<std::string> generated;            // bar labels
    std::vector<std::vector<double>> to_prompt;    // per generated token, per prompt token
    for (const auto& [step, layers] : by_step) {
      if (step == 0 || (!job.opts.steps.empty() && !contains(job.opts.steps, step))) continue;
      std::vector<double> sums(std::size_t(P), 0.0);
      int counted = 0;
      for (int layer : job.layers) {
        const auto it = layers.find(layer);
        if (it == layers.end()) continue;
        const Pattern pat = job.run->load(it->second);
        const Matrix mean = mean_matrix(pat, columns);
        if (mean.rows < 1) continue;
        for (std::int64_t k = 0; k < P; ++k) {
          const std::int64_t col = k - mean.first_col;
          sums[std::size_t(k)] += col >= 0 && col < mean.cols ? mean.at(mean.rows - 1, col) : kNaN;
        }
        ++counted;
      }
      if (counted == 0) continue;
      for (double& v : sums) v /= counted;
      to_prompt.push_back(std::move(sums));
      const std::int64_t position = P + step - 1;  // the token chosen at step - 1
      generated.push_back(position_labels(job.run->tokens(p, step), position, 1)[0]);
    }
    if (to_prompt.empty()) {
      job.skip(fmt::format("p{} attention to the prompt", p), "no decode-step pattern captures of the chosen layers");
      return;
    }
    const std::string averaged = job.opts.layers.empty() ? "heads and layers averaged"
                                                          : fmt::format("heads and layers {} averaged", fmt::join(job.layers, ","));
    double hi = 0;  // one value axis for every chart, so bars compare across prompt tokens
    for (const auto& row : to_prompt)
      for (double v : row)
        if (std::isfinite(v)) hi = std::max(hi, v);
    const std::string context = job.run->describe(p);
    for (std::size_t first = 0, page = 1; first < std::size_t(P); first += kChartsPerFigure, ++page) {
      std::vector<BarChart> charts;
      for (std::size_t k = first; k < std::min(std::size_t(P), first + kChartsPerFigure); ++k) {
        BarChart::Series s{"attention", {}, {42, 120, 142}};
        for (const auto& row : to_prompt) s.values.push_back(row[k]);
        const bool last = k + 1 == std::min(std::size_t(P), first + kChartsPerFigure);
        charts.push_back({fmt::format("attention to {}", position_labels(prompt, std::int64_t(k), 1)[0]),
                          last ? fmt::format("{}; bars: generated tokens, {}", context, averaged) : "",
                          last ? generated : std::vector<std::string>(generated.size()), {s}, hi, 12, 50});
      }
      const std::string stem = page == 1 ? fmt::format("p{}_prompt_attention", p)
                                         : fmt::format("p{}_prompt_attention_{}", p, page);
      job.add(stem, fmt::format("attention to each prompt token {}-{} from every generated token ({})", first,
                                first + charts.size() - 1, averaged),
              job.figure(stem, charts, 1));
    }
  }

  // Diffusion runs: per chosen layer, the head-averaged pattern at the chosen steps (default first
  // and last) and the signed difference last minus first.
  static void draw_evolution(Job& job, int p) {
    const auto& by_step = job.run->patterns(p);
    std::vector<int> steps;
    for (const auto& [step, layers] : by_step)
      if (job.opts.steps.empty() || contains(job.opts.steps, step)) steps.push_back(step);
    if (job.opts.steps.empty() && steps.size() > 2) steps = {steps.front(), steps.back()};
    if (steps.size() < 2) {
      job.skip(fmt::format("p{} attention evolution", p), "needs patterns at two or more steps");
      return;
    }
    const auto& columns = job.averaged;
    for (int layer : job.layers) {
      std::vector<Matrix> at_step;
      for (int step : steps) {
        const auto it = by_step.at(step).find(layer);
        if (it == by_step.at(step).end()) break;
        at_step.push_back(mean_matrix(job.run->load(it->second), columns));
        if (at_step.back().rows != at_step.front().rows || at_step.back().cols != at_step.front().cols) break;
      }
      if (at_step.size() != steps.size()) {
        job.skip(fmt::format("p{} layer {} evolution", p, layer), "a chosen step lacks this layer or has another shape");
        continue;
      }
      std::vector<const Matrix*> all;
      for (const Matrix& m : at_step) all.push_back(&m);
      const drawing::Scale shared = drawing::sequential_scale(all);
      const std::int64_t T = at_step.front().cols;
      const int cell = labelled_cell(T);
      std::vector<Panel> panels;
      for (std::size_t i = 0; i < steps.size(); ++i) {
        const auto tokens = job.run->tokens(p, steps[i]);
        panels.push_back({fmt::format("layer {}, step {} (heads averaged)", layer, steps[i]), "", at_step[i], shared,
                          cell, cell,
                          drawing::thin_labels(position_labels(tokens, at_step[i].first_row, at_step[i].rows), cell),
                          drawing::thin_labels(position_labels(tokens, at_step[i].first_col, T), cell)});
      }
      const Matrix diff = drawing::difference(at_step.back(), at_step.front());
      panels.push_back({fmt::format("step {} minus step {}", steps.back(), steps.front()), "blue: less, red: more", diff,
                        drawing::signed_scale(diff), cell, cell, panels.back().row_labels, panels.back().col_labels});
      const std::string stem = fmt::format("p{}_layer{}_evolution", p, layer);
      job.add(stem, fmt::format("layer {} head-averaged pattern at steps {} and the signed difference last - first",
                                layer, fmt::join(steps, ",")),
              job.figure(stem, panels, 0, job.run->describe(p)));
    }
  }

  // RUN/reports/NAME.json with per-head records: a layer x head matrix per numeric score.
  static void draw_reports(Job& job) {
    const fs::path dir = job.run->manifest_file().parent_path() / "reports";
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) return;
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (e.path().extension() == ".json") files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const fs::path& file : files) draw_report(job, file);
  }

  // reports/logit_lens.json, per prompt: layer x position matrices of the probability the lens gives
  // the final prediction and of the lens's top-1 probability (columns: the entries in order, i.e.
  // positions, or generation steps), and the direct logit attribution of its headline entry (its
  // first pass's last position) per layer x (heads, attention bias, MLP), on a signed scale.
  static void draw_logit_lens(Job& job, const json& report, const fs::path& file) {
    const json& entries = report["entries"];
    if (!entries.is_array()) throw Error(fmt::format("{}: \"entries\" is not a list", file.string()));
    std::map<int, std::vector<const json*>> by_prompt;
    for (const json& e : entries) {
      if (!e.is_object() || !e.contains("prompt") || !e["prompt"].is_number_integer() || !e.contains("lens") ||
          !e["lens"].is_array() || e["lens"].empty())
        throw Error(fmt::format("{}: an entry lacks an integer \"prompt\" and its \"lens\"", file.string()));
      const int p = e["prompt"].get<int>();
      if (job.opts.prompts.empty() || contains(job.opts.prompts, p)) by_prompt[p].push_back(&e);
    }
    constexpr std::size_t kMaxColumns = 512;  // a wider figure would not be readable
    for (const auto& [p, list] : by_prompt) {
      const std::string what = fmt::format("report logit_lens prompt {}", p);
      const std::size_t rows = list.front()->at("lens").size(), cols = std::min(list.size(), kMaxColumns);
      if (list.size() > kMaxColumns) job.skip(fmt::format("{}: entries past the first {}", what, kMaxColumns), "more do not fit one figure");
      Matrix final_prob{std::int64_t(rows), std::int64_t(cols), std::vector<double>(rows * cols, kNaN)}, top_prob = final_prob;
      std::vector<std::string> row_labels, inputs, predictions;
      for (const json& l : list.front()->at("lens")) {
        const int layer = l.value("layer", -2);
        row_labels.push_back(layer == -1 ? "embed" : fmt::format("L{}", layer));
      }
      for (std::size_t c = 0; c < cols; ++c) {
        const json& e = *list[c];
        const json& lens = e["lens"];
        if (lens.size() != rows) throw Error(fmt::format("{}: prompt {}'s entries have lenses of different depths", file.string(), p));
        for (std::size_t r = 0; r < rows; ++r) {
          final_prob.values[r * cols + c] = finite_or_nan(lens[r].value("final_prob", json()));
          const json& top = lens[r].value("top", json::array());
          top_prob.values[r * cols + c] = top.is_array() && !top.empty() ? finite_or_nan(top[0].value("prob", json())) : kNaN;
        }
        const std::string input = e.value("input_token", json()).is_string() ? e["input_token"].get<std::string>() : "?";
        const json& final = e.value("final", json::object());
        const std::string predicted = final.is_object() && final.value("token", json()).is_string() ? final["token"].get<std::string>() : "?";
        const std::string where = e.value("phase", "") == "prefill" ? fmt::format("{}", e.value("position", 0))
                                                                    : fmt::format("s{}", e.value("step", 0));
        inputs.push_back(fmt::format("{}:{}", where, drawing::token_label(input)));
        predictions.push_back(fmt::format("{}:{}", where, drawing::token_label(predicted)));
      }
      const int cell = labelled_cell(std::int64_t(std::max(rows, cols)));
      const drawing::Scale unit{0.0, 1.0, &drawing::kViridis};
      const std::vector<Panel> panels{
          {"probability of the final prediction at each layer (columns: input tokens)", "", final_prob, unit, cell, cell,
           row_labels, drawing::thin_labels(inputs, cell)},
          {"the lens's top-1 probability (columns: the final prediction)", "", top_prob, unit, cell, cell, row_labels,
           drawing::thin_labels(predictions, cell)}};
      const std::string context = job.run->describe(p);
      const std::string stem = fmt::format("logit_lens_p{}", p);
      job.add(stem, fmt::format("logit lens of prompt {}: layer x position probabilities of reports/logit_lens.json", p),
              job.figure(stem, panels, 0, context + "; rows: layers (embed: the embeddings)"));
      draw_logit_attribution(job, list, p, context, file);
    }
  }

  static void draw_logit_attribution(Job& job, const std::vector<const json*>& list, int p, const std::string& context,
                                     const fs::path& file) {
    // The headline entry: the last position of the prompt's first pass.
    const json* chosen = list.front();
    for (const json* e : list)
      if (e->value("step", 0) == list.front()->value("step", 0) && e->value("block", -1) == list.front()->value("block", -1))
        chosen = e;
    const json& d = chosen->value("dla", json());
    if (!d.is_object()) {
      job.skip(fmt::format("report logit_lens prompt {} attribution", p), "the entry has no attribution (dla_missing says why)");
      return;
    }
    const json& heads = d.value("heads", json::array());
    const int L = int(heads.size()), H = job.run->model().n_heads;
    if (L != job.run->model().n_layers) throw Error(fmt::format("{}: an attribution of {} layers", file.string(), L));
    Matrix m{L, H + 2, std::vector<double>(std::size_t(L * (H + 2)), kNaN)};
    for (int l = 0; l < L; ++l) {
      if (!heads[size_t(l)].is_array() || int(heads[size_t(l)].size()) != H)
        throw Error(fmt::format("{}: layer {} of an attribution does not have {} heads", file.string(), l, H));
      for (int h = 0; h < H; ++h) m.values[std::size_t(l * (H + 2) + h)] = finite_or_nan(heads[size_t(l)][size_t(h)]);
      m.values[std::size_t(l * (H + 2) + H)] = item_or_nan(d.value("attn_bias", json()), size_t(l));
      m.values[std::size_t(l * (H + 2) + H + 1)] = item_or_nan(d.value("mlp", json()), size_t(l));
    }
    std::vector<std::string> rows, cols;
    for (int l = 0; l < L; ++l) rows.push_back(fmt::format("L{}", l));
    for (int h = 0; h < H; ++h) cols.push_back(fmt::format("H{}", h));
    cols.push_back("bias");
    cols.push_back("MLP");
    const json& target = d.value("target", json::object());
    const std::string token = target.is_object() && target.value("token", json()).is_string() ? target["token"].get<std::string>() : "?";
    const std::string title = fmt::format("direct logit attribution to '{}' at position {} (embeddings {:+.2f}, logit {:.2f})",
                                          drawing::token_label(token, 24), chosen->value("position", 0),
                                          finite_or_nan(d.value("embeddings", json())), finite_or_nan(d.value("logit", json())));
    const std::string stem = fmt::format("logit_lens_p{}_attribution", p);
    job.add(stem, fmt::format("prompt {}: direct logit attribution per layer x head (and attention bias, MLP)", p),
            job.figure(stem, std::vector<Panel>{Panel{title, "", m, drawing::signed_scale(m), 28, 28, rows, cols}}, 0,
                                  context + "; rows: layers, columns: heads, attention output bias, MLP"));
  }

  static void draw_report(Job& job, const fs::path& file) {
    const json report = hooklens::read_json_file(file);
    const std::string name = file.stem().string();
    if (name == "logit_lens" && report.is_object() && report.contains("entries")) draw_logit_lens(job, report, file);
    // Referenced, not copied: copying recurses, and a hostile report may nest very deep.
    static const json kNone;
    const json& heads = report.is_object() && report.contains("heads") ? report["heads"] : kNone;
    if (!heads.is_array() || heads.empty()) {
      job.skip("report " + name, "no per-head records (\"heads\")");
      return;
    }
    const int L = job.run->model().n_layers, H = job.run->model().n_heads;
    // One matrix of 28 px cells per score, four to a row: what cannot fit a figure is not allocated.
    constexpr int kCell = 28, kColumns = 4;
    if (std::int64_t(std::max(L, H)) * kCell > drawing::kMaxSide) {
      job.skip("report " + name, fmt::format("{} layers x {} heads do not fit a figure", L, H));
      return;
    }
    // A panel row is the matrix and at most ~200 px of title (wrapped), labels and gaps: as many rows as fit.
    const std::size_t max_scores = kColumns * std::size_t(std::max(1, drawing::kMaxSide / (L * kCell + 200)));
    std::size_t dropped = 0;
    std::map<std::string, Matrix> scores;  // score name -> layers x heads
    for (const json& rec : heads) {
      if (!rec.is_object() || !rec.contains("layer") || !rec.contains("head") || !rec["layer"].is_number_integer() ||
          !rec["head"].is_number_integer())
        throw Error(fmt::format("{}: a \"heads\" record lacks integer \"layer\" and \"head\"", file.string()));
      const int l = rec["layer"].get<int>(), h = rec["head"].get<int>();
      if (l < 0 || l >= L || h < 0 || h >= H)
        throw Error(fmt::format("{}: head L{}H{} is not in the model ({} layers, {} heads)", file.string(), l, h, L, H));
      for (const auto& [key, value] : rec.items()) {
        if (key == "layer" || key == "head" || !(value.is_number() || value.is_null()) || value.is_boolean()) continue;
        if (!scores.count(key) && scores.size() == max_scores) {
          ++dropped;
          continue;
        }
        auto [it, fresh] = scores.try_emplace(key, Matrix{L, H, std::vector<double>(std::size_t(L) * std::size_t(H), kNaN)});
        it->second.values[std::size_t(l * H + h)] = finite_or_nan(value);
      }
    }
    std::vector<std::string> row_labels, col_labels;
    for (int l = 0; l < L; ++l) row_labels.push_back(fmt::format("L{}", l));
    for (int h = 0; h < H; ++h) col_labels.push_back(fmt::format("H{}", h));
    std::vector<Panel> panels;
    for (const auto& [key, m] : scores) {
      bool negative = false;
      for (double v : m.values) negative = negative || v < 0;
      panels.push_back({key, "", m,
                        negative ? drawing::signed_scale(m) : drawing::sequential_scale({&m}), kCell, kCell, row_labels,
                        col_labels});
    }
    if (panels.empty()) {
      job.skip("report " + name, "its per-head records hold no numbers");
      return;
    }
    if (dropped) job.skip(fmt::format("report {}: scores past the first {}", name, max_scores), "more do not fit one figure");
    const std::string stem = "report_" + name;
    job.add(stem, fmt::format("layer x head matrices of every per-head score in reports/{}.json", name),
            job.figure(stem, panels, kColumns, fmt::format("report {}: rows layers, columns heads", name)));
  }
};

}  // namespace

HOOKLENS_DEFINE_PLUGIN(hooklens::Renderer, FiguresRenderer, "renderer", "figures", "1.0",
                       "attention figures as PNG or SVG: heatmaps, head grids, overviews, rollout, generation")

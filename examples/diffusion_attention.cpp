// diffusion_attention: the figures the MMaDA attention scripts drew, made from a hooklens run
// directory instead of a live Python session.
//
//   diffusion_attention RUN [--out DIR] [--steps first,last] [--layers all] [--pass 0] [--heads]
//
// 1. heatmap_step{S}_layer{L}_mean.png (and _head{H}.png with --heads): the attention pattern of a
//    layer at a step, query rows by key columns, with a colour bar.
// 2. evolution_layer{L}.png: the first and last chosen step side by side and their signed difference.
// 3. influence.csv / influence.json / influence.png: for every step and layer, the attention mass the
//    generated positions (P..T-1) give each prompt position, averaged over heads and query rows.
// 4. summary.json: every file written and what it shows.
//
// Heatmaps need the pattern of a whole forward pass ([1, H, T, T], or the window of it that capture
// slicing kept, placed by query_offset / key_offset): every step of a masked-diffusion run, only the
// prefill (step 0) of an autoregressive one, whose decode steps have one query row each. Exit status:
// 0 success, 1 error, 2 usage error.

#include "example_main.h"

#include <hooklens/drawing.h>
#include <hooklens/error.h>
#include <hooklens/head_matrix.h>
#include <hooklens/hook_names.h>
#include <hooklens/json_read.h>
#include <hooklens/run.h>
#include <hooklens/text.h>

#include <ATen/core/Tensor.h>
#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace drawing = hooklens::drawing;
using hooklens::Error;
using hooklens::UsageError;
using nlohmann::json;

using drawing::cell_size;
using drawing::difference;
using drawing::dump;
using drawing::head_matrix;
using drawing::Matrix;
using drawing::kMaxSide;
using drawing::Panel;
using drawing::Scale;
using drawing::sequential_scale;
using drawing::signed_scale;
using drawing::write_figure;
using hooklens::write_text_file;

// ---- the run -------------------------------------------------------------------------------------

struct Options {
  fs::path run, out;
  std::string steps = "first,last", layers = "all";
  int pass = 0, prompt = 0, cell = 0;
  bool heads = false;
};

// One blocks.L.attn.hook_pattern capture: [1, heads, queries, keys], whose first query row and key
// column are at absolute positions query_offset and key_offset (non-zero when capture slicing cut it).
struct PatternCapture {
  std::size_t index;
  std::string key, phase;
  int step, block, layer;
  std::int64_t query_offset, key_offset, heads, queries, keys;
  // A forward pass over the whole sequence (prefill, denoising step), perhaps sliced to a window; a
  // decode step sees one query row and is not drawn.
  bool whole_pass() const { return phase != "decode"; }
  auto window() const { return std::tuple{query_offset, key_offset, queries, keys}; }
  std::int64_t positions() const { return std::max(query_offset + queries, key_offset + keys); }
};

struct RunView {
  fs::path manifest_file;
  hooklens::GenerationMode mode = hooklens::GenerationMode::none;
  bool diffusion = false;
  std::int64_t prompt_length = 0;
  std::vector<std::string> tokens;         // the prompt's token strings ("" where the run has none)
  std::vector<std::int64_t> head_numbers;  // the model's number of each captured head (empty: all heads)
  std::vector<PatternCapture> patterns;    // of the chosen prompt and pass, in manifest order
};

// RunReader (RunCheck::consistent) checked the entry's fields, offsets and heads; this adds what
// this program needs of a pattern.
PatternCapture read_pattern_entry(const hooklens::CaptureEntry& entry, std::size_t index, const fs::path& manifest) {
  const std::vector<std::int64_t>& shape = entry.shape;
  if (shape.size() != 4 || shape[0] != 1 || shape[1] < 1 || shape[2] < 1 || shape[3] < 1)
    throw Error(fmt::format("{}: capture {} ('{}') has shape {}, not an attention pattern [1, heads, queries, keys]",
                            manifest.string(), index, entry.key, json(shape).dump()));
  const hooklens::CaptureContext& c = entry.context;
  return {index,         entry.key,      hooklens::phase_name(c.phase), c.step,  c.block, c.layer,
          c.query_offset, c.key_offset, shape[1],                      shape[2], shape[3]};
}

// The hook_pattern captures of one prompt and pass. Refuses a run without any, naming what it has.
std::vector<PatternCapture> select_patterns(const hooklens::RunReader& run, const Options& o,
                                            const fs::path& manifest) {
  std::set<std::int64_t> prompts, passes;
  std::vector<PatternCapture> patterns;
  for (std::size_t i = 0; i < run.capture_count(); ++i) {
    const hooklens::CaptureEntry& entry = run.entry(i);
    if (!hooklens::hook_names::layer_of(entry.hook, hooklens::hook_names::pattern)) continue;
    const std::int64_t prompt = entry.context.prompt, pass = entry.context.pass;
    prompts.insert(prompt);
    if (prompt != o.prompt) continue;
    passes.insert(pass);
    if (pass == o.pass) patterns.push_back(read_pattern_entry(entry, i, manifest));
  }
  if (prompts.empty())
    throw Error(fmt::format("{}: the run has no hook_pattern captures (capture 'blocks.*.attn.hook_pattern')",
                            manifest.string()));
  if (passes.empty())
    throw UsageError(fmt::format("--prompt {}: {} has hook_pattern captures only for prompts {}", o.prompt,
                                 manifest.string(), fmt::join(prompts, ",")));
  if (patterns.empty())
    throw UsageError(fmt::format("--pass {}: {} has hook_pattern captures of prompt {} only for pass {}", o.pass,
                                 manifest.string(), o.prompt, fmt::join(passes, ",")));
  return patterns;
}

// The model's head numbers of the captured heads: the manifest's capture.heads when the run kept only
// some heads; empty when it kept them all.
std::vector<std::int64_t> captured_heads(const json& manifest, const fs::path& file) {
  if (!manifest.contains("capture") || !manifest["capture"].is_object()) return {};
  const json heads = manifest["capture"].value("heads", json::array());
  const auto is_number = [](const json& h) { return h.is_number_integer(); };
  if (!heads.is_array() || !std::all_of(heads.begin(), heads.end(), is_number))
    throw Error(fmt::format("{}: \"capture\": \"heads\" is not a list of head numbers", file.string()));
  return heads.get<std::vector<std::int64_t>>();
}

RunView read_run(const hooklens::RunReader& run, const Options& o) {
  RunView view;
  view.manifest_file = run.directory() / "manifest.json";
  const json& m = run.manifest();
  const hooklens::RunGeneration& generation = run.generation();
  view.mode = generation.mode;
  view.diffusion = view.mode == hooklens::GenerationMode::masked_diffusion;
  const std::vector<hooklens::RunPrompt>& prompts = run.prompts();
  if (o.prompt >= std::int64_t(prompts.size()))
    throw UsageError(fmt::format("--prompt {}: {} lists {} prompts", o.prompt, view.manifest_file.string(), prompts.size()));
  const hooklens::RunPrompt& prompt = prompts[std::size_t(o.prompt)];
  view.prompt_length = generation.prompt_length > 0 ? generation.prompt_length : std::int64_t(prompt.ids.size());
  if (view.prompt_length <= 0)
    throw Error(fmt::format("{}: prompt {} has no tokens (no 'ids', and no positive generation 'prompt_length')",
                            view.manifest_file.string(), o.prompt));
  view.patterns = select_patterns(run, o, view.manifest_file);
  std::int64_t longest = 0;
  for (const auto& p : view.patterns) longest = std::max(longest, p.positions());
  if (view.prompt_length > longest)
    throw Error(fmt::format("{}: the prompt is {} tokens long, but the attention patterns span only {} positions",
                            view.manifest_file.string(), view.prompt_length, longest));
  view.head_numbers = captured_heads(m, view.manifest_file);
  for (std::int64_t i = 0; i < view.prompt_length; ++i)
    view.tokens.push_back(i < std::int64_t(prompt.tokens.size()) ? prompt.tokens[std::size_t(i)] : "");
  return view;
}

// ---- what to draw --------------------------------------------------------------------------------

struct Plan {
  std::vector<int> steps;   // heatmaps (and the evolution's first and last)
  std::vector<int> layers;  // heatmaps, evolution and influence
  std::map<std::pair<int, int>, const PatternCapture*> drawable;  // (step, layer) -> a whole pass's pattern
  std::int64_t sequence_length = 0;                               // positions the patterns span
};

std::string join_ints(const std::set<int>& values) { return fmt::format("{}", fmt::join(values, ",")); }

int parse_int(const std::string& option, const std::string& item) {
  int value = -1;
  const auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), value);
  if (item.empty() || ec != std::errc() || end != item.data() + item.size() || value < 0)
    throw UsageError(fmt::format("{}: '{}' is not a non-negative number", option, item));
  return value;
}

// "first", "last", "all" or step numbers, each of which must have whole-pass patterns.
std::vector<int> parse_steps(const std::string& spec, const std::set<int>& available, const RunView& view) {
  std::set<int> chosen;
  for (const auto& item : hooklens::split_list(spec)) {
    if (item == "all") chosen.insert(available.begin(), available.end());
    else if (item == "first") chosen.insert(*available.begin());
    else if (item == "last") chosen.insert(*available.rbegin());
    else if (const int step = parse_int("--steps", item); available.count(step)) chosen.insert(step);
    else
      throw UsageError(fmt::format(
          "--steps {}: {} has no attention pattern of a whole forward pass at step {} (steps with one: {}){}", spec,
          view.manifest_file.string(), step, join_ints(available),
          view.mode == hooklens::GenerationMode::autoregressive ? "; an autoregressive run has them only at the prefill, step 0" : ""));
  }
  return {chosen.begin(), chosen.end()};
}

std::vector<int> parse_layers(const std::string& spec, const std::set<int>& available, const RunView& view) {
  if (spec == "all") return {available.begin(), available.end()};
  std::set<int> chosen;
  for (const auto& item : hooklens::split_list(spec)) {
    const int layer = parse_int("--layers", item);
    if (!available.count(layer))
      throw UsageError(fmt::format("--layers {}: {} has no attention patterns of layer {} (layers: {})", spec,
                                   view.manifest_file.string(), layer, join_ints(available)));
    chosen.insert(layer);
  }
  return {chosen.begin(), chosen.end()};
}

Plan make_plan(const RunView& view, const Options& o) {
  Plan plan;
  std::set<int> steps, layers;
  std::int64_t side = 0;  // cells along the longest side of a heatmap
  for (const auto& p : view.patterns) {
    layers.insert(p.layer);
    if (!p.whole_pass()) continue;
    if (!plan.drawable.emplace(std::pair{p.step, p.layer}, &p).second)
      throw Error(fmt::format("{}: two attention patterns of layer {} at step {} (prompt {}, pass {}); cannot tell "
                              "which to draw",
                              view.manifest_file.string(), p.layer, p.step, o.prompt, o.pass));
    steps.insert(p.step);
    plan.sequence_length = std::max(plan.sequence_length, p.positions());
    side = std::max(side, std::max(p.queries, p.keys));
  }
  if (steps.empty())
    throw Error(fmt::format("{}: no attention pattern of a whole forward pass (a masked-diffusion step or an "
                            "autoregressive prefill) for prompt {}, pass {}",
                            view.manifest_file.string(), o.prompt, o.pass));
  plan.steps = parse_steps(o.steps, steps, view);
  plan.layers = parse_layers(o.layers, layers, view);
  for (int step : plan.steps)
    for (int layer : plan.layers)
      if (!plan.drawable.count({step, layer}))
        throw UsageError(fmt::format("{}: layer {} has no attention pattern of a whole forward pass at step {}",
                                     view.manifest_file.string(), layer, step));
  if (const std::int64_t pixels = cell_size(side, o.cell) * side; pixels > kMaxSide)
    throw UsageError(fmt::format("--cell {}: a {}-token heatmap would be {} pixels wide (at most {})", o.cell, side,
                                 pixels, kMaxSide));
  return plan;
}

// ---- outputs -------------------------------------------------------------------------------------

// What the run calls a step, for titles.
std::string step_name(const PatternCapture& p, const RunView& view) {
  if (view.diffusion) return fmt::format("step {} (block {})", p.step, p.block);
  return p.step == 0 ? "step 0 (prefill)" : fmt::format("step {}", p.step);
}

std::string heatmap_caption(const Matrix& m, std::int64_t prompt_length) {
  return fmt::format("rows: queries {}-{}, cols: keys {}-{} (prompt 0-{})", m.first_row, m.first_row + m.rows - 1,
                     m.first_col, m.first_col + m.cols - 1, prompt_length - 1);
}

// One cell size for both sides, so a sliced window keeps its aspect.
int square_cell(const Matrix& m, const Options& o) { return cell_size(std::max(m.rows, m.cols), o.cell); }

struct Outputs {
  fs::path dir;
  json files = json::array();
  std::vector<std::string> notes;

  void add(const std::string& name, json entry) {
    entry["file"] = name;
    files.push_back(std::move(entry));
  }
  void note(const std::string& text) {
    notes.push_back(text);
    std::cout << "note: " << text << "\n";
  }
};

constexpr const char* kSummaryFormat = "hooklens-diffusion-attention";

// Figures an earlier invocation listed in its summary.json are removed, so the directory and the new
// summary agree. Only our own summaries and plain file names are trusted.
void remove_previous_outputs(const fs::path& dir) {
  json old;
  try {
    old = hooklens::read_json_file(dir / "summary.json");
  } catch (const Error&) {  // none yet, or not ours to trust
    return;
  }
  if (!old.is_object() || old.value("format", "") != kSummaryFormat || !old.contains("files") ||
      !old["files"].is_array())
    return;
  for (const auto& f : old["files"]) {
    if (!f.is_object() || !f.contains("file") || !f["file"].is_string()) continue;
    const std::string name = f["file"];
    std::error_code ec;
    if (!name.empty() && fs::path(name).filename().string() == name) fs::remove(dir / name, ec);
  }
}

void write_heatmaps(const at::Tensor& pattern, const PatternCapture& p, const RunView& view, const Options& o,
                    Outputs& out, const Matrix& mean) {
  const std::string where = fmt::format("layer {}, {}", p.layer, step_name(p, view));
  auto write = [&](const Matrix& m, const std::string& suffix, const json& heads, const std::string& which) {
    const std::string name = fmt::format("heatmap_step{}_layer{}_{}.png", p.step, p.layer, suffix);
    const int cell = square_cell(m, o);
    const Panel panel{where + ": " + which, heatmap_caption(m, view.prompt_length), m, sequential_scale({&m}), cell,
                      cell};
    json entry = write_figure(out.dir / name, {panel});
    entry.update({{"kind", "heatmap"}, {"layer", p.layer}, {"step", p.step}, {"block", p.block}, {"heads", heads},
                  {"shows", fmt::format("attention pattern of {}, {} (rows: query positions, columns: key positions)",
                                        where, which)}});
    out.add(name, std::move(entry));
  };
  // File names and titles use the model's head numbers, also when the run kept only some heads.
  const bool all_heads = std::int64_t(view.head_numbers.size()) != p.heads;
  write(mean, "mean", "mean",
        all_heads ? fmt::format("mean of {} heads", p.heads)
                  : fmt::format("mean of heads {}", fmt::join(view.head_numbers, ",")));
  if (!o.heads) return;
  for (std::int64_t h = 0; h < p.heads; ++h) {
    const std::int64_t number = all_heads ? h : view.head_numbers[std::size_t(h)];
    write(head_matrix(pattern, h, p.query_offset, p.key_offset), fmt::format("head{}", number), number,
          fmt::format("head {}", number));
  }
}

void write_evolution(int layer, const PatternCapture& a, const Matrix& first, const PatternCapture& b,
                     const Matrix& last, const RunView& view, const Options& o, Outputs& out) {
  if (a.window() != b.window()) {
    out.note(fmt::format("layer {}: steps {} and {} captured different query/key windows; no evolution figure",
                         layer, a.step, b.step));
    return;
  }
  const Scale shared = sequential_scale({&first, &last});
  const Matrix diff = difference(last, first);
  const int cw = square_cell(first, o), ch = cw;
  const std::string caption = heatmap_caption(first, view.prompt_length);
  const std::vector<Panel> panels{
      {fmt::format("layer {}, {}", layer, step_name(a, view)), caption, first, shared, cw, ch},
      {fmt::format("layer {}, {}", layer, step_name(b, view)), caption, last, shared, cw, ch},
      {fmt::format("step {} - step {}", b.step, a.step), caption, diff, signed_scale(diff), cw, ch}};
  const std::string name = fmt::format("evolution_layer{}.png", layer);
  json entry = write_figure(out.dir / name, panels);
  entry.update({{"kind", "evolution"}, {"layer", layer}, {"steps", {a.step, b.step}}, {"heads", "mean"},
                {"shows", fmt::format("head-averaged attention of layer {} at step {} and at step {} (shared scale), "
                                      "and their signed difference (step {} minus step {}; red: more attention later)",
                                      layer, a.step, b.step, b.step, a.step)}});
  out.add(name, std::move(entry));
}

// ---- prompt-token influence ----------------------------------------------------------------------

struct Influence {
  int step, block, layer;
  std::int64_t first_query, last_query;  // the generated positions averaged over (all those captured)
  std::vector<double> mass;              // per prompt position
};

bool has_generated_rows(const PatternCapture& p, std::int64_t prompt_length) {
  return p.query_offset + p.queries > prompt_length;
}
bool keys_cover_prompt(const PatternCapture& p, std::int64_t prompt_length) {
  return p.key_offset == 0 && p.keys >= prompt_length;
}

// Mean over heads and over the query rows at generated positions (>= P) of the attention each
// prompt key receives. The caller checked has_generated_rows and keys_cover_prompt.
Influence influence_of(const at::Tensor& pattern, const PatternCapture& p, std::int64_t prompt_length) {
  const std::int64_t first_row = std::max<std::int64_t>(prompt_length - p.query_offset, 0);
  Influence inf{p.step, p.block, p.layer, p.query_offset + first_row, p.query_offset + p.queries - 1,
                std::vector<double>(std::size_t(prompt_length), 0.0)};
  const float* data = pattern.data_ptr<float>();
  for (std::int64_t h = 0; h < p.heads; ++h)
    for (std::int64_t r = first_row; r < p.queries; ++r)
      for (std::int64_t k = 0; k < prompt_length; ++k)
        inf.mass[std::size_t(k)] += data[(h * p.queries + r) * p.keys + k];
  for (auto& m : inf.mass) m /= double(p.heads * (p.queries - first_row));
  return inf;
}

std::string csv_field(const std::string& s) {
  std::string quoted = "\"";
  for (char c : s) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

void write_influence(const std::vector<Influence>& rows, const RunView& view, const Options& o, const Plan& plan,
                     Outputs& out) {
  const std::int64_t P = view.prompt_length;
  std::string csv = "step,layer,prompt_pos,token,mass\n";
  json entries = json::array();
  std::map<int, std::pair<int, std::vector<double>>> by_step;  // step -> (block, sum over layers)
  std::map<int, int> layer_count;
  for (const auto& r : rows) {
    for (std::int64_t j = 0; j < P; ++j)
      csv += fmt::format("{},{},{},{},{:.9g}\n", r.step, r.layer, j, csv_field(view.tokens[std::size_t(j)]),
                         r.mass[std::size_t(j)]);
    entries.push_back({{"step", r.step}, {"block", r.block}, {"layer", r.layer},
                       {"query_positions", {r.first_query, r.last_query}}, {"mass", r.mass}});
    auto& [block, sum] = by_step.try_emplace(r.step, r.block, std::vector<double>(std::size_t(P), 0.0)).first->second;
    for (std::int64_t j = 0; j < P; ++j) sum[std::size_t(j)] += r.mass[std::size_t(j)];
    ++layer_count[r.step];
  }
  Matrix mean{std::int64_t(by_step.size()), P, {}};
  json layer_mean = json::array(), row_steps = json::array();
  for (auto& [step, block_sum] : by_step) {
    for (auto& v : block_sum.second) v /= layer_count[step];
    mean.values.insert(mean.values.end(), block_sum.second.begin(), block_sum.second.end());
    layer_mean.push_back({{"step", step}, {"block", block_sum.first}, {"mass", block_sum.second}});
    row_steps.push_back(step);
  }
  const std::string definition =
      "mass[j] = mean over heads and over the captured query rows at generated positions (P..T-1) of the "
      "attention weight on prompt position j";
  write_text_file(out.dir / "influence.csv", csv);
  out.add("influence.csv", {{"kind", "influence_table"}, {"layers", plan.layers},
                            {"heads", "mean"},
                            {"shows", definition + "; one row per step, layer and prompt position"}});
  write_text_file(out.dir / "influence.json", dump({{"prompt", o.prompt}, {"pass", o.pass}, {"prompt_length", P},
                                               {"tokens", view.tokens}, {"definition", definition},
                                               {"entries", entries}, {"layer_mean", layer_mean}}));
  out.add("influence.json", {{"kind", "influence_table"}, {"layers", plan.layers}, {"heads", "mean"},
                             {"shows", definition + "; per step and layer ('entries') and averaged over layers "
                                                    "('layer_mean')"}});
  const std::string caption = fmt::format("rows: steps {}-{}, cols: prompt tokens 0-{}", by_step.begin()->first,
                                          by_step.rbegin()->first, P - 1);
  const Panel panel{"generated -> prompt attention, mean of layers", caption, mean, sequential_scale({&mean}),
                    cell_size(P, 0), cell_size(mean.rows, 0)};  // --cell is for the T x T heatmaps
  json entry = write_figure(out.dir / "influence.png", {panel});
  entry.update({{"kind", "influence"}, {"heads", "mean"}, {"layers", plan.layers}, {"row_steps", row_steps},
                {"shows", "attention mass from the generated positions to each prompt position (columns), per step "
                          "(rows, in 'row_steps' order), averaged over heads and layers"}});
  out.add("influence.png", std::move(entry));
}

// ---- the program ---------------------------------------------------------------------------------

void run(const Options& o) {
  hooklens::RunReader reader(o.run, /*allow_incomplete=*/false, hooklens::RunCheck::consistent);
  const RunView view = read_run(reader, o);
  const Plan plan = make_plan(view, o);

  Outputs out;
  out.dir = o.out.empty() ? o.run / "figures" / "diffusion" : o.out;
  fs::create_directories(out.dir);
  remove_previous_outputs(out.dir);

  const std::set<int> layers(plan.layers.begin(), plan.layers.end()), steps(plan.steps.begin(), plan.steps.end());
  const int first = plan.steps.front(), last = plan.steps.back();
  std::map<std::pair<int, int>, Matrix> ends;  // (step, layer) -> mean, for the evolution figures
  std::vector<Influence> influence;
  std::size_t prompt_not_covered = 0;  // captures with generated rows whose keys miss part of the prompt
  for (const auto& p : view.patterns) {  // manifest order: each shard is read once
    if (!layers.count(p.layer)) continue;
    const bool heatmap = p.whole_pass() && steps.count(p.step);
    const bool generated = has_generated_rows(p, view.prompt_length);
    const bool influences = generated && keys_cover_prompt(p, view.prompt_length);
    prompt_not_covered += generated && !influences;
    if (!heatmap && !influences) continue;
    const at::Tensor pattern = reader.load(p.index).to(at::kFloat).contiguous();
    if (!std::all_of(pattern.data_ptr<float>(), pattern.data_ptr<float>() + pattern.numel(),
                     [](float v) { return std::isfinite(v); }))
      throw Error(fmt::format("{}: capture '{}' holds NaN or infinite values", view.manifest_file.string(), p.key));
    if (heatmap) {
      Matrix mean = head_matrix(pattern, -1, p.query_offset, p.key_offset);
      write_heatmaps(pattern, p, view, o, out, mean);
      if (p.step == first || p.step == last) ends[{p.step, p.layer}] = std::move(mean);
    }
    if (influences) influence.push_back(influence_of(pattern, p, view.prompt_length));
  }

  if (first == last)
    out.note(view.diffusion ? fmt::format("evolution needs two steps; --steps chose only step {}", first)
                            : fmt::format("evolution across steps needs a masked-diffusion run: this '{}' run has "
                                          "whole-pass attention patterns only at step {}",
                                          hooklens::generation_mode_name(view.mode), first));
  else
    for (int layer : plan.layers)
      write_evolution(layer, *plan.drawable.at({first, layer}), ends.at({first, layer}),
                      *plan.drawable.at({last, layer}), ends.at({last, layer}), view, o, out);
  if (prompt_not_covered > 0)
    out.note(fmt::format("{} captures attend from generated positions but their keys do not cover the whole prompt "
                         "(0-{}): they are left out of the influence tables",
                         prompt_not_covered, view.prompt_length - 1));
  if (influence.empty())
    out.note("no captured attention from generated positions to the whole prompt; no influence files");
  else
    write_influence(influence, view, o, plan, out);

  write_text_file(out.dir / "summary.json",
             dump({{"format", kSummaryFormat}, {"run", o.run.string()}, {"mode", hooklens::generation_mode_name(view.mode)},
                   {"prompt", o.prompt}, {"pass", o.pass}, {"prompt_length", view.prompt_length},
                   {"sequence_length", plan.sequence_length}, {"steps", plan.steps}, {"layers", plan.layers},
                   {"files", out.files}, {"notes", out.notes}}));
  std::cout << fmt::format("wrote {} files to {} (summary.json says what each shows)\n", out.files.size() + 1,
                           out.dir.string());
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"Attention figures from a hooklens run directory, as the MMaDA attention scripts drew them: "
               "per-layer heatmaps at chosen steps, first-vs-last-step evolution, and the attention the generated "
               "positions give each prompt token (influence.csv/json/png). summary.json lists every file."};
  app.name("diffusion_attention");
  std::string run, out;
  app.add_option("RUN", run, "run directory (manifest.json + captures-*.safetensors)")->required();
  app.add_option("--out", out, "output directory (default RUN/figures/diffusion)");
  app.add_option("--steps", o.steps,
                 "steps to draw: comma-separated numbers, 'first', 'last' or 'all' (e.g. 0,last); the evolution "
                 "figure compares the first and last of them")
      ->capture_default_str();
  app.add_option("--layers", o.layers, "layers: 'all' or comma-separated numbers (e.g. 0,2)")->capture_default_str();
  app.add_option("--pass", o.pass, "0: conditional pass; 1: unconditional classifier-free-guidance pass")
      ->capture_default_str();
  app.add_option("--prompt", o.prompt, "prompt index in the run")->capture_default_str();
  app.add_flag("--heads", o.heads, "also draw every head's pattern");
  app.add_option("--cell", o.cell, "pixels per heatmap cell (default: 512 / sequence length, 1..24)");
  app.footer("Exit status: 0 success, 1 error (bad or incomplete run), 2 usage error.");
  return run_example(app, argc, argv, [&] {
    if (o.pass < 0 || o.prompt < 0 || o.cell < 0) throw UsageError("--pass, --prompt and --cell must not be negative");
    o.run = run;
    o.out = out;
    ::run(o);
  });
}

// analyze_attention: what the researchers' from-scratch `analyze_attention` script showed, for any
// model hooklens can open (a TorchScript file needs no change: its softmaxes feeding a matmul are the
// attention patterns).
//
//   analyze_attention [--model FILE.pt --tokenizer DIR] [--prompt TEXT] [--out DIR] [--layers all] [--top 3]
//
// Without --model it first makes a small byte-level GPT with examples/make_example_model.py (trained
// for a few seconds, so its heads attend in recognisable ways) into OUT/model, and reuses it on later
// runs with the same --train-steps. One forward pass over the prompt captures every
// blocks.{L}.attn.hook_pattern; OUT then holds:
//   heatmap_layer{L}.png   head-averaged pattern, token labels on both axes, colour bar
//   heads_layer{L}.png     every head of the layer, titled L{l}H{h}, on one shared scale
//   top_attended.txt/json  per layer and query token the K most attended keys (head mean), per head
//                          each query's most attended key, and what kind of head each head looks like
//   attention_flow.png/json  attention rollout (Abnar & Zuidema 2020) across all layers, beside each
//                          layer's own attention, for the last token
//   summary.json           model, prompt, tokens, and every file with what it shows
// Exit status: 0 success, 1 error, 2 usage error.

#include "example_main.h"

#include <hooklens/drawing.h>
#include <hooklens/head_matrix.h>
#include <hooklens/error.h>
#include <hooklens/hook_names.h>
#include <hooklens/json_read.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>
#include <hooklens/text.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <vector>

extern char** environ;

namespace {

namespace fs = std::filesystem;
namespace drawing = hooklens::drawing;
using drawing::Matrix;
using drawing::Panel;
using hooklens::Error;
using hooklens::UsageError;
using nlohmann::json;

constexpr const char* kSummaryFormat = "hooklens-analyze-attention";
constexpr std::int64_t kMaxTokens = 256;  // beyond this the labelled figures are unreadable

struct Options {
  fs::path model, tokenizer, out = "analyze_attention_out";
  std::string prompt = "The cat sat on the mat. The dog slept under the table, and the cat watched the dog.";
  std::string layers = "all";
  int top = 3;
  int train_steps = 300;  // as make_example_model.py's default
  std::string python = "/usr/bin/python3";
};

// ---- making the example model --------------------------------------------------------------------

// The installed script (../share/hooklens/examples beside the binary) first, else the source tree's.
fs::path find_script() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  const fs::path installed =
      exe.parent_path().parent_path() / HOOKLENS_INSTALL_DATADIR / "hooklens" / "examples" / "make_example_model.py";
  if (!ec && fs::is_regular_file(installed, ec)) return installed;
  const fs::path source = HOOKLENS_EXAMPLE_MODEL_SCRIPT;
  if (fs::is_regular_file(source, ec)) return source;
  throw Error(fmt::format("make_example_model.py: not found at {} nor {}; pass --model FILE.pt --tokenizer DIR",
                          installed.string(), source.string()));
}

// Runs argv[0] with our stdout for both its stdout and stderr (our stderr keeps one error line);
// returns its exit status, 128 + signal if it was killed.
int run_process(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = 0;
  const int spawned = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawned != 0) throw Error(fmt::format("{}: cannot start it: {}", args[0], std::strerror(spawned)));
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) throw Error(fmt::format("{}: lost track of the process", args[0]));
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// What make_example_model.py wrote about the model in `dir` (example_model.json), or null.
json example_model_info(const fs::path& dir) {
  try {
    json made = hooklens::read_json_file(dir / "example_model.json");
    return made.is_object() && made.value("format", "") == "hooklens-example-model" ? made : json();
  } catch (const Error&) {  // not made yet, or damaged: made again
    return json();
  }
}

// The model in `dir` if an earlier run made it with the same number of training steps.
bool example_model_ready(const fs::path& dir, int train_steps) {
  const json made = example_model_info(dir);
  return !made.is_null() && made.value("train_steps", -1) == train_steps && fs::is_regular_file(dir / "model.pt");
}

// Makes (or reuses) OUT/model/model.pt with its tokenizer files; returns the directory.
fs::path make_example_model(const Options& o) {
  const fs::path dir = o.out / "model";
  if (example_model_ready(dir, o.train_steps)) {
    std::cout << fmt::format("using the example model already in {} (delete it to make a new one)\n", dir.string());
    return dir;
  }
  const fs::path script = find_script();
  std::error_code ec;
  if (!fs::exists(o.python, ec))
    throw Error(fmt::format("{}: not found, so the example model cannot be made; pass --model FILE.pt --tokenizer "
                            "DIR (or --python with an interpreter that has torch)",
                            o.python));
  std::cout << fmt::format("making the example model in {} with {}\n", dir.string(), script.string()) << std::flush;
  const int status = run_process({o.python, script.string(), dir.string(), "--train-steps",
                                  std::to_string(o.train_steps)});
  if (status == 3)
    throw Error(fmt::format("{}: cannot import torch, so the example model cannot be made; install python3-torch or "
                            "pass --model FILE.pt --tokenizer DIR",
                            o.python));
  if (status != 0 || !example_model_ready(dir, o.train_steps))
    throw Error(fmt::format("{}: failed (exit status {}) making {}; its output is above", script.string(), status,
                            (dir / "model.pt").string()));
  return dir;
}

// ---- loading and running -------------------------------------------------------------------------

bool has_hf_tokenizer(const fs::path& dir) {
  std::error_code ec;
  return fs::is_regular_file(dir / "vocab.json", ec) || fs::is_regular_file(dir / "tokenizer.json", ec);
}

std::shared_ptr<hooklens::Model> load_model(const fs::path& file, const fs::path& tokenizer, std::string* adapter) {
  std::error_code ec;
  if (!fs::exists(file, ec)) throw Error(fmt::format("{}: no such model file or directory", file.string()));
  hooklens::LoadOptions options;
  options.tokenizer = tokenizer;
  // A TorchScript file names no tokenizer: take the one beside it, as make_example_model.py writes it.
  if (options.tokenizer.empty() && fs::is_regular_file(file, ec) && has_hf_tokenizer(file.parent_path()))
    options.tokenizer = file.parent_path();
  auto model = hooklens::open_model(hooklens::PluginRegistry(), file, "", options, adapter);
  if (!model->tokenizer())
    throw UsageError(fmt::format("{}: the model has no tokenizer; pass --tokenizer DIR (vocab.json + merges.txt, or "
                                 "tokenizer.json)",
                                 file.string()));
  return model;
}

std::vector<int> split_layers(const std::string& spec) {
  std::vector<int> layers;
  for (const std::string& item : hooklens::split_list(spec)) {
    int value = -1;
    const auto [end, err] = std::from_chars(item.data(), item.data() + item.size(), value);
    if (item.empty() || err != std::errc() || end != item.data() + item.size() || value < 0)
      throw UsageError(fmt::format("--layers {}: '{}' is not a layer number (use 'all' or e.g. 0,2)", spec, item));
    layers.push_back(value);
  }
  return layers;
}

// The layers with an attention pattern, in order; throws Error naming the model when there are none.
std::vector<int> pattern_layers(const hooklens::Model& model) {
  std::set<int> layers;
  for (const auto& p : model.hook_points())
    if (hooklens::hook_names::layer_of(p.name, hooklens::hook_names::pattern) && p.layer >= 0) layers.insert(p.layer);
  if (layers.empty())
    throw Error(fmt::format("{}: the model exposes no attention patterns (blocks.*.attn.hook_pattern)",
                            model.info().path));
  return {layers.begin(), layers.end()};
}

std::vector<int> choose_layers(const std::string& spec, const std::vector<int>& available, const fs::path& model) {
  if (spec == "all") return available;
  std::set<int> chosen;
  for (int layer : split_layers(spec)) {
    if (!std::count(available.begin(), available.end(), layer))
      throw UsageError(fmt::format("--layers {}: {} has no attention pattern in layer {} (layers: {})", spec,
                                   model.string(), layer, fmt::join(available, ",")));
    chosen.insert(layer);
  }
  return {chosen.begin(), chosen.end()};
}

struct Prompt {
  std::vector<std::int64_t> ids;
  std::vector<std::string> tokens;  // decoded text of each token
  std::vector<std::string> labels;  // "i:token" in ASCII, for the figures
};

// `example` (example_model.json, or null) knows the example model's context, which TorchScript hides.
Prompt encode_prompt(const hooklens::Model& model, const std::string& text, const json& example) {
  const hooklens::Tokenizer& tok = *model.tokenizer();
  Prompt p;
  p.ids = tok.encode(text);
  if (p.ids.empty()) throw UsageError("--prompt: the prompt is empty (it encodes to no tokens)");
  const std::int64_t context = example.is_null() ? model.info().n_ctx : example.value("n_ctx", model.info().n_ctx);
  const std::int64_t limit = std::min(kMaxTokens, context);
  if (std::int64_t(p.ids.size()) > limit)
    throw UsageError(fmt::format("--prompt: {} tokens, at most {} ({}'s context, or what the figures can label)",
                                 p.ids.size(), limit, model.info().path));
  for (std::size_t i = 0; i < p.ids.size(); ++i) {
    p.tokens.push_back(tok.token_string(p.ids[i]));
    p.labels.push_back(fmt::format("{}:{}", i, drawing::token_label(p.tokens.back())));
  }
  return p;
}

// One forward pass; returns every layer's pattern as contiguous float [1, heads, T, T].
std::map<int, at::Tensor> capture_patterns(hooklens::Model& model, const Prompt& prompt) {
  std::map<int, at::Tensor> patterns;
  hooklens::HookFilter filter;
  filter.names = {hooklens::hook_names::every_layer(hooklens::hook_names::pattern)};
  hooklens::HookSet hooks;
  hooks.add(filter, [&](std::string_view, const hooklens::CaptureContext& ctx, at::Tensor& t) {
    patterns[ctx.layer] = t.to(at::kFloat).contiguous();  // the hook may keep it: adapters never modify it later
  });
  std::vector<std::int64_t> ids = prompt.ids;
  const at::Tensor batch = at::from_blob(ids.data(), {1, std::int64_t(ids.size())}, at::kLong).clone();
  model.forward(batch, hooks, hooklens::CaptureContext{}, nullptr, hooklens::Logits::none);
  const std::int64_t T = std::int64_t(ids.size());
  for (const auto& [layer, p] : patterns) {
    if (p.dim() != 4 || p.size(0) != 1 || p.size(2) != T || p.size(3) != T)
      throw Error(fmt::format("{}: layer {}'s attention pattern has shape [{}], expected [1, heads, {}, {}]",
                              model.info().path, layer, fmt::join(p.sizes(), ", "), T, T));
    const float* d = p.data_ptr<float>();
    if (!std::all_of(d, d + p.numel(), [](float v) { return std::isfinite(v); }))
      throw Error(fmt::format("{}: layer {}'s attention pattern holds NaN or infinite values", model.info().path,
                              layer));
  }
  return patterns;
}

// ---- analysis ------------------------------------------------------------------------------------

// Keys by descending weight (the lower position first among equals), at most k of them.
std::vector<std::int64_t> top_keys(const Matrix& m, std::int64_t row, int k) {
  std::vector<std::int64_t> keys(std::size_t(m.cols));
  std::iota(keys.begin(), keys.end(), 0);
  const std::size_t n = std::min<std::size_t>(std::size_t(k), keys.size());
  std::partial_sort(keys.begin(), keys.begin() + std::ptrdiff_t(n), keys.end(), [&](std::int64_t a, std::int64_t b) {
    return m.at(row, a) > m.at(row, b) || (m.at(row, a) == m.at(row, b) && a < b);
  });
  keys.resize(n);
  return keys;
}

// What a head mostly does, judged by each query's most attended key (queries 1.. only: query 0 has
// one key to attend to).
json head_kind(const Matrix& m) {
  std::map<std::string, int> counts{{"previous token", 0}, {"first token", 0}, {"self", 0}};
  for (std::int64_t q = 1; q < m.rows; ++q) {
    const std::int64_t k = top_keys(m, q, 1)[0];
    if (k == q - 1) ++counts["previous token"];
    else if (k == 0) ++counts["first token"];
    else if (k == q) ++counts["self"];
  }
  const auto best = std::max_element(counts.begin(), counts.end(),
                                     [](const auto& a, const auto& b) { return a.second < b.second; });
  const double share = m.rows > 1 ? double(best->second) / double(m.rows - 1) : 0.0;
  return {{"kind", share >= 0.5 ? best->first : "mixed"}, {"best", best->first}, {"share", share}, {"counts", counts}};
}

// A token as a JSON string literal: quotes make spaces and newlines visible in the text report.
std::string quoted(const std::string& token) {
  return json(token).dump(-1, ' ', false, json::error_handler_t::replace);
}

struct LayerAnalysis {
  json entry;        // for top_attended.json
  std::string text;  // for top_attended.txt
};

LayerAnalysis analyze_layer(int layer, const at::Tensor& pattern, const Prompt& prompt, int k) {
  const Matrix mean = drawing::head_matrix(pattern, -1);
  const std::int64_t heads = pattern.size(1), T = mean.rows;
  std::vector<Matrix> per_head;
  for (std::int64_t h = 0; h < heads; ++h) per_head.push_back(drawing::head_matrix(pattern, h));
  LayerAnalysis out;
  out.text = fmt::format("layer {} (mean of {} heads): query -> top {} keys\n", layer, heads, k);
  json queries = json::array();
  for (std::int64_t q = 0; q < T; ++q) {
    json top = json::array(), by_head = json::array();
    std::string line = fmt::format("  {:>3} {:<12} ->", q, quoted(prompt.tokens[std::size_t(q)]));
    for (std::int64_t key : top_keys(mean, q, k)) {
      top.push_back({{"key", key}, {"token", prompt.tokens[std::size_t(key)]}, {"weight", mean.at(q, key)}});
      line += fmt::format(" {}:{} {:.3f}", key, quoted(prompt.tokens[std::size_t(key)]), mean.at(q, key));
    }
    for (std::int64_t h = 0; h < heads; ++h) {
      const std::int64_t key = top_keys(per_head[std::size_t(h)], q, 1)[0];
      by_head.push_back({{"head", h}, {"key", key}, {"token", prompt.tokens[std::size_t(key)]},
                         {"weight", per_head[std::size_t(h)].at(q, key)}});
    }
    queries.push_back({{"query", q}, {"token", prompt.tokens[std::size_t(q)]}, {"top", top}, {"by_head", by_head}});
    out.text += line + "\n";
  }
  json kinds = json::array();
  for (std::int64_t h = 0; h < heads; ++h) {
    json kind = head_kind(per_head[std::size_t(h)]);
    out.text += fmt::format("  L{}H{}: {} (the most attended key is the {} for {:.0f}% of queries 1-{})\n", layer,
                            h, kind["kind"].get<std::string>(), kind["best"].get<std::string>(),
                            100.0 * kind["share"].get<double>(), T - 1);
    kind["head"] = h;
    kinds.push_back(std::move(kind));
  }
  out.entry = {{"layer", layer}, {"heads", heads}, {"queries", queries}, {"head_kinds", kinds}};
  return out;
}

// Abnar & Zuidema's rollout: A_l = 0.5 W_l + 0.5 I with rows renormalised, R_l = A_l R_{l-1}.
std::vector<Matrix> rollout(const std::vector<Matrix>& means) {
  std::vector<Matrix> rolled;
  for (const Matrix& w : means) {
    Matrix a = w;
    for (std::int64_t r = 0; r < a.rows; ++r) {
      double sum = 0;
      for (std::int64_t c = 0; c < a.cols; ++c) {
        double& v = a.values[std::size_t(r * a.cols + c)];
        v = 0.5 * v + (r == c ? 0.5 : 0.0);
        sum += v;
      }
      for (std::int64_t c = 0; c < a.cols; ++c) a.values[std::size_t(r * a.cols + c)] /= sum;
    }
    if (rolled.empty()) {
      rolled.push_back(a);
      continue;
    }
    const Matrix& prev = rolled.back();
    Matrix r{a.rows, a.cols, std::vector<double>(a.values.size(), 0.0)};
    for (std::int64_t i = 0; i < a.rows; ++i)
      for (std::int64_t m = 0; m < a.cols; ++m)
        for (std::int64_t j = 0; j < a.cols; ++j) r.values[std::size_t(i * a.cols + j)] += a.at(i, m) * prev.at(m, j);
    rolled.push_back(std::move(r));
  }
  return rolled;
}

// ---- outputs -------------------------------------------------------------------------------------

struct Outputs {
  fs::path dir;
  json files = json::array();
  void add(const std::string& name, json entry) {
    entry["file"] = name;
    files.push_back(std::move(entry));
  }
};

void write_layer_figures(int layer, const at::Tensor& pattern, const Prompt& prompt, Outputs& out) {
  const std::int64_t heads = pattern.size(1), T = pattern.size(2);
  const Matrix mean = drawing::head_matrix(pattern, -1);
  const int cell = std::max(drawing::cell_size(T), drawing::kLabelledCell);
  const Panel heatmap{fmt::format("layer {}: attention, mean of {} heads", layer, heads),
                      "rows: query tokens, cols: key tokens (position:token, _ = space)",
                      mean, drawing::sequential_scale({&mean}), cell, cell, prompt.labels, prompt.labels};
  std::string name = fmt::format("heatmap_layer{}.png", layer);
  json entry = drawing::write_figure(out.dir / name, {heatmap});
  entry.update({{"kind", "heatmap"}, {"layer", layer}, {"heads", "mean"},
                {"shows", fmt::format("layer {}'s attention pattern averaged over its {} heads (rows: query tokens, "
                                      "columns: key tokens)", layer, heads)}});
  out.add(name, std::move(entry));

  std::vector<Matrix> per_head;
  std::vector<const Matrix*> all;
  for (std::int64_t h = 0; h < heads; ++h) per_head.push_back(drawing::head_matrix(pattern, h));
  for (const Matrix& m : per_head) all.push_back(&m);
  const drawing::Scale shared = drawing::sequential_scale(all);
  const int small = std::max(2, drawing::cell_size(T) / 2);
  std::vector<Panel> panels;
  for (std::int64_t h = 0; h < heads; ++h)
    panels.push_back({fmt::format("L{}H{}", layer, h), fmt::format("q/k 0-{}", T - 1), per_head[std::size_t(h)],
                      shared, small, small});
  const int columns = int(std::ceil(std::sqrt(double(heads))));
  name = fmt::format("heads_layer{}.png", layer);
  entry = drawing::write_figure(out.dir / name, panels, columns);
  entry.update({{"kind", "heads"}, {"layer", layer}, {"columns", columns},
                {"shows", fmt::format("every head of layer {} (panel L{{layer}}H{{head}}, rows: queries, columns: "
                                      "keys), on one colour scale", layer)}});
  out.add(name, std::move(entry));
}

void write_top_attended(const std::vector<LayerAnalysis>& layers, const Prompt& prompt, int k, Outputs& out) {
  std::string text = fmt::format("Which tokens each token attends to most ({} tokens; weights are head means, "
                                 "'previous token' etc. describe each head's most attended key)\n\n",
                                 prompt.ids.size());
  json entries = json::array();
  for (const auto& l : layers) text += l.text + "\n", entries.push_back(l.entry);
  hooklens::write_text_file(out.dir / "top_attended.txt", text);
  out.add("top_attended.txt", {{"kind", "top_attended_text"},
                               {"shows", "per layer and query token the most attended key tokens, and what each "
                                         "head mostly attends to"}});
  hooklens::write_text_file(out.dir / "top_attended.json",
                      drawing::dump({{"top_k", k}, {"tokens", prompt.tokens}, {"ids", prompt.ids},
                                     {"definition", "top: the k keys with the largest head-averaged attention weight "
                                                    "(ties: lower position first); by_head: each head's most "
                                                    "attended key; head_kinds: the most common of previous token / "
                                                    "first token / self (best) among queries 1.., and its share; "
                                                    "kind is mixed below 50%"},
                                     {"layers", entries}}));
  out.add("top_attended.json", {{"kind", "top_attended"},
                                {"shows", "per layer and query token the top-k keys (head mean) with weights, each "
                                          "head's most attended key, and each head's kind"}});
}

void write_flow(const std::vector<int>& layers, const std::vector<Matrix>& means, const Prompt& prompt,
                Outputs& out) {
  const std::vector<Matrix> rolled = rollout(means);
  const std::int64_t T = means.front().rows, last = T - 1, L = std::int64_t(means.size());
  Matrix raw{L, T, {}}, flow{L, T, {}};
  json rolled_json = json::array();
  std::vector<std::string> row_labels;
  for (std::size_t l = 0; l < means.size(); ++l) {
    for (std::int64_t k = 0; k < T; ++k) raw.values.push_back(means[l].at(last, k));
    for (std::int64_t k = 0; k < T; ++k) flow.values.push_back(rolled[l].at(last, k));
    rolled_json.push_back({{"layer", layers[l]}, {"matrix", rolled[l].values}});
    row_labels.push_back(fmt::format("L{}", layers[l]));
  }
  const int cell = std::max(drawing::cell_size(T), drawing::kLabelledCell);
  const std::string caption = fmt::format("rows: layers, cols: key tokens; query: last token {}", prompt.labels.back());
  const std::vector<Panel> panels{
      {"last token's attention in each layer (head mean)", caption, raw, drawing::sequential_scale({&raw}), cell, cell,
       row_labels, prompt.labels},
      {"attention rollout up to each layer", caption, flow, drawing::sequential_scale({&flow}), cell, cell, row_labels,
       prompt.labels}};
  json entry = drawing::write_figure(out.dir / "attention_flow.png", panels);
  const std::string definition =
      "rollout (Abnar & Zuidema 2020): A_l = 0.5 * W_l + 0.5 * I with rows renormalised, W_l the head-averaged "
      "pattern of layer l; R_0 = A_0, R_l = A_l R_(l-1); row i of R_l: how much token i's state after layer l draws "
      "on each input token";
  entry.update({{"kind", "attention_flow"}, {"layers", layers},
                {"shows", "left: the last token's head-averaged attention in each layer; right: its attention "
                          "rollout through that layer (" + definition + ")"}});
  out.add("attention_flow.png", std::move(entry));
  hooklens::write_text_file(out.dir / "attention_flow.json",
                      drawing::dump({{"definition", definition}, {"layers", layers}, {"tokens", prompt.tokens},
                                     {"query", last}, {"last_token_attention", raw.values},
                                     {"last_token_rollout", flow.values}, {"rollout", rolled_json}}));
  out.add("attention_flow.json", {{"kind", "attention_flow"},
                                  {"shows", "the numbers of attention_flow.png (row-major [layers, tokens]) and the "
                                            "whole rollout matrix [tokens, tokens] after each layer"}});
}

// ---- the program ---------------------------------------------------------------------------------

void run(Options o) {
  if (o.model.empty()) o.model = make_example_model(o) / "model.pt";
  const json example = example_model_info(o.model.parent_path());
  std::string adapter;
  const auto model = load_model(o.model, o.tokenizer, &adapter);
  const std::vector<int> all_layers = pattern_layers(*model);
  const std::vector<int> layers = choose_layers(o.layers, all_layers, o.model);
  const Prompt prompt = encode_prompt(*model, o.prompt, example);
  const auto patterns = capture_patterns(*model, prompt);
  for (int layer : all_layers)
    if (!patterns.count(layer))
      throw Error(fmt::format("{}: layer {}'s attention pattern did not fire", o.model.string(), layer));

  Outputs out{o.out};
  fs::create_directories(out.dir);
  std::vector<LayerAnalysis> analyses;
  for (int layer : layers) {
    write_layer_figures(layer, patterns.at(layer), prompt, out);
    analyses.push_back(analyze_layer(layer, patterns.at(layer), prompt, o.top));
  }
  write_top_attended(analyses, prompt, o.top, out);
  std::vector<Matrix> means;  // rollout runs through every layer, whatever --layers chose
  for (int layer : all_layers) means.push_back(drawing::head_matrix(patterns.at(layer), -1));
  write_flow(all_layers, means, prompt, out);

  json info = model->info().to_json();
  info["file"] = o.model.string();
  info["adapter"] = adapter;
  info["example_model"] = example;
  hooklens::write_text_file(out.dir / "summary.json",
                      drawing::dump({{"format", kSummaryFormat}, {"model", info}, {"prompt", o.prompt},
                                     {"ids", prompt.ids}, {"tokens", prompt.tokens}, {"layers", layers},
                                     {"top_k", o.top}, {"files", out.files}}));
  std::cout << fmt::format("wrote {} files to {} (summary.json says what each shows)\n", out.files.size() + 1,
                           out.dir.string());
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"Attention of a language model on one prompt, as the analyze_attention script showed it: per-layer "
               "heatmaps, every head, the most attended tokens, and attention rollout across layers. Without "
               "--model it makes and trains a small byte-level GPT first (needs /usr/bin/python3 with torch)."};
  app.name("analyze_attention");
  std::string model, tokenizer, out = o.out.string();
  app.add_option("--model", model, "model to analyse: a TorchScript .pt file (or any model hooklens opens)");
  app.add_option("--tokenizer", tokenizer,
                 "directory with vocab.json + merges.txt or tokenizer.json (default: beside the .pt file)");
  app.add_option("--prompt", o.prompt, "text to run")->capture_default_str();
  app.add_option("--out", out, "output directory (the example model goes to OUT/model)")->capture_default_str();
  app.add_option("--layers", o.layers, "layers to draw: 'all' or comma-separated numbers (e.g. 0,2)")
      ->capture_default_str();
  app.add_option("--top", o.top, "most attended keys listed per query token")->capture_default_str();
  app.add_option("--train-steps", o.train_steps, "training steps when making the example model")
      ->capture_default_str();
  app.add_option("--python", o.python, "interpreter with torch that makes the example model")->capture_default_str();
  app.footer("Exit status: 0 success, 1 error (missing or broken model, unwritable output), 2 usage error.");
  return run_example(app, argc, argv, [&] {
    if (o.top < 1) throw UsageError(fmt::format("--top {}: must be at least 1", o.top));
    if (o.train_steps < 0) throw UsageError(fmt::format("--train-steps {}: must not be negative", o.train_steps));
    if (!tokenizer.empty() && model.empty()) throw UsageError("--tokenizer needs --model");
    o.model = model;
    o.tokenizer = tokenizer;
    o.out = out;
    run(o);
  });
}

#include "run_model.h"

#include <hooklens/error.h>
#include <hooklens/hook_names.h>
#include <hooklens/json_read.h>
#include <hooklens/run.h>

#include <ATen/core/Tensor.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>

namespace view {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr std::size_t kCacheEntries = 6;  // a few layers' patterns: bounded memory on big runs
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// The last `n` entries of a capture's shape (its dims from the end).
std::vector<std::int64_t> trailing(const json& shape, std::size_t n, const std::string& key) {
  if (!shape.is_array() || shape.size() < n) throw hooklens::Error(fmt::format("capture {} has shape {}", key, hooklens::brief_json(shape)));
  std::vector<std::int64_t> dims;
  for (std::size_t i = shape.size() - n; i < shape.size(); ++i) dims.push_back(shape[i].get<std::int64_t>());
  return dims;
}

// A capture as contiguous floats holding at least `expected` values (batch 0 of a [1, ...] tensor).
at::Tensor as_floats(const at::Tensor& tensor, std::size_t expected, const std::string& key) {
  at::Tensor flat = tensor.to(at::kFloat).contiguous();
  if (std::size_t(flat.numel()) < expected)
    throw hooklens::Error(fmt::format("capture {} has {} values, the manifest promises {}", key, flat.numel(), expected));
  return flat;
}

// An analyzer report's "heads" entries as a table; nested objects become "outer.inner" columns.
HeadTable head_table(const std::string& name, const json& heads) {
  HeadTable table{name, {}, {}};
  std::vector<std::map<std::string, json>> flat;
  auto add_column = [&](const std::string& c) {
    if (std::find(table.columns.begin(), table.columns.end(), c) == table.columns.end()) table.columns.push_back(c);
  };
  add_column("layer");
  add_column("head");
  for (const json& entry : heads) {
    if (!entry.is_object()) continue;
    std::map<std::string, json> cells;
    for (const auto& [k, v] : entry.items()) {
      if (v.is_object()) {
        for (const auto& [k2, v2] : v.items())
          if (!v2.is_structured()) cells[k + "." + k2] = v2;
      } else if (!v.is_array()) {
        cells[k] = v;
      }
    }
    for (const auto& [k, v] : cells) add_column(k);
    flat.push_back(std::move(cells));
  }
  for (const auto& cells : flat) {
    std::vector<json> row;
    for (const auto& c : table.columns) {
      const auto it = cells.find(c);
      row.push_back(it == cells.end() ? json() : it->second);
    }
    table.rows.push_back(std::move(row));
  }
  return table;
}

}  // namespace

float Grid::mean_at(int row, int col) const {
  float sum = 0;
  for (int h = 0; h < heads; ++h) sum += at(h, row, col);
  return heads > 0 ? sum / float(heads) : kNaN;
}

RunModel::RunModel(const fs::path& dir) : dir_(dir), reader_(std::make_unique<hooklens::RunReader>()) {
  reader_->open(dir, /*allow_incomplete=*/false, hooklens::RunCheck::consistent);  // every field checked once
  const fs::path manifest_file = dir / "manifest.json";
  try {
    const json& m = reader_->manifest();
    n_layers_ = m.at("model").at("n_layers").get<int>();
    n_heads_ = m.at("model").at("n_heads").get<int>();
    if (n_layers_ < 1 || n_layers_ > 4096 || n_heads_ < 1 || n_heads_ > 4096)
      throw hooklens::Error(fmt::format("{}: implausible model size: {} layers, {} heads", manifest_file.string(),
                                        n_layers_, n_heads_));
    generation_ = &reader_->generation();
    mode_ = generation_->mode;
    // The model's mask shows masks in a diffusion run whose generation block names none.
    const json& model = m.at("model");
    if (model.contains("mask_id") && model["mask_id"].is_number_integer()) model_mask_id_ = model["mask_id"].get<std::int64_t>();
    for (const hooklens::RunPrompt& p : reader_->prompts()) prompts_.push_back({p.tokens});
    for (const hooklens::RunIntervention& i : reader_->interventions()) {
      std::string line = fmt::format("{}  ({}, {}", i.text, i.kind, i.site);
      if (i.source) line += ", from " + *i.source;
      if (i.scale) line += fmt::format(", scale {}", *i.scale);
      if (i.applied) line += fmt::format(", {} hook events", *i.applied);
      interventions_.push_back(hooklens::brief_text(line + ")", 300));
    }
    for (std::size_t i = 0; i < reader_->capture_count(); ++i) {
      const hooklens::CaptureEntry& c = reader_->entry(i);
      const std::string& hook = c.hook;
      const Where where{c.context.prompt, c.context.step, c.context.layer};
      if (std::get<0>(where) < 0 || std::get<0>(where) >= int(prompts_.size()))
        throw hooklens::Error(fmt::format("capture '{}' names prompt {}", c.key, std::get<0>(where)));
      step_count_ = std::max(step_count_, std::get<1>(where) + 1);
      namespace hn = hooklens::hook_names;
      if (hn::layer_of(hook, hn::pattern)) pattern_index_[where].push_back(i);
      if (hn::layer_of(hook, hn::mlp_post)) neuron_index_[where].push_back(i);
    }
  } catch (const json::exception& e) {
    throw hooklens::Error(fmt::format("{}: malformed run manifest: {}", manifest_file.string(), e.what()));
  }
  if (generation_->mode != hooklens::GenerationMode::none)
    step_count_ = std::max(step_count_, int(generation_->step_count()));
  tables_ = read_head_tables(dir_ / "reports", warnings_);
}

RunModel::~RunModel() = default;

std::vector<HeadTable> read_head_tables(const fs::path& reports_dir, std::vector<std::string>& problems) {
  std::vector<HeadTable> tables;
  std::error_code ec;
  if (!fs::is_directory(reports_dir, ec)) return tables;
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(reports_dir, ec))
    if (entry.path().extension() == ".json") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  for (const fs::path& file : files) {
    try {
      const json report = hooklens::read_json_file(file);
      if (report.contains("heads") && report["heads"].is_array())
        tables.push_back(head_table(file.stem().string(), report["heads"]));
    } catch (const std::exception& e) {
      problems.push_back(fmt::format("{}: unreadable report: {}", file.string(), e.what()));
    }
  }
  return tables;
}

int RunModel::prompt_length(int prompt) const { return int(prompts_.at(std::size_t(prompt)).tokens.size()); }

std::vector<std::string> RunModel::tokens(int prompt, int step) const {
  std::vector<std::string> out = prompts_.at(std::size_t(prompt)).tokens;
  // Generation records one sequence: the first prompt's.
  if (prompt == 0) generated_tokens(step, out);
  return out;
}

void RunModel::generated_tokens(int step, std::vector<std::string>& out) const {
  const hooklens::RunGeneration& g = *generation_;
  if (g.mode == hooklens::GenerationMode::autoregressive) {
    for (int s = 0; s <= step && s < int(g.token_steps.size()); ++s)
      out.push_back(g.token_steps[std::size_t(s)].token_string.value_or("?"));
  } else if (g.mode == hooklens::GenerationMode::masked_diffusion && step < int(g.denoise_steps.size())) {
    const std::vector<std::int64_t>& ids = g.denoise_steps[std::size_t(step)].ids;
    const std::optional<std::int64_t> mask = g.mask_id ? g.mask_id : model_mask_id_;
    // token_strings is written only when the run had a tokenizer: "#ID" otherwise (RunGeneration::display).
    for (std::size_t i = out.size(); i < ids.size(); ++i) out.push_back(ids[i] == mask ? std::string("[mask]") : g.display(ids[i]));
  }
}

std::vector<int> RunModel::new_positions(int prompt, int step) const {
  const hooklens::RunGeneration& g = *generation_;
  if (prompt != 0 || step < 0 || step >= int(g.step_count()) || g.mode == hooklens::GenerationMode::none) return {};
  if (g.mode == hooklens::GenerationMode::autoregressive) return {prompt_length(0) + step};
  const std::vector<std::int64_t>& committed = g.denoise_steps[std::size_t(step)].committed;
  return std::vector<int>(committed.begin(), committed.end());
}

std::shared_ptr<const Grid> RunModel::cached(const std::string& kind, const Where& where) {
  for (auto it = cache_.begin(); it != cache_.end(); ++it) {
    if (it->first != std::make_pair(kind, where)) continue;
    cache_.splice(cache_.begin(), cache_, it);
    return cache_.front().second;
  }
  return nullptr;
}

void RunModel::remember(const std::string& kind, const Where& where, std::shared_ptr<const Grid> grid) {
  cache_.emplace_front(std::make_pair(kind, where), std::move(grid));
  if (cache_.size() > kCacheEntries) cache_.pop_back();
}

std::shared_ptr<const Grid> RunModel::pattern(int prompt, int step, int layer) {
  const std::lock_guard<std::mutex> lock(mutex_);
  if (auto hit = cached("pattern", {prompt, step, layer})) return hit;
  auto grid = read_grid(pattern_index_, prompt, step, layer);
  remember("pattern", {prompt, step, layer}, grid);
  return grid;
}

std::shared_ptr<const Grid> RunModel::read_grid(const std::map<Where, std::vector<std::size_t>>& index, int prompt,
                                                int step, int layer) {
  // Autoregressive decode steps add rows (their positions) to the prefill's; other runs show one step.
  std::vector<std::size_t> captures;
  const int first = generation_->mode == hooklens::GenerationMode::autoregressive ? 0 : step;
  for (int s = first; s <= step; ++s) {
    const auto it = index.find({prompt, s, layer});
    if (it != index.end()) captures.insert(captures.end(), it->second.begin(), it->second.end());
  }
  if (captures.empty()) return nullptr;
  struct Piece {
    std::size_t index;
    std::int64_t heads, rows, cols, q0, k0;
  };
  std::vector<Piece> pieces;
  auto grid = std::make_shared<Grid>();
  for (std::size_t i : captures) {
    const hooklens::CaptureEntry& c = reader_->entry(i);
    const std::string& key = c.key;
    const auto dims = trailing(json(c.shape), 3, key);
    const Piece p{i, dims[0], dims[1], dims[2], c.context.query_offset, c.context.key_offset};
    if (p.q0 < 0 || p.k0 < 0 || p.q0 + p.rows > 1 << 20 || p.k0 + p.cols > 1 << 20)
      throw hooklens::Error(fmt::format("{}: capture {} has impossible offsets", (dir_ / "manifest.json").string(), key));
    grid->heads = std::max(grid->heads, int(p.heads));
    grid->rows = std::max(grid->rows, int(p.q0 + p.rows));
    grid->cols = std::max(grid->cols, int(p.k0 + p.cols));
    pieces.push_back(p);
  }
  grid->values.assign(std::size_t(grid->heads) * grid->rows * grid->cols, kNaN);
  for (const Piece& p : pieces) {
    const std::string& key = reader_->entry(p.index).key;
    const at::Tensor t = as_floats(reader_->load(p.index), std::size_t(p.heads * p.rows * p.cols), key);
    const float* v = t.data_ptr<float>();
    for (std::int64_t h = 0; h < p.heads; ++h)
      for (std::int64_t r = 0; r < p.rows; ++r)
        std::copy_n(&v[std::size_t((h * p.rows + r) * p.cols)], p.cols,
                    &grid->values[(std::size_t(h) * grid->rows + std::size_t(p.q0 + r)) * grid->cols + std::size_t(p.k0)]);
  }
  return grid;
}

std::shared_ptr<const Grid> RunModel::neurons(int prompt, int step, int layer) {
  const std::lock_guard<std::mutex> lock(mutex_);
  if (auto hit = cached("neurons", {prompt, step, layer})) return hit;
  auto grid = read_grid(neuron_index_, prompt, step, layer);
  remember("neurons", {prompt, step, layer}, grid);
  return grid;
}

}  // namespace view

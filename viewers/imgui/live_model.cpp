#include "live_model.h"

#include <hooklens/error.h>
#include <hooklens/generate.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>
#include <hooklens/runtime.h>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace view {

namespace {

// Thrown by the hook when Stop was pressed; caught in the worker, so generation ends cleanly.
struct Stopped {};

bool all_bidirectional(const hooklens::ModelInfo& info) {
  return !info.layer_attention.empty() &&
         std::all_of(info.layer_attention.begin(), info.layer_attention.end(),
                     [](hooklens::AttentionKind k) { return k == hooklens::AttentionKind::bidirectional; });
}

}  // namespace

LiveModel::LiveModel(const LiveOptions& options)
    : options_(options), registry_(std::make_unique<hooklens::PluginRegistry>()) {
  model_ = hooklens::open_model(*registry_, options.model);
  const hooklens::ModelInfo& info = model_->info();
  n_layers_ = info.n_layers;
  n_heads_ = info.n_heads;
  mode_ = all_bidirectional(info) ? "masked_diffusion" : "autoregressive";
  if (!model_->tokenizer())
    throw hooklens::UsageError(fmt::format("{}: the model ships no tokenizer, so --prompt cannot be encoded", options.model.string()));
  prompt_ids_ = model_->tokenizer()->encode(options.prompt);
  if (prompt_ids_.empty()) throw hooklens::UsageError("--prompt: the prompt encodes to no tokens");
  if (mode_ == "masked_diffusion") {
    if (!info.mask_id) throw hooklens::UsageError(fmt::format("{}: the model names no mask token", options.model.string()));
    mask_id_ = *info.mask_id;
  }
  // Bad options are the user's error, said before any window work starts.
  const int new_positions = mode_ == "autoregressive" ? (sampling().validate(), options.max_new_tokens)
                                                      : (diffusion().validate(), options.gen_length);
  if (std::int64_t(prompt_ids_.size()) + new_positions > info.n_ctx)
    throw hooklens::UsageError(fmt::format("{}: prompt of {} tokens + {} new ones exceeds the context of {} tokens",
                                           options.model.string(), prompt_ids_.size(), new_positions, info.n_ctx));
  status_ = "generating";
  worker_ = std::thread([this] { work(); });
}

LiveModel::~LiveModel() {
  stop_ = true;
  if (worker_.joinable()) worker_.join();
}

std::string LiveModel::title() const { return fmt::format("live: {}", options_.model.string()); }

std::string LiveModel::status() const {
  const std::lock_guard<std::mutex> lock(mutex_);
  return status_;
}

int LiveModel::step_count() const {
  const std::lock_guard<std::mutex> lock(mutex_);
  return std::max(1, int(steps_.size()));
}

std::string LiveModel::token_text(std::int64_t id) const {
  if (id == mask_id_) return "[mask]";
  return model_->tokenizer()->token_string(id);
}

std::vector<std::string> LiveModel::tokens(int, int step) const {
  std::vector<std::int64_t> ids = prompt_ids_;
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (step >= 0 && step < int(steps_.size())) ids = steps_[std::size_t(step)].ids;
  }
  std::vector<std::string> out;
  for (std::int64_t id : ids) out.push_back(token_text(id));
  return out;
}

std::vector<int> LiveModel::new_positions(int, int step) const {
  const std::lock_guard<std::mutex> lock(mutex_);
  if (step < 0 || step >= int(steps_.size())) return {};
  return steps_[std::size_t(step)].fresh;
}

std::shared_ptr<const Grid> LiveModel::pattern(int, int step, int layer) {
  const std::lock_guard<std::mutex> lock(mutex_);
  if (step < 0 || step >= int(steps_.size())) return nullptr;  // unfinished steps are not shown
  // Autoregressive decode steps add query rows to the prefill's matrix; diffusion shows one step.
  std::vector<const Piece*> pieces;
  for (int s = mode_ == "autoregressive" ? 0 : step; s <= step; ++s) {
    const auto it = pieces_.find({s, layer});
    if (it != pieces_.end())
      for (const Piece& p : it->second) pieces.push_back(&p);
  }
  if (pieces.empty()) return nullptr;
  auto grid = std::make_shared<Grid>();
  for (const Piece* p : pieces) {
    grid->heads = std::max(grid->heads, int(p->heads));
    grid->rows = std::max(grid->rows, int(p->q0 + p->rows));
    grid->cols = std::max(grid->cols, int(p->k0 + p->cols));
  }
  grid->values.assign(std::size_t(grid->heads) * grid->rows * grid->cols, std::numeric_limits<float>::quiet_NaN());
  for (const Piece* p : pieces)
    for (std::int64_t h = 0; h < p->heads; ++h)
      for (std::int64_t r = 0; r < p->rows; ++r)
        std::copy_n(&p->values[std::size_t((h * p->rows + r) * p->cols)], p->cols,
                    &grid->values[(std::size_t(h) * grid->rows + std::size_t(p->q0 + r)) * grid->cols + std::size_t(p->k0)]);
  return grid;
}

hooklens::SamplingOptions LiveModel::sampling() const {
  hooklens::SamplingOptions s;
  s.max_new_tokens = options_.max_new_tokens;
  return s;
}

hooklens::DiffusionOptions LiveModel::diffusion() const {
  hooklens::DiffusionOptions d;
  d.gen_length = options_.gen_length;
  d.steps = options_.steps;
  d.block_length = options_.block_length;
  return d;
}

void LiveModel::finish_step(Step step) {
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    steps_.push_back(std::move(step));
    status_ = fmt::format("generating: step {}", steps_.size() - 1);
  }
  ++version_;
}

void LiveModel::work() {
  hooklens::HookSet hooks;
  hooklens::HookFilter filter;
  filter.names = {"blocks.*.attn.hook_pattern"};
  hooks.add(filter, [this](std::string_view, const hooklens::CaptureContext& ctx, at::Tensor& t) {
    if (stop_) throw Stopped{};
    if (ctx.pass != 0 || t.dim() != 4) return;  // the guidance pass is not what the model produced
    const at::Tensor f = t[0].to(at::kFloat).contiguous();
    Piece p{f.size(0), f.size(1), f.size(2), ctx.query_offset, ctx.key_offset, {}};
    p.values.assign(f.data_ptr<float>(), f.data_ptr<float>() + f.numel());
    const std::lock_guard<std::mutex> lock(mutex_);
    pieces_[{ctx.step, ctx.layer}].push_back(std::move(p));
  });
  std::string outcome = "finished";
  try {
    if (mode_ == "autoregressive") {
      std::vector<std::int64_t> ids = prompt_ids_;
      hooklens::generate_autoregressive(*model_, prompt_ids_, sampling(), hooks, 0, [&](int, std::int64_t token) {
        ids.push_back(token);
        finish_step({ids, {int(ids.size()) - 1}});
        hooklens::release_free_memory();
      });
    } else {
      hooklens::generate_masked_diffusion(*model_, prompt_ids_, diffusion(), hooks, 0, [&](const hooklens::DiffusionStep& s) {
        finish_step({s.ids, std::vector<int>(s.committed.begin(), s.committed.end())});
        hooklens::release_free_memory();
      });
    }
  } catch (const Stopped&) {
    outcome = "stopped";
  } catch (const std::exception& e) {
    outcome = fmt::format("error: {}", e.what());
  }
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    status_ = fmt::format("{} after {} steps", outcome, steps_.size());
  }
  running_ = false;
  ++version_;
}

}  // namespace view

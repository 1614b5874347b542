#include "live_model.h"

#include "loaders.h"

#include <hooklens/analysis.h>
#include <hooklens/error.h>
#include <hooklens/generate.h>
#include <hooklens/hooks.h>
#include <hooklens/hook_names.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>
#include <hooklens/run_format.h>
#include <hooklens/run_session.h>
#include <hooklens/runtime.h>

#include <ATen/ATen.h>
#include <c10/util/Half.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace view {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// What the live store keeps; has_neurons_ asks the model with the same pattern the hook uses.
const std::string kPatternHooks = hooklens::hook_names::every_layer(hooklens::hook_names::pattern);
const std::string kNeuronHooks = hooklens::hook_names::every_layer(hooklens::hook_names::mlp_post);

// Thrown by the hooks when Stop was pressed; caught in the worker, so generation ends cleanly.
struct Stopped {};

// A fresh private directory for the analyzers' reports (they are read back at once, then removed).
fs::path make_scratch_dir() {
  std::string name = (fs::temp_directory_path() / "hooklens-view-XXXXXX").string();
  if (!mkdtemp(name.data())) throw hooklens::Error(fmt::format("{}: cannot create a scratch directory", name));
  return name;
}

}  // namespace

// The session reads and checks the prompt and the generation options as `hooklens generate` does,
// and starts the analyzers; the viewer hooks the model itself and writes no run directory.
hooklens::RunSettings LiveModel::settings(const LiveOptions& options) {
  hooklens::RunSettings s;
  s.model = options.model.string();
  s.tokenizer = options.tokenizer.string();
  if (!options.prompt_ids.empty()) s.prompt_ids = {fmt::format("{}", fmt::join(options.prompt_ids, ","))};
  else s.prompts = {options.prompt};
  s.chat = options.chat;
  // The session captures nothing (and opens no run directory): the viewer's own hooks keep what it shows.
  s.hooks = {std::string(hooklens::RunSettings::no_hooks)};
  s.analyze = options.analyze;
  s.autoregressive.max_new_tokens = options.max_new_tokens;
  s.diffusion.gen_length = options.gen_length;
  s.diffusion.steps = options.steps;
  s.diffusion.block_length = options.block_length;
  s.interventions = options.interventions;
  return s;
}

LiveModel::LiveModel(const LiveOptions& options)
    : options_(options),
      session_(std::make_unique<hooklens::RunSession>(settings(options), hooklens::RunSession::Kind::generate)) {
  hooklens::Model& model = session_->model();
  const hooklens::ModelInfo& info = model.info();
  n_layers_ = info.n_layers;
  n_heads_ = info.n_heads;
  mode_ = session_->mode();
  prompt_ids_ = session_->prompts().at(0).ids;
  // Bad options are the user's error, said before any window work starts.
  session_->check_generation();
  if (mode_ == hooklens::GenerationMode::masked_diffusion) mask_id_ = session_->diffusion().mask_id.value_or(*info.mask_id);
  if (options.neurons)
    for (const auto& point : model.hook_points())
      has_neurons_ = has_neurons_ || hooklens::hook_name_matches(kNeuronHooks, point.name);
  status_ = "generating";
  last_step_ = std::chrono::steady_clock::now();
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

std::string LiveModel::why_missing(int step) const {
  const std::lock_guard<std::mutex> lock(mutex_);
  if (step < first_kept_step_)
    return fmt::format("step {} was dropped: live mode keeps steps {}-{} within --live-memory {} MiB", step,
                       first_kept_step_, std::max(first_kept_step_, int(steps_.size()) - 1), options_.memory_mib);
  return {};
}

int LiveModel::step_count() const {
  const std::lock_guard<std::mutex> lock(mutex_);
  return std::max(1, int(steps_.size()));
}

std::string LiveModel::token_text(std::int64_t id) const {
  if (id == mask_id_) return "[mask]";
  const hooklens::Tokenizer* tok = session_->model().tokenizer();
  return tok && id < tok->vocab_size() ? tok->token_string(id) : fmt::format("#{}", id);
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

std::vector<std::shared_ptr<const LiveModel::Piece>> LiveModel::pieces(const Store& store, int first_step, int step,
                                                                     int layer) const {
  std::vector<std::shared_ptr<const Piece>> out;
  for (int s = first_step; s <= step; ++s) {
    const auto it = store.find({s, layer});
    if (it != store.end()) out.insert(out.end(), it->second.begin(), it->second.end());
  }
  return out;
}

std::shared_ptr<const Grid> LiveModel::assemble(const std::vector<std::shared_ptr<const Piece>>& pieces) {
  if (pieces.empty()) return nullptr;
  auto grid = std::make_shared<Grid>();
  grid->first_row = int(pieces.front()->q0);
  for (const auto& p : pieces) {
    grid->heads = std::max(grid->heads, int(p->heads));
    grid->first_row = std::min(grid->first_row, int(p->q0));
    grid->cols = std::max(grid->cols, int(p->k0 + p->cols));
  }
  for (const auto& p : pieces) grid->rows = std::max(grid->rows, int(p->q0 + p->rows) - grid->first_row);
  grid->values.assign(std::size_t(grid->heads) * grid->rows * grid->cols, std::numeric_limits<float>::quiet_NaN());
  // Through ATen: the float16 -> float32 copy is vectorised (a 32-head 512-token layer in a few ms).
  const at::Tensor all = at::from_blob(grid->values.data(), {grid->heads, grid->rows, grid->cols}, at::kFloat);
  for (const auto& p : pieces) {
    const at::Tensor half = at::from_blob(const_cast<std::uint16_t*>(p->halves.data()), {p->heads, p->rows, p->cols}, at::kHalf);
    all.narrow(0, 0, p->heads).narrow(1, p->q0 - grid->first_row, p->rows).narrow(2, p->k0, p->cols).copy_(half);
  }
  return grid;
}

std::shared_ptr<const Grid> LiveModel::pattern(int, int step, int layer) {
  std::vector<std::shared_ptr<const Piece>> found;
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (step < first_kept_step_ || step >= int(steps_.size())) return nullptr;  // dropped, or not finished
    // Autoregressive decode steps add query rows to the prefill's matrix (rows are absolute
    // positions from 0); diffusion shows one step.
    found = pieces(patterns_, mode_ == hooklens::GenerationMode::autoregressive ? 0 : step, step, layer);
  }
  auto grid = assemble(found);  // without the lock: the UI thread must not wait for a conversion
  if (grid && grid->first_row != 0) return nullptr;  // no prefill rows to place the decode rows under
  return grid;
}

std::shared_ptr<const Grid> LiveModel::neurons(int, int step, int layer) {
  std::vector<std::shared_ptr<const Piece>> found;
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (step < first_kept_step_ || step >= int(steps_.size())) return nullptr;
    found = pieces(neurons_, mode_ == hooklens::GenerationMode::autoregressive ? 0 : step, step, layer);
  }
  return assemble(found);
}

void LiveModel::keep(Store& store, int step, int layer, Piece piece) {
  const std::lock_guard<std::mutex> lock(mutex_);
  kept_bytes_ += piece.halves.size() * sizeof(std::uint16_t);
  store[{step, layer}].push_back(std::make_shared<const Piece>(std::move(piece)));
}

void LiveModel::drop_old_steps() {
  // Only diffusion steps stand alone; autoregressive steps build on the prefill and are small.
  if (mode_ != hooklens::GenerationMode::masked_diffusion) return;
  const auto drop = [&](Store& store, int step) {
    for (auto it = store.lower_bound({step, 0}); it != store.end() && it->first.first == step; it = store.erase(it))
      for (const auto& p : it->second) kept_bytes_ -= p->halves.size() * sizeof(std::uint16_t);
  };
  while (kept_bytes_ > (options_.memory_mib << 20) && first_kept_step_ + 1 < int(steps_.size())) {
    drop(patterns_, first_kept_step_);
    drop(neurons_, first_kept_step_);
    ++first_kept_step_;
  }
}

std::string LiveModel::dropped_note() const {
  if (first_kept_step_ == 0) return {};
  return fmt::format("; steps 0-{} dropped (--live-memory {} MiB)", first_kept_step_ - 1, options_.memory_mib);
}

void LiveModel::finish_step(Step step) {
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    steps_.push_back(std::move(step));
    drop_old_steps();
    status_ = fmt::format("generating: step {}{}", steps_.size() - 1, dropped_note());
    if (options_.stop_after > 0 && int(steps_.size()) >= options_.stop_after) stop_ = true;  // as if Stop was pressed
  }
  ++version_;
  hooklens::release_free_memory();
  wait_for_pace();
}

void LiveModel::wait_for_pace() {
  using clock = std::chrono::steady_clock;
  const auto until = last_step_ + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(options_.pace));
  while (!stop_ && clock::now() < until)
    std::this_thread::sleep_for(std::min<clock::duration>(until - clock::now(), std::chrono::milliseconds(20)));
  last_step_ = clock::now();
}

void LiveModel::work() {
  yield_to_ui();
  // The session's hooks hold its interventions (nothing else: it captures nothing); the analyzers
  // and the viewer's own hooks come after them, so they see the changed values.
  hooklens::HookSet& hooks = session_->hooks();
  if (hooklens::AnalyzerSet* analyzers = session_->analyzers()) analyzers->attach(hooks);
  const auto capture = [this](Store& store) {
    return [this, &store](std::string_view, const hooklens::CaptureContext& ctx, at::Tensor& t) {
      if (stop_) throw Stopped{};
      if (ctx.pass != 0 || t.dim() < 3) return;  // the guidance pass is not what the model produced
      const at::Tensor h = t[0].to(at::kHalf).contiguous();  // [heads, q, k] or [positions, neurons]
      const bool pattern = h.dim() == 3;
      Piece p{pattern ? h.size(0) : 1, h.size(h.dim() - 2), h.size(h.dim() - 1), ctx.query_offset,
              pattern ? ctx.key_offset : 0, std::vector<std::uint16_t>(std::size_t(h.numel()))};
      std::memcpy(p.halves.data(), h.data_ptr(), p.halves.size() * sizeof(std::uint16_t));
      keep(store, ctx.step, ctx.layer, std::move(p));
    };
  };
  hooklens::HookFilter patterns;
  patterns.names = {kPatternHooks};
  hooks.add(patterns, capture(patterns_));
  if (has_neurons_) {
    hooklens::HookFilter neurons;
    neurons.names = {kNeuronHooks};
    hooks.add(neurons, capture(neurons_));
  }
  std::string outcome = "finished";
  hooklens::RunGeneration generation;  // as far as it got, for the analyzers
  generation.mode = mode_;
  generation.output_ids = prompt_ids_;
  try {
    if (mode_ == hooklens::GenerationMode::autoregressive) {
      const std::int64_t prompt_length = std::int64_t(prompt_ids_.size());
      hooklens::generate_autoregressive(session_->model(), prompt_ids_, session_->sampling(), hooks, 0, [&](int step, std::int64_t token) {
        generation.output_ids.push_back(token);
        generation.new_ids.push_back(token);
        generation.token_steps.push_back(hooklens::TokenStep::chose(step, prompt_length, token, token_text(token)));
        finish_step({generation.output_ids, {int(generation.output_ids.size()) - 1}});
      });
    } else {
      generation.prompt_length = std::int64_t(prompt_ids_.size());
      generation.mask_id = mask_id_;
      hooklens::generate_masked_diffusion(session_->model(), prompt_ids_, session_->diffusion(), hooks, 0, [&](const hooklens::DiffusionStep& s) {
        generation.output_ids = s.ids;
        generation.denoise_steps.push_back({s.step, s.block, s.ids, s.committed, s.confidences});
        finish_step({s.ids, std::vector<int>(s.committed.begin(), s.committed.end())});
      });
    }
  } catch (const Stopped&) {
    outcome = "stopped";
  } catch (const std::exception& e) {
    outcome = fmt::format("error: {}", e.what());
  }
  std::string ended;
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    ended = fmt::format("{} after {} steps{}", outcome, steps_.size(), dropped_note());
    status_ = ended + (session_->analyzers() ? "; analyzing" : "");
  }
  ++version_;
  if (session_->analyzers()) {
    try {
      finish_analyzers(hooklens::encode_generation(generation));
    } catch (const std::exception& e) {
      ended += fmt::format("; analyzers failed: {}", e.what());
    }
  }
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    status_ = ended;
  }
  running_ = false;  // publishes tables_
  ++version_;
}

void LiveModel::finish_analyzers(const json& generation) {
  const json manifest = session_->manifest(generation);
  const fs::path scratch = make_scratch_dir();
  std::vector<std::string> problems;
  try {
    session_->analyzers()->finish(manifest, scratch);
    tables_ = read_head_tables(scratch / "reports", problems);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(scratch, ec);
    throw;
  }
  std::error_code ec;
  fs::remove_all(scratch, ec);
  if (!problems.empty()) throw hooklens::Error(problems.front());
}

}  // namespace view

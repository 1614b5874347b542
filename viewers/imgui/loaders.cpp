#include "loaders.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

namespace view {

void yield_to_ui() {
  // Best effort: a failure only leaves the thread at the normal priority.
  (void)setpriority(PRIO_PROCESS, id_t(syscall(SYS_gettid)), 10);
}

ThumbnailLoader::ThumbnailLoader(PanelModel& model, int max_side)
    : model_(model), max_side_(max_side), next_layer_(model.n_layers()), taken_(model.n_layers()),
      thread_([this] { work(); }) {}

ThumbnailLoader::~ThumbnailLoader() {
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void ThumbnailLoader::start(const ThumbnailJob& job) {
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    job_ = job;
    ++generation_;
    next_layer_ = 0;
    taken_ = 0;
    ready_.clear();
  }
  wake_.notify_all();
}

std::vector<ThumbnailLayer> ThumbnailLoader::take() {
  const std::lock_guard<std::mutex> lock(mutex_);
  std::vector<ThumbnailLayer> out;
  out.swap(ready_);
  taken_ += int(out.size());
  return out;
}

bool ThumbnailLoader::done() const {
  const std::lock_guard<std::mutex> lock(mutex_);
  return taken_ >= model_.n_layers();
}

void ThumbnailLoader::work() {
  yield_to_ui();
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    wake_.wait(lock, [this] { return stop_ || next_layer_ < model_.n_layers(); });
    if (stop_) return;
    const ThumbnailJob job = job_;
    const unsigned generation = generation_;
    ThumbnailLayer result{job, next_layer_++, {}, {}};
    lock.unlock();
    try {
      if (const auto grid = model_.pattern(job.prompt, job.step, result.layer))
        for (int head = 0; head < grid->heads; ++head)
          result.heads.push_back(colour_image(*grid, {head, max_side_, job.map}));
    } catch (const std::exception& e) {
      result.error = e.what();
    }
    lock.lock();
    if (generation == generation_) ready_.push_back(std::move(result));
  }
}

SelectionLoader::SelectionLoader(PanelModel& model) : model_(model), thread_([this] { work(); }) {}

SelectionLoader::~SelectionLoader() {
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void SelectionLoader::request(const SelectionJob& job) {
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    pending_ = job;
  }
  wake_.notify_all();
}

std::optional<SelectionResult> SelectionLoader::take() {
  const std::lock_guard<std::mutex> lock(mutex_);
  std::optional<SelectionResult> out;
  out.swap(ready_);
  return out;
}

void SelectionLoader::work() {
  yield_to_ui();
  // The last layer read: a new head or colour map of the same layer only recolours it. A layer
  // that had nothing is read again (a live step may have finished since).
  SelectionJob last;
  std::shared_ptr<const Grid> last_grid;
  bool have_last = false;
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    wake_.wait(lock, [this] { return stop_ || pending_; });
    if (stop_) return;
    SelectionResult result{*pending_, nullptr, {}, {}};
    pending_.reset();
    lock.unlock();
    try {
      const SelectionJob& job = result.job;
      const bool same_layer = have_last && last_grid && last.prompt == job.prompt && last.step == job.step &&
                              last.layer == job.layer;
      result.grid = same_layer ? last_grid : model_.pattern(job.prompt, job.step, job.layer);
      last = job, last_grid = result.grid, have_last = true;
      if (result.grid) result.image = colour_image(*result.grid, {std::min(job.head, result.grid->heads - 1), 0, job.map});
    } catch (const std::exception& e) {
      result.error = e.what();
      have_last = false;
    }
    lock.lock();
    ready_ = std::move(result);
  }
}

}  // namespace view

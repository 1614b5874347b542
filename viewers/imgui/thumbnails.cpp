#include "thumbnails.h"

namespace view {

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

}  // namespace view

// Builds the layer x head thumbnail images on a background thread, so opening a big run (32 layers
// x 32 heads x 512 tokens) never stalls the UI: the UI starts a job when the prompt, step or colour
// map changes and uploads the finished images each frame.
#pragma once
#include "run_model.h"
#include "textures.h"

#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace view {

struct ThumbnailJob {
  int prompt = 0, step = 0;
  const figures::ColourMap* map = &figures::kViridis;
};

// One layer's thumbnails (one image per head), or why the layer could not be read.
struct ThumbnailLayer {
  ThumbnailJob job;
  int layer = 0;
  std::vector<Image> heads;  // empty when the layer has nothing captured or failed
  std::string error;
};

class ThumbnailLoader {
 public:
  ThumbnailLoader(PanelModel& model, int max_side);
  ~ThumbnailLoader();
  ThumbnailLoader(const ThumbnailLoader&) = delete;
  ThumbnailLoader& operator=(const ThumbnailLoader&) = delete;

  // Replaces the current job (finished layers of the old one are dropped).
  void start(const ThumbnailJob& job);
  // Layers finished since the last call.
  std::vector<ThumbnailLayer> take();
  // True when the current job has built every layer and take() has returned them all.
  bool done() const;

 private:
  void work();

  PanelModel& model_;
  const int max_side_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  ThumbnailJob job_;
  unsigned generation_ = 0;  // counts start() calls: a result of an older job is discarded
  int next_layer_ = 0;
  int taken_ = 0;
  std::vector<ThumbnailLayer> ready_;
  bool stop_ = false;
  std::thread thread_;  // last: started once everything above is initialised
};

}  // namespace view

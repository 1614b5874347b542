// Background loading, so a big run (32 layers x 32 heads x 512 tokens) or a model generating next
// to the UI never stalls a frame: the UI asks, a worker thread reads the pattern and colours it,
// and the UI only uploads the finished images.
//  - ThumbnailLoader: the layer x head thumbnails of a prompt and step, layer by layer.
//  - SelectionLoader: the selected layer's full pattern and the selected head's heatmap image.
#pragma once
#include "run_model.h"
#include "textures.h"

#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace view {

struct ThumbnailJob {
  int prompt = 0, step = 0;
  const drawing::ColourMap* map = &drawing::kViridis;
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

// Lowers the calling thread's scheduling priority (Linux: its nice value; threads it starts, e.g.
// ATen's, inherit it), so on a busy machine the UI thread's frames come first.
void yield_to_ui();

// What the big heatmap shows. head -1: the mean over heads.
struct SelectionJob {
  int prompt = 0, step = 0, layer = 0, head = 0;
  const drawing::ColourMap* map = &drawing::kViridis;
  bool operator==(const SelectionJob& o) const {
    return prompt == o.prompt && step == o.step && layer == o.layer && head == o.head && map == o.map;
  }
  bool operator!=(const SelectionJob& o) const { return !(*this == o); }
};

struct SelectionResult {
  SelectionJob job;
  std::shared_ptr<const Grid> grid;  // null: nothing captured there, or `error`
  Image image;                       // the job's head (or mean) coloured, full resolution
  std::string error;
};

// Only the newest request matters: one asked while another is being built replaces the waiting one.
class SelectionLoader {
 public:
  explicit SelectionLoader(PanelModel& model);
  ~SelectionLoader();
  SelectionLoader(const SelectionLoader&) = delete;
  SelectionLoader& operator=(const SelectionLoader&) = delete;

  void request(const SelectionJob& job);
  // The result of the latest finished request, once.
  std::optional<SelectionResult> take();

 private:
  void work();

  PanelModel& model_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::optional<SelectionJob> pending_;
  std::optional<SelectionResult> ready_;
  bool stop_ = false;
  std::thread thread_;  // last: started once everything above is initialised
};

}  // namespace view

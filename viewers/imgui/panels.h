// The viewer's window: one frame() draws every panel (controls and token strip, layer x head
// thumbnails, the selected head's heatmap, attention bars, prompt-token bars, neurons, analyzer tables) from the
// PanelModel (a run directory or a live model) and the Selection. Panels never throw: a capture that cannot be read shows its error.
#pragma once
#include "run_model.h"
#include "textures.h"
#include "thumbnails.h"

#include <imgui.h>

#include <map>
#include <memory>
#include <string>

namespace view {

struct Selection {
  int prompt = 0, step = 0, layer = 0, head = 0;
  bool average = false;     // head mean instead of the selected head
  int query = -1, key = -1; // -1: none selected (the bars then use the last query row)
};

class Viewer {
 public:
  // `model` is null when the run could not be opened; `error` then says why.
  Viewer(std::unique_ptr<PanelModel> model, std::string error, Selection initial);

  void frame();  // draws every panel; call between ImGui::NewFrame and ImGui::Render
  // The big heatmap's screen rectangle (ImGui coordinates) in the last frame (zero size if none).
  ImVec4 heatmap_rect() const { return heatmap_rect_; }
  // True when no thumbnail is waiting to be built (a screenshot then shows the whole grid).
  bool idle() const { return idle_; }
  // Live mode: whether the model still generates or the last frame missed its latest steps, and
  // how it is doing ("" offline).
  bool model_running() const { return model_ && (model_->running() || model_->version() != seen_version_); }
  std::string live_status() const { return model_ ? model_->status() : std::string(); }
  // One line per analyzer table shown ("table NAME: N rows"), for scripts and tests.
  std::string table_summary() const;
  // The first error met (opening the run, reading a capture), empty if none.
  const std::string& error() const { return error_; }

 private:
  void controls_panel();
  void token_strip();
  void thumbnail_panel();
  void heatmap_panel();
  void bars_panel();
  void prompt_bars_panel();
  void neurons_panel();
  void tables_panel();
  void handle_keys();
  void advance_playback();

  // The selected layer's pattern at the selected step, or null (error recorded) if unreadable.
  std::shared_ptr<const Grid> selected_pattern();
  std::string texture_key(const char* what, int layer, int head) const;
  std::string token(int position) const;
  void set_step(int step);
  void follow_live();         // the live model's data changed
  void restart_thumbnails();  // after the prompt, step or colour map changed
  void take_thumbnails();
  void draw_legend(const figures::Scale& scale);
  void record_error(const std::string& message);

  std::unique_ptr<PanelModel> model_;
  std::unique_ptr<ThumbnailLoader> loader_;  // after model_: stops before the model goes
  std::string error_;
  // Layers not to read again at this prompt and step: why they failed ("" = nothing captured).
  std::map<std::string, std::string> unreadable_;
  // Held here, not only in the model's cache: the thumbnail loader's reads must not evict it.
  std::shared_ptr<const Grid> selected_;
  std::string selected_key_;
  Selection sel_;
  TextureCache textures_;
  std::vector<std::string> tokens_;  // of the selected prompt and step
  int colour_map_ = 0;               // index into kMaps
  bool playing_ = false;
  float play_clock_ = 0;
  float zoom_ = 1;                   // heatmap magnification (1: whole matrix)
  ImVec2 centre_{0.5f, 0.5f};        // heatmap view centre in texture coordinates
  ImVec4 heatmap_rect_{0, 0, 0, 0};
  bool idle_ = true;
  unsigned seen_version_ = 0;        // of the live model's data shown
  int seen_steps_ = 1;
  int table_ = 0;                    // selected analyzer table
  bool prompt_keys_only_ = false;    // attention bars: only the prompt's keys
};

}  // namespace view

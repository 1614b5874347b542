// The viewer's window: one frame() draws every panel (controls and token strip, layer x head
// thumbnails, the selected head's heatmap, attention bars, prompt-token bars, neurons, analyzer tables) from the
// PanelModel (a run directory or a live model) and the Selection. Panels never throw: a capture that cannot be read shows its error.
#pragma once
#include "run_model.h"
#include "textures.h"
#include "loaders.h"
#include "prompt_bars.h"

#include <imgui.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>

namespace view {

struct Selection {
  int prompt = 0, step = 0, layer = 0, head = 0;
  bool average = false;     // head mean instead of the selected head
  int query = -1, key = -1; // -1: none selected (the bars then use the last query row)
  std::string tab;          // the Details tab to open first: query, prompt, neurons or analyzers ("" = query)
};

class Viewer {
 public:
  // `model` is null when the run could not be opened; `error` then says why.
  Viewer(std::unique_ptr<PanelModel> model, std::string error, Selection initial);

  void frame();  // draws every panel; call between ImGui::NewFrame and ImGui::Render
  // The big heatmap's screen rectangle (ImGui coordinates) in the last frame (zero size if none).
  ImVec4 heatmap_rect() const { return heatmap_rect_; }
  // True when the heatmap shows the selection and no thumbnail is waiting to be built (a
  // screenshot then shows everything).
  bool idle() const { return !model_ || (idle_ && shown_ && requested_ && shown_->job == *requested_); }
  // Live mode: whether the model still generates or the last frame missed its latest steps, and
  // how it is doing ("" offline).
  bool model_running() const { return model_ && (model_->running() || model_->version() != seen_version_); }
  std::string live_status() const { return model_ ? model_->status() : std::string(); }
  // One line per analyzer table shown ("table NAME: N rows"), for scripts and tests.
  std::string table_summary() const;
  // "hooklens-view: RUN", and " [intervened: N]" when the run changed its model.
  std::string window_title() const;
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

  // Asks the selection loader for what sel_ selects, and takes what it finished.
  void update_selection();
  SelectionJob wanted() const;
  // The head a job shows in its grid (-1: the mean), for labels and readouts.
  static int shown_head(const SelectionResult& shown);
  std::string texture_key(const char* what, int layer, int head) const;
  std::string token(int position) const;
  void set_step(int step);
  void follow_live();         // the live model's data changed
  void restart_thumbnails();  // after the prompt, step or colour map changed
  void take_thumbnails();
  void draw_legend(const drawing::Scale& scale);
  void record_error(const std::string& message);

  std::unique_ptr<PanelModel> model_;
  std::unique_ptr<ThumbnailLoader> loader_;  // after model_: the loaders stop before the model goes
  std::unique_ptr<SelectionLoader> selection_loader_;
  std::string error_;
  // What the heatmap and the bars show: the newest finished selection (possibly an older one
  // than requested_ while the loader works), with its texture.
  std::optional<SelectionResult> shown_;
  Texture shown_texture_;
  unsigned shown_serial_ = 0;  // counts the selections shown
  PromptBars prompt_bars_;     // the Prompt tab's numbers for prompt_bars_inputs_ (shown serial, head, query)
  std::tuple<unsigned, int, int> prompt_bars_inputs_{0, 0, -2};
  std::optional<SelectionJob> requested_;
  Selection sel_;
  TextureCache textures_;            // heatmaps of the selected prompt and step
  TextureCache thumbnails_;          // "layer.head": replaced as the loader delivers
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

#include "panels.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace view {

namespace {

const drawing::ColourMap* const kMaps[] = {&drawing::kViridis, &drawing::kDiverging};
constexpr float kPlayInterval = 0.6f;  // seconds per step while playing
constexpr int kThumbnailSide = 64;     // texels: thumbnails of long runs are block means
const ImVec4 kErrorColour{1.0f, 0.35f, 0.3f, 1.0f};
const ImVec4 kNewTokenColour{0.95f, 0.75f, 0.2f, 1.0f};
const ImVec4 kIntervenedColour{1.0f, 0.55f, 0.25f, 1.0f};

// A token as a label: its text (the window's font has more than ASCII, unlike the figures' PNG
// font), spaces as '_', control characters as \xNN, at most `max_chars` characters ("~" marks a cut).
std::string token_label(const std::string& token, std::size_t max_chars) {
  std::string out;
  std::size_t chars = 0;
  for (std::size_t i = 0; i < token.size();) {
    const auto byte = static_cast<unsigned char>(token[i]);
    std::size_t n = byte < 0x80 ? 1 : byte >= 0xF0 ? 4 : byte >= 0xE0 ? 3 : byte >= 0xC0 ? 2 : 1;
    n = std::min(n, token.size() - i);
    if (chars == max_chars) return out + "~";
    if (byte == ' ') out += '_';
    else if (byte < 0x20 || byte == 0x7F) out += fmt::format("\\x{:02x}", byte);
    else out.append(token, i, n);
    i += n, ++chars;
  }
  return out;
}

ImVec4 to_imgui(drawing::Rgb c) { return {c.r / 255.0f, c.g / 255.0f, c.b / 255.0f, 1.0f}; }

// The window at a fixed fraction of the display: the layout does not depend on a saved .ini.
bool begin_pane(const char* name, float x, float y, float w, float h) {
  const ImVec2 size = ImGui::GetIO().DisplaySize;
  ImGui::SetNextWindowPos({x * size.x, y * size.y});
  ImGui::SetNextWindowSize({w * size.x, h * size.y});
  return ImGui::Begin(name, nullptr, ImGuiWindowFlags_NoMove | ImGuiWindowFlags_NoResize | ImGuiWindowFlags_NoCollapse);
}

std::string cell_text(const nlohmann::json& v) {
  if (v.is_null()) return "-";
  if (v.is_number_float()) return fmt::format("{:.4f}", v.get<double>());
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

// Orders two table cells: numbers by value, then strings, nulls last.
bool cell_less(const nlohmann::json& a, const nlohmann::json& b) {
  if (a.is_null() != b.is_null()) return b.is_null();
  if (a.is_number() && b.is_number()) return a.get<double>() < b.get<double>();
  return cell_text(a) < cell_text(b);
}

}  // namespace

Viewer::Viewer(std::unique_ptr<PanelModel> model, std::string error, Selection initial)
    : model_(std::move(model)), error_(std::move(error)), sel_(initial) {
  if (!model_) return;
  loader_ = std::make_unique<ThumbnailLoader>(*model_, kThumbnailSide);
  selection_loader_ = std::make_unique<SelectionLoader>(*model_);
  for (const std::string& w : model_->warnings()) record_error(w);
  sel_.prompt = std::clamp(sel_.prompt, 0, model_->prompt_count() - 1);
  sel_.layer = std::clamp(sel_.layer, 0, std::max(0, model_->n_layers() - 1));
  sel_.head = std::clamp(sel_.head, 0, std::max(0, model_->n_heads() - 1));
  // seen_version_ stays 0: a live model that already has steps is followed from the first frame.
  set_step(sel_.step);
}

std::string Viewer::table_summary() const {
  std::string out;
  if (model_)
    for (const HeadTable& t : model_->head_tables()) out += fmt::format("table {}: {} rows\n", t.name, t.rows.size());
  return out;
}

std::string Viewer::window_title() const {
  if (!model_) return "hooklens-view";
  const std::size_t n = model_->interventions().size();
  return fmt::format("hooklens-view: {}{}", model_->title(), n ? fmt::format(" [intervened: {}]", n) : "");
}

void Viewer::record_error(const std::string& message) {
  if (error_.empty()) error_ = message;
}

void Viewer::set_step(int step) {
  sel_.step = std::clamp(step, 0, model_->step_count() - 1);
  tokens_ = model_->tokens(sel_.prompt, sel_.step);
  restart_thumbnails();
}

void Viewer::follow_live() {
  // New steps arrived: stay on the last step if it was shown, and reread what is on screen.
  const bool at_end = sel_.step + 1 >= seen_steps_;
  seen_version_ = model_->version();
  seen_steps_ = model_->step_count();
  requested_.reset();  // read again even if the selection stays: the step may have had no data before
  set_step(at_end ? seen_steps_ - 1 : sel_.step);
}

void Viewer::restart_thumbnails() {
  textures_.clear();  // keys name the prompt, step and colour map: old ones would only pile up (thumbnails are replaced)
  loader_->start({sel_.prompt, sel_.step, kMaps[colour_map_]});
}

void Viewer::take_thumbnails() {
  for (ThumbnailLayer& done : loader_->take()) {
    if (!done.error.empty()) record_error(done.error);
    // Replaced in place: the previous step's thumbnails stay up until the new ones are ready.
    for (int head = 0; head < model_->n_heads(); ++head) {
      const std::string key = fmt::format("{}.{}", done.layer, head);
      if (head < int(done.heads.size())) thumbnails_.add(key, done.heads[std::size_t(head)]);
      else thumbnails_.erase(key);
    }
  }
  idle_ = loader_->done();
}

std::string Viewer::token(int position) const {
  if (position < 0 || position >= int(tokens_.size())) return fmt::format("#{}", position);
  return tokens_[std::size_t(position)];
}

std::string Viewer::texture_key(const char* what, int layer, int head) const {
  return fmt::format("{}.p{}.s{}.l{}.h{}.c{}", what, sel_.prompt, sel_.step, layer, head, colour_map_);
}

SelectionJob Viewer::wanted() const {
  return {sel_.prompt, sel_.step, sel_.layer, sel_.average ? -1 : sel_.head, kMaps[colour_map_]};
}

int Viewer::shown_head(const SelectionResult& shown) {
  return shown.job.head < 0 || !shown.grid ? shown.job.head : std::min(shown.job.head, shown.grid->heads - 1);
}

void Viewer::update_selection() {
  if (auto done = selection_loader_->take()) {
    if (!done->error.empty()) record_error(done->error);
    if (done->grid) shown_texture_ = Texture(done->image.pixels, done->image.width, done->image.height, done->image.scale);
    shown_ = std::move(done);
    ++shown_serial_;
  }
  const SelectionJob want = wanted();
  if (!requested_ || want != *requested_) {
    selection_loader_->request(want);
    requested_ = want;
  }
}

void Viewer::frame() {
  if (!model_) {
    begin_pane("hooklens-view", 0, 0, 1, 1);
    ImGui::TextColored(kErrorColour, "Cannot open the run:");
    ImGui::PushTextWrapPos(0);
    ImGui::TextColored(kErrorColour, "%s", error_.c_str());
    ImGui::PopTextWrapPos();
    ImGui::End();
    return;
  }
  if (model_->version() != seen_version_) follow_live();
  handle_keys();
  advance_playback();
  update_selection();
  if (begin_pane("Run", 0, 0, 1, 0.2f)) {
    controls_panel();
    token_strip();
  }
  ImGui::End();
  if (begin_pane("Heads (layer x head)", 0, 0.2f, 0.28f, 0.8f)) thumbnail_panel();
  ImGui::End();
  if (begin_pane("Heatmap", 0.28f, 0.2f, 0.44f, 0.8f)) heatmap_panel();
  ImGui::End();
  if (begin_pane("Details", 0.72f, 0.2f, 0.28f, 0.8f) && ImGui::BeginTabBar("details")) {
    // The tab asked for at start (--tab) is selected once; afterwards the user's clicks rule.
    const auto tab = [&](const char* label, const char* name) {
      const bool open = ImGui::BeginTabItem(label, nullptr, sel_.tab == name ? ImGuiTabItemFlags_SetSelected : 0);
      if (sel_.tab == name) sel_.tab.clear();
      return open;
    };
    if (tab("Query", "query")) bars_panel(), ImGui::EndTabItem();
    if (model_->generation_mode() != hooklens::GenerationMode::none && tab("Prompt", "prompt")) prompt_bars_panel(), ImGui::EndTabItem();
    if (tab("Neurons", "neurons")) neurons_panel(), ImGui::EndTabItem();
    if (tab("Analyzers", "analyzers")) tables_panel(), ImGui::EndTabItem();
    ImGui::EndTabBar();
  }
  ImGui::End();
}

void Viewer::handle_keys() {
  if (ImGui::GetIO().WantTextInput) return;
  const auto pressed = [](ImGuiKey key) { return ImGui::IsKeyPressed(ImGui::GetKeyIndex(key)); };
  if (pressed(ImGuiKey_LeftArrow)) set_step(sel_.step - 1);
  if (pressed(ImGuiKey_RightArrow)) set_step(sel_.step + 1);
  if (pressed(ImGuiKey_UpArrow)) sel_.layer = std::max(0, sel_.layer - 1);
  if (pressed(ImGuiKey_DownArrow)) sel_.layer = std::min(model_->n_layers() - 1, sel_.layer + 1);
  if (pressed(ImGuiKey_Space)) playing_ = !playing_;
  if (ImGui::IsKeyPressed('A', false)) sel_.average = !sel_.average;  // GLFW key codes are ASCII
  if (ImGui::IsKeyPressed('R', false)) zoom_ = 1, centre_ = {0.5f, 0.5f};
}

void Viewer::advance_playback() {
  if (!playing_) return;
  play_clock_ += ImGui::GetIO().DeltaTime;
  if (play_clock_ < kPlayInterval) return;
  play_clock_ = 0;
  if (sel_.step + 1 >= model_->step_count()) playing_ = false;
  else set_step(sel_.step + 1);
}

void Viewer::controls_panel() {
  ImGui::Text("%s  |  %s, %d layers x %d heads", model_->title().c_str(), hooklens::generation_mode_name(model_->generation_mode()),
              model_->n_layers(), model_->n_heads());
  const std::string status = model_->status();
  if (!status.empty()) {
    ImGui::SameLine();
    ImGui::Text("|  %s", status.c_str());
  }
  if (model_->running()) {
    ImGui::SameLine();
    if (ImGui::Button("Stop")) model_->stop();
  }
  // A run that changed its model says so before anything else: every panel shows the changed model.
  if (const std::vector<std::string>& changed = model_->interventions(); !changed.empty()) {
    ImGui::PushStyleColor(ImGuiCol_Text, kIntervenedColour);
    const std::string label = fmt::format("INTERVENED: this run was changed by {} intervention{} (the panels show the changed model)",
                                          changed.size(), changed.size() == 1 ? "" : "s");
    // Closed at first (the list, open, takes the token strip's room); hovering shows it too.
    const bool open = ImGui::TreeNode("interventions", "%s", label.c_str());
    ImGui::PopStyleColor();
    if (!open && ImGui::IsItemHovered()) {
      ImGui::BeginTooltip();
      for (const std::string& line : changed) ImGui::TextUnformatted(line.c_str());
      ImGui::EndTooltip();
    }
    if (open) {
      for (const std::string& line : changed) ImGui::BulletText("%s", line.c_str());  // never a format string
      ImGui::TreePop();
    }
  }
  if (!error_.empty()) ImGui::TextColored(kErrorColour, "error: %s", error_.c_str());
  ImGui::SetNextItemWidth(ImGui::GetFontSize() * 6);
  if (ImGui::InputInt("prompt", &sel_.prompt)) {
    sel_.prompt = std::clamp(sel_.prompt, 0, model_->prompt_count() - 1);
    set_step(sel_.step);
  }
  ImGui::SameLine();
  int step = sel_.step;
  ImGui::SetNextItemWidth(ImGui::GetFontSize() * 16);
  if (ImGui::SliderInt("step", &step, 0, model_->step_count() - 1)) set_step(step);
  ImGui::SameLine();
  if (ImGui::Button(playing_ ? "Pause" : "Play")) {
    if (!playing_ && sel_.step + 1 >= model_->step_count()) set_step(0);
    playing_ = !playing_;
  }
  ImGui::SameLine();
  ImGui::Checkbox("head mean (A)", &sel_.average);
  ImGui::SameLine();
  ImGui::SetNextItemWidth(ImGui::GetFontSize() * 8);
  if (ImGui::BeginCombo("colours", kMaps[colour_map_]->name)) {
    for (int i = 0; i < int(std::size(kMaps)); ++i)
      if (ImGui::Selectable(kMaps[i]->name, i == colour_map_) && i != colour_map_) colour_map_ = i, restart_thumbnails();
    ImGui::EndCombo();
  }
  ImGui::SameLine();
  ImGui::Text("layer %d head %s  |  %.0f fps", sel_.layer, sel_.average ? "mean" : std::to_string(sel_.head).c_str(),
              ImGui::GetIO().Framerate);
}

void Viewer::token_strip() {
  const std::vector<int> fresh = model_->new_positions(sel_.prompt, sel_.step);
  ImGui::TextDisabled("tokens: click = query, right-click = key; highlighted = new at this step");
  ImGui::BeginChild("tokens", {0, 0}, true);
  const float right = ImGui::GetWindowContentRegionMax().x;
  for (int i = 0; i < int(tokens_.size()); ++i) {
    const std::string label = fmt::format("{}##t{}", token_label(tokens_[std::size_t(i)], 16), i);
    const bool is_new = std::find(fresh.begin(), fresh.end(), i) != fresh.end();
    if (is_new) ImGui::PushStyleColor(ImGuiCol_Text, kNewTokenColour);
    const ImVec2 size = ImGui::CalcTextSize(label.c_str(), nullptr, true);
    if (ImGui::Selectable(label.c_str(), sel_.query == i || sel_.key == i, 0, size)) sel_.query = i;
    if (ImGui::IsItemClicked(ImGuiMouseButton_Right)) sel_.key = i;
    if (ImGui::IsItemHovered()) ImGui::SetTooltip("position %d: \"%s\"", i, tokens_[std::size_t(i)].c_str());
    if (is_new) ImGui::PopStyleColor();
    // Wrap like text: the next token goes on this line if it fits.
    const float next = ImGui::GetItemRectMax().x + ImGui::GetStyle().ItemSpacing.x + size.x;
    if (i + 1 < int(tokens_.size()) && next < ImGui::GetWindowPos().x + right) ImGui::SameLine();
  }
  ImGui::EndChild();
}

void Viewer::thumbnail_panel() {
  take_thumbnails();
  const int heads = std::max(1, model_->n_heads());
  const float side = std::clamp((ImGui::GetContentRegionAvail().x - ImGui::GetFontSize() * 2) / float(heads) - 2, 6.0f,
                                ImGui::GetFontSize() * 3);
  ImGuiListClipper clipper;
  clipper.Begin(model_->n_layers(), side + 2);
  while (clipper.Step()) {
    for (int layer = clipper.DisplayStart; layer < clipper.DisplayEnd; ++layer) {
      ImGui::Text("%2d", layer);
      for (int head = 0; head < heads; ++head) {
        ImGui::SameLine(0, 2);
        ImGui::PushID(layer * heads + head);
        const bool selected = layer == sel_.layer && (sel_.average || head == sel_.head);
        if (const Texture* tex = thumbnails_.find(fmt::format("{}.{}", layer, head))) {
          const ImVec4 border = selected ? ImVec4{1, 1, 1, 1} : ImVec4{0, 0, 0, 0};
          if (ImGui::ImageButton(tex->imgui_id(), {side, side}, {0, 0}, {1, 1}, 1, border))
            sel_.layer = layer, sel_.head = head, sel_.average = false;
          if (ImGui::IsItemHovered()) ImGui::SetTooltip("layer %d head %d", layer, head);
        } else {
          ImGui::Dummy({side + 2, side + 2});  // not built yet, or nothing captured
        }
        ImGui::PopID();
      }
    }
  }
}

void Viewer::draw_legend(const drawing::Scale& scale) {
  const Texture& bar = textures_.legend(*scale.map);
  const float width = std::min(ImGui::GetContentRegionAvail().x * 0.6f, ImGui::GetFontSize() * 20);
  ImGui::Text("%.3g", scale.lo);
  ImGui::SameLine();
  ImGui::Image(bar.imgui_id(), {width, ImGui::GetFontSize()});
  ImGui::SameLine();
  ImGui::Text("%.3g", scale.hi);
}

void Viewer::heatmap_panel() {
  heatmap_rect_ = {0, 0, 0, 0};
  if (!shown_) {
    ImGui::TextDisabled("loading layer %d ...", sel_.layer);
    return;
  }
  const SelectionJob& job = shown_->job;
  const bool loading = requested_ && job != *requested_;
  const auto& grid = shown_->grid;
  if (!grid) {
    const std::string why = model_->why_missing(job.step);
    ImGui::PushTextWrapPos(0);
    if (!shown_->error.empty()) ImGui::TextColored(kErrorColour, "%s", shown_->error.c_str());
    else if (!why.empty()) ImGui::TextDisabled("%s", why.c_str());
    else ImGui::TextDisabled("layer %d has no attention pattern at step %d", job.layer, job.step);
    ImGui::PopTextWrapPos();
    return;
  }
  const int head = shown_head(*shown_);
  const Texture& tex = shown_texture_;
  ImGui::Text("layer %d, %s, step %d: %d queries x %d keys  (wheel: zoom, drag: pan, R: reset)%s", job.layer,
              head < 0 ? "head mean" : fmt::format("head {}", head).c_str(), job.step, grid->rows, grid->cols,
              loading ? "  loading..." : "");
  draw_legend(tex.scale());

  // The canvas keeps the matrix's aspect ratio inside the space left.
  const ImVec2 avail = ImGui::GetContentRegionAvail();
  const float side = std::max(16.0f, std::min(avail.x, avail.y - ImGui::GetFontSize() * 2));
  const float longest = float(std::max(grid->rows, grid->cols));
  const ImVec2 size{side * grid->cols / longest, side * grid->rows / longest};
  const ImVec2 p0 = ImGui::GetCursorScreenPos(), p1{p0.x + size.x, p0.y + size.y};
  ImGui::InvisibleButton("heatmap", size);
  const bool hovered = ImGui::IsItemHovered();
  ImGuiIO& io = ImGui::GetIO();
  const auto uv_at = [&](ImVec2 m) {
    const float half = 0.5f / zoom_;
    return ImVec2{centre_.x - half + (m.x - p0.x) / size.x / zoom_, centre_.y - half + (m.y - p0.y) / size.y / zoom_};
  };
  if (hovered && io.MouseWheel != 0) {
    // Zoom about the mouse: the texel under it stays under it.
    const ImVec2 before = uv_at(io.MousePos);
    zoom_ = std::clamp(zoom_ * std::pow(1.25f, io.MouseWheel), 1.0f, 64.0f);
    const ImVec2 after = uv_at(io.MousePos);
    centre_.x += before.x - after.x, centre_.y += before.y - after.y;
  }
  if (ImGui::IsItemActive() && ImGui::IsMouseDragging(ImGuiMouseButton_Left)) {
    centre_.x -= io.MouseDelta.x / size.x / zoom_;
    centre_.y -= io.MouseDelta.y / size.y / zoom_;
  }
  const float half = 0.5f / zoom_;
  centre_.x = std::clamp(centre_.x, half, 1 - half);
  centre_.y = std::clamp(centre_.y, half, 1 - half);
  const ImVec2 uv0{centre_.x - half, centre_.y - half}, uv1{centre_.x + half, centre_.y + half};
  ImDrawList* draw = ImGui::GetWindowDrawList();
  draw->AddImage(tex.imgui_id(), p0, p1, uv0, uv1);
  heatmap_rect_ = {p0.x, p0.y, size.x, size.y};

  // Outline the selected query row and key column where they are in view.
  const auto screen_x = [&](float col) { return p0.x + (col / grid->cols - uv0.x) * zoom_ * size.x; };
  const auto screen_y = [&](float row) { return p0.y + (row / grid->rows - uv0.y) * zoom_ * size.y; };
  draw->PushClipRect(p0, p1, true);
  if (sel_.query >= 0 && sel_.query < grid->rows)
    draw->AddRect({p0.x, screen_y(sel_.query)}, {p1.x, screen_y(sel_.query + 1)}, IM_COL32(255, 255, 255, 220));
  if (sel_.key >= 0 && sel_.key < grid->cols)
    draw->AddRect({screen_x(sel_.key), p0.y}, {screen_x(sel_.key + 1), p1.y}, IM_COL32(255, 120, 120, 220));
  draw->PopClipRect();

  if (!hovered) return;
  const ImVec2 uv = uv_at(io.MousePos);
  const int row = std::clamp(int(uv.y * grid->rows), 0, grid->rows - 1), col = std::clamp(int(uv.x * grid->cols), 0, grid->cols - 1);
  const float weight = head < 0 ? grid->mean_at(row, col) : grid->at(head, row, col);
  ImGui::SetTooltip("query %d \"%s\"\nkey %d \"%s\"\nweight %s", row, token(row).c_str(), col, token(col).c_str(),
                    std::isfinite(weight) ? fmt::format("{:.5f}", weight).c_str() : "not captured");
  if (ImGui::IsMouseReleased(ImGuiMouseButton_Left) && ImGui::GetMouseDragDelta(ImGuiMouseButton_Left, 0).x == 0)
    sel_.query = row, sel_.key = col;
}

void Viewer::bars_panel() {
  const auto grid = shown_ ? shown_->grid : nullptr;
  if (!grid || grid->rows == 0) {
    ImGui::TextDisabled("no attention pattern at this step");
    return;
  }
  const int head = shown_head(*shown_);
  const int query = sel_.query >= 0 && sel_.query < grid->rows ? sel_.query : grid->rows - 1;
  ImGui::Checkbox("prompt tokens only", &prompt_keys_only_);
  const int keys = prompt_keys_only_ ? std::min(grid->cols, model_->prompt_length(sel_.prompt)) : grid->cols;
  ImGui::TextWrapped("attention from query %d \"%s\" (layer %d, %s) to each key:", query, token(query).c_str(),
                     shown_->job.layer, head < 0 ? "head mean" : fmt::format("head {}", head).c_str());
  if (ImGui::BeginTable("bars", 3, ImGuiTableFlags_ScrollY | ImGuiTableFlags_RowBg)) {
    ImGui::TableSetupColumn("key", ImGuiTableColumnFlags_WidthFixed, ImGui::GetFontSize() * 8);
    ImGui::TableSetupColumn("weight", ImGuiTableColumnFlags_WidthStretch);
    ImGui::TableSetupColumn("value", ImGuiTableColumnFlags_WidthFixed, ImGui::GetFontSize() * 4);
    ImGuiListClipper clipper;
    clipper.Begin(keys);
    while (clipper.Step())
      for (int k = clipper.DisplayStart; k < clipper.DisplayEnd; ++k) {
        const float w = head < 0 ? grid->mean_at(query, k) : grid->at(head, query, k);
        ImGui::TableNextRow();
        ImGui::TableNextColumn();
        ImGui::Text("%d %s", k, token_label(token(k), 10).c_str());
        ImGui::TableNextColumn();
        ImGui::PushStyleColor(ImGuiCol_PlotHistogram, to_imgui(drawing::colour_at(*kMaps[0], 0.7)));
        ImGui::ProgressBar(std::isfinite(w) ? w : 0.0f, {-1, 0}, "");
        ImGui::PopStyleColor();
        ImGui::TableNextColumn();
        ImGui::Text(std::isfinite(w) ? "%.3f" : "-", w);
      }
    ImGui::EndTable();
  }
}

void Viewer::prompt_bars_panel() {
  const auto grid = shown_ ? shown_->grid : nullptr;
  const int prompt_length = model_->prompt_length(sel_.prompt);
  const bool autoregressive = model_->generation_mode() == hooklens::GenerationMode::autoregressive;
  const int head = grid ? shown_head(*shown_) : 0;
  // Recomputed only when its inputs change (a head mean over a long run reads every head's rows).
  const std::tuple<unsigned, int, int> inputs{shown_serial_, head, sel_.query};
  if (inputs != prompt_bars_inputs_) {
    prompt_bars_ = grid ? prompt_bars(*grid, head, prompt_length, autoregressive, sel_.query) : PromptBars{};
    prompt_bars_inputs_ = inputs;
  }
  const PromptBars& bars = prompt_bars_;
  if (bars.rows.empty()) {
    ImGui::TextDisabled("no generated token's attention at this step");
    return;
  }
  ImGui::TextWrapped("attention to each prompt token (layer %d, %s) %s, averaged over %zu generated token(s)%s; bars relative to each column's largest",
                     shown_->job.layer, head < 0 ? "head mean" : fmt::format("head {}", head).c_str(),
                     autoregressive ? "while choosing each generated token" : "from the generated region's positions",
                     bars.rows.size(), bars.chosen_row >= 0 ? "; and for the chosen one (select a generated token)" : "");
  const int chosen = autoregressive ? bars.chosen_row + 1 : bars.chosen_row;  // the chosen token's position
  const int columns = bars.chosen.empty() ? 2 : 3;
  if (!ImGui::BeginTable("prompt bars", columns, ImGuiTableFlags_ScrollY | ImGuiTableFlags_RowBg)) return;
  ImGui::TableSetupScrollFreeze(0, 1);
  ImGui::TableSetupColumn("prompt token", ImGuiTableColumnFlags_WidthFixed, ImGui::GetFontSize() * 8);
  ImGui::TableSetupColumn("mean over generated", ImGuiTableColumnFlags_WidthStretch);
  if (columns == 3)
    ImGui::TableSetupColumn(fmt::format("{} \"{}\"", chosen, token_label(token(chosen), 8)).c_str(),
                            ImGuiTableColumnFlags_WidthStretch);
  ImGui::TableHeadersRow();
  // Bars are drawn relative to their column's largest weight (prompt tokens often share little
  // attention); the numbers are the weights themselves.
  const auto largest = [](const std::vector<float>& v) { return v.empty() ? 1.0f : std::max(1e-6f, *std::max_element(v.begin(), v.end())); };
  const float mean_max = largest(bars.mean), chosen_max = largest(bars.chosen);
  const auto bar = [](float w, float longest, float colour) {
    ImGui::PushStyleColor(ImGuiCol_PlotHistogram, to_imgui(drawing::colour_at(*kMaps[0], colour)));
    ImGui::ProgressBar(w / longest, {-1, 0}, fmt::format("{:.3f}", w).c_str());
    ImGui::PopStyleColor();
  };
  ImGuiListClipper clipper;
  clipper.Begin(int(bars.mean.size()));
  while (clipper.Step())
    for (int k = clipper.DisplayStart; k < clipper.DisplayEnd; ++k) {
      ImGui::TableNextRow();
      ImGui::TableNextColumn();
      if (ImGui::Selectable(fmt::format("{} {}##p{}", k, token_label(token(k), 10), k).c_str(), sel_.key == k,
                            ImGuiSelectableFlags_SpanAllColumns))
        sel_.key = k;
      ImGui::TableNextColumn();
      bar(bars.mean[std::size_t(k)], mean_max, 0.7f);
      if (columns == 3) ImGui::TableNextColumn(), bar(bars.chosen[std::size_t(k)], chosen_max, 0.45f);
    }
  ImGui::EndTable();
}

void Viewer::neurons_panel() {
  if (!model_->has_neurons()) {
    ImGui::TextWrapped("no blocks.L.mlp.hook_post captures in this run (capture them with --hooks 'blocks.*.mlp.hook_post')");
    return;
  }
  std::shared_ptr<const Grid> grid;
  try {
    grid = model_->neurons(sel_.prompt, sel_.step, sel_.layer);
  } catch (const std::exception& e) {
    record_error(e.what());
    ImGui::TextColored(kErrorColour, "%s", e.what());
    return;
  }
  if (!grid) {
    ImGui::TextDisabled("layer %d: no MLP activations at step %d", sel_.layer, sel_.step);
    return;
  }
  const Texture& tex = textures_.heatmap(texture_key("neurons", sel_.layer, 0), *grid, {0, 0, &drawing::kDiverging, true});
  ImGui::Text("layer %d mlp.hook_post, step %d: %d position(s) x %d neurons", sel_.layer, sel_.step, grid->rows, grid->cols);
  draw_legend(tex.scale());
  const float width = ImGui::GetContentRegionAvail().x;
  // Rows at least half a line high, so a decode step's single row is still visible.
  const float height = std::max(width * grid->rows / std::max(1, grid->cols) * 4, grid->rows * ImGui::GetFontSize() * 0.5f);
  const ImVec2 size{width, std::min(height, ImGui::GetContentRegionAvail().y)};
  const ImVec2 p0 = ImGui::GetCursorScreenPos();
  ImGui::Image(tex.imgui_id(), size);
  if (!ImGui::IsItemHovered()) return;
  const ImVec2 m = ImGui::GetIO().MousePos;
  const int row = std::clamp(int((m.y - p0.y) / size.y * grid->rows), 0, grid->rows - 1);
  const int col = std::clamp(int((m.x - p0.x) / size.x * grid->cols), 0, grid->cols - 1);
  const int position = grid->first_row + row;
  ImGui::SetTooltip("position %d \"%s\"\nneuron %d\nactivation %.5f", position, token(position).c_str(), col,
                    grid->at(0, row, col));
}

void Viewer::tables_panel() {
  const auto& tables = model_->head_tables();
  if (tables.empty()) {
    ImGui::TextWrapped("no analyzer reports in RUN/reports (run: hooklens analyze RUN --analyze attention_stats,head_detectors)");
    return;
  }
  table_ = std::clamp(table_, 0, int(tables.size()) - 1);
  if (ImGui::BeginCombo("report", tables[std::size_t(table_)].name.c_str())) {
    for (int i = 0; i < int(tables.size()); ++i)
      if (ImGui::Selectable(tables[std::size_t(i)].name.c_str(), i == table_)) table_ = i;
    ImGui::EndCombo();
  }
  const HeadTable& t = tables[std::size_t(table_)];
  const int columns = std::min(int(t.columns.size()), 64);  // ImGui tables cap the column count
  const ImGuiTableFlags flags = ImGuiTableFlags_Sortable | ImGuiTableFlags_ScrollX | ImGuiTableFlags_ScrollY |
                                ImGuiTableFlags_RowBg | ImGuiTableFlags_Borders | ImGuiTableFlags_Resizable;
  if (columns == 0 || !ImGui::BeginTable("heads", columns, flags)) return;
  ImGui::TableSetupScrollFreeze(2, 1);
  for (int c = 0; c < columns; ++c) ImGui::TableSetupColumn(t.columns[std::size_t(c)].c_str());
  ImGui::TableHeadersRow();
  // The row order follows the clicked column header (recomputed each frame: tables are small).
  std::vector<std::size_t> order(t.rows.size());
  std::iota(order.begin(), order.end(), 0);
  if (const ImGuiTableSortSpecs* specs = ImGui::TableGetSortSpecs(); specs && specs->SpecsCount > 0) {
    const int c = specs->Specs[0].ColumnIndex;
    const bool ascending = specs->Specs[0].SortDirection == ImGuiSortDirection_Ascending;
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      const auto &x = t.rows[a][std::size_t(c)], &y = t.rows[b][std::size_t(c)];
      return ascending ? cell_less(x, y) : cell_less(y, x);
    });
  }
  ImGuiListClipper clipper;
  clipper.Begin(int(order.size()));
  while (clipper.Step())
    for (int i = clipper.DisplayStart; i < clipper.DisplayEnd; ++i) {
      const auto& row = t.rows[order[std::size_t(i)]];
      ImGui::TableNextRow();
      for (int c = 0; c < columns; ++c) {
        ImGui::TableNextColumn();
        if (c > 0) {
          ImGui::TextUnformatted(cell_text(row[std::size_t(c)]).c_str());
          continue;
        }
        // Clicking the first cell selects the row's head.
        const bool selectable = row[0].is_number() && row[1].is_number();
        if (ImGui::Selectable(fmt::format("{}##r{}", cell_text(row[0]), i).c_str(), false,
                              ImGuiSelectableFlags_SpanAllColumns) && selectable)
          sel_.layer = std::clamp(row[0].get<int>(), 0, model_->n_layers() - 1), sel_.head = row[1].get<int>(), sel_.average = false;
      }
    }
  ImGui::EndTable();
}

}  // namespace view

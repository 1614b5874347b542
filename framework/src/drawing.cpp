// See hooklens/drawing.h. One Canvas (a Cairo context) draws every format; only the surface differs.
#include <hooklens/drawing.h>
#include <hooklens/error.h>
#include <hooklens/tokenizer.h>

#include <cairo-ft.h>
#include <cairo-pdf.h>
#include <cairo-svg.h>
#include <cairo.h>
#include <fmt/format.h>
#include <ft2build.h>
#include FT_FREETYPE_H

#include <algorithm>
#include <cmath>

namespace hooklens::drawing {

namespace fs = std::filesystem;
using nlohmann::json;

// ---- colour maps ---------------------------------------------------------------------------------

namespace {
// Viridis at 11 evenly spaced points: perceptually uniform.
constexpr Rgb kViridisStops[] = {{68, 1, 84},    {72, 36, 117},  {65, 68, 135},  {53, 95, 141},
                                 {42, 120, 142}, {33, 145, 140}, {34, 168, 132}, {68, 191, 112},
                                 {122, 209, 81}, {189, 223, 38}, {253, 231, 37}};
constexpr Rgb kDivergingStops[] = {{33, 102, 172}, {103, 169, 207}, {247, 247, 247}, {239, 138, 98}, {178, 24, 43}};
}  // namespace

const ColourMap kViridis{"viridis", kViridisStops, std::size(kViridisStops)};
const ColourMap kDiverging{"blue-white-red", kDivergingStops, std::size(kDivergingStops)};

Rgb colour_at(const ColourMap& map, double t) {
  const double x = std::clamp(t, 0.0, 1.0) * double(map.count - 1);
  const std::size_t i = std::min(std::size_t(x), map.count - 2);
  const double f = x - double(i);
  auto mix = [f](std::uint8_t a, std::uint8_t b) { return std::uint8_t(std::lround(a + (b - a) * f)); };
  const Rgb &lo = map.stops[i], &hi = map.stops[i + 1];
  return {mix(lo.r, hi.r), mix(lo.g, hi.g), mix(lo.b, hi.b)};
}

Rgb colour_of(const Scale& scale, double v) {
  if (!std::isfinite(v)) return kMissing;
  return colour_at(*scale.map, (v - scale.lo) / (scale.hi - scale.lo));
}

// ---- matrices ------------------------------------------------------------------------------------

Matrix difference(const Matrix& later, const Matrix& earlier) {
  Matrix d = later;
  for (std::size_t i = 0; i < d.values.size(); ++i) d.values[i] -= earlier.values[i];
  return d;
}

Scale sequential_scale(const std::vector<const Matrix*>& matrices) {
  Scale s{0.0, 0.0, &kViridis};
  for (const Matrix* m : matrices)
    for (double v : m->values)
      if (std::isfinite(v)) s.lo = std::min(s.lo, v), s.hi = std::max(s.hi, v);
  if (s.hi <= s.lo) s.hi = s.lo + 1.0;  // a constant matrix: any range draws it in one colour
  return s;
}

Scale signed_scale(const Matrix& m) {
  double largest = 0.0;
  for (double v : m.values)
    if (std::isfinite(v)) largest = std::max(largest, std::abs(v));
  if (largest == 0.0) largest = 1.0;
  return {-largest, largest, &kDiverging};
}

int cell_size(std::int64_t cells, int requested) {
  if (requested > 0) return requested;
  return int(std::clamp<std::int64_t>(512 / std::max<std::int64_t>(cells, 1), 1, 24));
}

std::vector<std::string> thin_labels(std::vector<std::string> labels, int cell) {
  const std::size_t every = std::size_t((kLabelledCell + std::max(cell, 1) - 1) / std::max(cell, 1));
  for (std::size_t i = 0; i < labels.size(); ++i)
    if (i % every != 0) labels[i].clear();
  return labels;
}

// ---- text ----------------------------------------------------------------------------------------

namespace {

// One font file, named exactly, so a figure looks the same on every machine (no fontconfig choice).
constexpr const char* kFontFile = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
constexpr double kTextSize = 11, kTitleSize = 13;  // px (pt in a PDF): labels, ticks, captions; titles

// The DejaVu Sans face, loaded once and kept for the process (Cairo caches faces globally).
cairo_font_face_t* font_face() {
  static cairo_font_face_t* const face = [] {
    FT_Library library = nullptr;
    if (FT_Init_FreeType(&library) != 0) throw hooklens::Error("cannot initialise FreeType for the figures' text");
    FT_Face ft = nullptr;
    if (FT_New_Face(library, kFontFile, 0, &ft) != 0)
      throw hooklens::Error(fmt::format("{}: the figures' font is missing (install Debian's fonts-dejavu-core)", kFontFile));
    return cairo_ft_font_face_create_for_ft_face(ft, 0);
  }();
  return face;
}

// Grey-level antialiasing, unhinted outlines, whole-pixel advances: with text placed at whole pixels
// every glyph sits on a pixel boundary in a PNG, an SVG or a PDF alike (Cairo's image surface rounds
// glyph positions; fractional advances would move glyphs by up to half a pixel between formats).
void use_font(cairo_t* cr, double size) {
  cairo_set_font_face(cr, font_face());
  cairo_set_font_size(cr, size);
  cairo_font_options_t* options = cairo_font_options_create();
  cairo_font_options_set_antialias(options, CAIRO_ANTIALIAS_GRAY);
  cairo_font_options_set_hint_style(options, CAIRO_HINT_STYLE_NONE);
  cairo_font_options_set_hint_metrics(options, CAIRO_HINT_METRICS_ON);
  cairo_set_font_options(cr, options);
  cairo_font_options_destroy(options);
}

// Valid UTF-8 without control characters: Cairo refuses anything else (and stops drawing).
std::string drawable(const std::string& text) {
  std::string s = hooklens::utf8_decode_replace(text);
  for (char& c : s)
    if ((unsigned char)c < 32 || c == 127) c = '?';
  return s;
}

// A context on a 1x1 surface for measuring text outside a figure (Panel::width() and friends).
class Measurer {
 public:
  Measurer() : surface_(cairo_image_surface_create(CAIRO_FORMAT_RGB24, 1, 1)), cr_(cairo_create(surface_)) {}
  ~Measurer() { cairo_destroy(cr_), cairo_surface_destroy(surface_); }
  Measurer(const Measurer&) = delete;
  Measurer& operator=(const Measurer&) = delete;
  cairo_t* at(double size) {
    use_font(cr_, size);
    return cr_;
  }

 private:
  cairo_surface_t* surface_;
  cairo_t* cr_;
};
cairo_t* measuring(double size) {
  thread_local Measurer m;
  return m.at(size);
}

// Whole pixels, so that layouts (and the geometry tests read) are integers.
int text_width(const std::string& text, double size = kTextSize) {
  if (text.empty()) return 0;
  cairo_text_extents_t e;
  const std::string s = drawable(text);
  cairo_text_extents(measuring(size), s.c_str(), &e);
  return int(std::ceil(e.x_advance));
}
struct LineMetrics {
  double ascent, descent;
  int height;  // one line, whole pixels
};
LineMetrics line(double size = kTextSize) {
  cairo_font_extents_t e;
  cairo_font_extents(measuring(size), &e);
  return {e.ascent, e.descent, int(std::ceil(e.ascent + e.descent))};
}
// From a line's middle to its baseline: half DejaVu Sans's cap height, so labels sit centred on cells.
double centre_to_baseline(double size = kTextSize) { return 0.365 * size; }

int widest(const std::vector<std::string>& labels, double size = kTextSize) {
  int w = 0;
  for (const auto& l : labels) w = std::max(w, text_width(l, size));
  return w;
}

// `text` broken at spaces into lines at most `width` wide (a longer word gets a line of its own), so
// a long title does not widen its panel's column and leave a gap beside the heatmap.
std::vector<std::string> wrap(const std::string& text, int width, double size) {
  std::vector<std::string> lines;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find(' ', start);
    if (end == std::string::npos) end = text.size();
    std::string word = text.substr(start, end - start);
    if (!lines.empty() && text_width(lines.back() + " " + word, size) <= width) lines.back() += " " + word;
    else lines.push_back(word);
    start = end + 1;
  }
  return lines;
}

// ---- the canvas: a Cairo context on a PNG, SVG or PDF surface ------------------------------------

enum class Align { kLeft, kRight };

class Canvas {
 public:
  Canvas(const fs::path& file, int width, int height) : file_(file) {
    const std::string ext = file.extension().string();
    if (ext == ".svg") {
      surface_ = cairo_svg_surface_create(file.string().c_str(), width, height);
      cairo_svg_surface_set_document_unit(surface_, CAIRO_SVG_UNIT_PX);  // as wide as the PNG in a browser
    } else if (ext == ".pdf") {
      surface_ = cairo_pdf_surface_create(file.string().c_str(), width, height);
    } else {
      surface_ = cairo_image_surface_create(CAIRO_FORMAT_RGB24, width, height);
      png_ = true;
    }
    check(cairo_surface_status(surface_), "cannot create the figure");
    cr_ = cairo_create(surface_);
    cairo_set_source_rgb(cr_, 1, 1, 1);
    cairo_paint(cr_);
  }
  ~Canvas() { cairo_destroy(cr_), cairo_surface_destroy(surface_); }
  Canvas(const Canvas&) = delete;
  Canvas& operator=(const Canvas&) = delete;

  // Rectangles on whole pixels, not antialiased: exact colours in a PNG.
  void fill(int x, int y, int w, int h, Rgb c) {
    cairo_set_antialias(cr_, CAIRO_ANTIALIAS_NONE);
    set_colour(c);
    cairo_rectangle(cr_, x, y, w, h);
    cairo_fill(cr_);
  }
  // Black text starting (kLeft) or ending (kRight) at x, its line's top at y.
  void text(double x, double y, const std::string& text, double size = kTextSize, Align align = Align::kLeft) {
    if (text.empty()) return;
    const double from = align == Align::kRight ? x - text_width(text, size) : x;
    show(from, y + line(size).ascent, 0, text, size);
  }
  // Black text centred on the horizontal line y.
  void text_centred_on(double x, double y, const std::string& text, Align align) {
    if (text.empty()) return;
    const double from = align == Align::kRight ? x - text_width(text) : x;
    show(from, y + centre_to_baseline(), 0, text, kTextSize);
  }
  // Black text turned a quarter left (reading upwards), centred on the vertical line x, ending at top.
  void text_up(double x, double top, const std::string& text) {
    if (text.empty()) return;
    show(x + centre_to_baseline(), top + text_width(text), -M_PI / 2, text, kTextSize);
  }
  // The matrix's cells, top-left at (x, y), as an image enlarged without smoothing. A PNG scales one
  // pixel per cell; an SVG or PDF embeds the cells at the figure's size, because a browser or PDF
  // viewer may smooth an image it enlarges (Cairo's SVG has no "pixelated" hint).
  void cells(int x, int y, const Matrix& m, const Scale& scale, int cell_w, int cell_h) {
    if (m.rows == 0 || m.cols == 0) return;
    const int sx = png_ ? 1 : cell_w, sy = png_ ? 1 : cell_h;
    cairo_surface_t* image = cairo_image_surface_create(CAIRO_FORMAT_RGB24, int(m.cols) * sx, int(m.rows) * sy);
    check(cairo_surface_status(image), "cannot allocate a heatmap's cells");
    cairo_surface_flush(image);
    unsigned char* data = cairo_image_surface_get_data(image);
    const int stride = cairo_image_surface_get_stride(image);
    for (std::int64_t r = 0; r < m.rows; ++r)
      for (std::int64_t c = 0; c < m.cols; ++c) {
        const Rgb rgb = colour_of(scale, m.at(r, c));
        const std::uint32_t pixel = std::uint32_t(rgb.r) << 16 | std::uint32_t(rgb.g) << 8 | rgb.b;
        for (int dy = 0; dy < sy; ++dy)
          std::fill_n(reinterpret_cast<std::uint32_t*>(data + (r * sy + dy) * stride) + c * sx, sx, pixel);
      }
    cairo_surface_mark_dirty(image);
    cairo_save(cr_);
    cairo_translate(cr_, x, y);
    cairo_scale(cr_, double(cell_w) / sx, double(cell_h) / sy);
    cairo_set_source_surface(cr_, image, 0, 0);
    cairo_pattern_set_filter(cairo_get_source(cr_), CAIRO_FILTER_NEAREST);
    cairo_set_antialias(cr_, CAIRO_ANTIALIAS_NONE);
    cairo_rectangle(cr_, 0, 0, double(m.cols) * sx, double(m.rows) * sy);
    cairo_fill(cr_);
    cairo_restore(cr_);
    cairo_surface_destroy(image);
  }
  // A vertical colour bar, the map's high end at the top, with a thin frame.
  void colour_bar(int x, int y, int w, int h, const ColourMap& map) {
    cairo_pattern_t* gradient = cairo_pattern_create_linear(0, y + h, 0, y);
    for (std::size_t i = 0; i < map.count; ++i)
      cairo_pattern_add_color_stop_rgb(gradient, double(i) / double(map.count - 1), map.stops[i].r / 255.0,
                                       map.stops[i].g / 255.0, map.stops[i].b / 255.0);
    cairo_set_antialias(cr_, CAIRO_ANTIALIAS_NONE);
    cairo_set_source(cr_, gradient);
    cairo_rectangle(cr_, x, y, w, h);
    cairo_fill(cr_);
    cairo_pattern_destroy(gradient);
  }
  // A 1 px line along whole pixels (axes, ticks).
  void hline(int x, int y, int w) { fill(x, y, w, 1, {0, 0, 0}); }
  void vline(int x, int y, int h) { fill(x, y, 1, h, {0, 0, 0}); }

  void save() {
    if (png_) check(cairo_surface_write_to_png(surface_, file_.string().c_str()), "cannot write the PNG");
    cairo_surface_finish(surface_);
    check(cairo_status(cr_), "cannot draw the figure");
    check(cairo_surface_status(surface_), "cannot write the figure");
  }

 private:
  void set_colour(Rgb c) { cairo_set_source_rgb(cr_, c.r / 255.0, c.g / 255.0, c.b / 255.0); }
  void show(double x, double baseline, double angle, const std::string& text, double size) {
    const std::string s = drawable(text);
    cairo_save(cr_);
    use_font(cr_, size);
    cairo_set_antialias(cr_, CAIRO_ANTIALIAS_GRAY);
    cairo_set_source_rgb(cr_, 0, 0, 0);
    cairo_move_to(cr_, std::round(x), std::round(baseline));
    cairo_rotate(cr_, angle);
    cairo_show_text(cr_, s.c_str());
    cairo_restore(cr_);
  }
  void check(cairo_status_t status, const char* what) const {
    if (status != CAIRO_STATUS_SUCCESS)
      throw hooklens::Error(fmt::format("{}: {}: {}", file_.string(), what, cairo_status_to_string(status)));
  }

  fs::path file_;
  cairo_surface_t* surface_ = nullptr;
  cairo_t* cr_ = nullptr;
  bool png_ = false;
};

// ---- panels --------------------------------------------------------------------------------------

constexpr int kMargin = 12, kPanelGap = 24, kBarGap = 8, kBarWidth = 12, kTick = 3, kLabelGap = 4, kTitleGap = 6;

std::string scale_label(double v) { return fmt::format("{:.3g}", v); }

// A part's title (above it) and caption (below it). In a figure of several columns a long title or
// caption would widen its column and open a gap beside the heatmap, so there they are wrapped to the
// part's own width (`wrap_to`, at least kNarrowestText); 0 keeps each on one line.
constexpr int kNarrowestText = 180;  // px
struct Texts {
  std::vector<std::string> title, caption;
  Texts(const std::string& title_text, const std::string& caption_text, int body_w, int wrap_to) {
    const int width = std::max(body_w, kNarrowestText);
    title = wrap_to > 0 ? wrap(title_text, width, kTitleSize) : std::vector<std::string>{title_text};
    caption = wrap_to > 0 ? wrap(caption_text, width, kTextSize) : std::vector<std::string>{caption_text};
    if (title_text.empty()) title.clear();
    if (caption_text.empty()) caption.clear();
  }
  int title_h() const { return title.empty() ? 0 : int(title.size()) * line(kTitleSize).height + kTitleGap; }
  int caption_h() const { return caption.empty() ? 0 : kTitleGap + int(caption.size()) * line().height; }
  int width() const { return std::max(widest(title, kTitleSize), widest(caption)); }
  void draw_title(Canvas& canvas, int x, int y) const {
    for (std::size_t i = 0; i < title.size(); ++i)
      canvas.text(x, y + int(i) * line(kTitleSize).height, title[i], kTitleSize);
  }
  void draw_caption(Canvas& canvas, int x, int y) const {
    for (std::size_t i = 0; i < caption.size(); ++i) canvas.text(x, y + int(i) * line().height, caption[i]);
  }
};

// Where the parts of a panel go, relative to its top-left corner (all from measured text).
struct Layout {
  int row_labels_w, col_labels_h, matrix_w, matrix_h, body_h, bar_labels_w, body_w;
  Texts texts;
  Layout(const Panel& p, int wrap_to)
      : row_labels_w(p.row_labels.empty() ? 0 : widest(p.row_labels) + kLabelGap),
        col_labels_h(p.col_labels.empty() ? 0 : widest(p.col_labels) + kLabelGap),
        matrix_w(int(p.matrix.cols) * p.cell_w),
        matrix_h(int(p.matrix.rows) * p.cell_h),
        body_h(std::max(matrix_h, 3 * line().height)),  // room for the two scale labels
        bar_labels_w(std::max(text_width(scale_label(p.scale.lo)), text_width(scale_label(p.scale.hi)))),
        body_w(row_labels_w + matrix_w + kBarGap + kBarWidth + kTick + kLabelGap + bar_labels_w),
        texts(p.title, p.caption, body_w, wrap_to) {}
  int width() const { return std::max(texts.width(), body_w); }
  int height() const { return texts.title_h() + std::max(body_h, matrix_h + col_labels_h) + texts.caption_h(); }
};

// Draws `p` with its top-left corner at (x, y); returns where its matrix went.
json draw(Canvas& canvas, const Panel& p, const Layout& l, int x, int y) {
  const int mx = x + l.row_labels_w, my = y + l.texts.title_h();
  // The title starts over the matrix when it fits there, else at the panel's left edge.
  l.texts.draw_title(canvas, mx + widest(l.texts.title, kTitleSize) <= x + l.body_w ? mx : x, y);
  canvas.cells(mx, my, p.matrix, p.scale, p.cell_w, p.cell_h);
  for (std::size_t r = 0; r < p.row_labels.size(); ++r)
    canvas.text_centred_on(mx - kLabelGap, my + (double(r) + 0.5) * p.cell_h, p.row_labels[r], Align::kRight);
  for (std::size_t c = 0; c < p.col_labels.size(); ++c)  // read upwards, ending just below the matrix
    canvas.text_up(mx + (double(c) + 0.5) * p.cell_w, my + l.matrix_h + kLabelGap, p.col_labels[c]);
  const int bar_x = mx + l.matrix_w + kBarGap;
  canvas.colour_bar(bar_x, my, kBarWidth, l.body_h, *p.scale.map);
  canvas.hline(bar_x + kBarWidth, my, kTick);
  canvas.hline(bar_x + kBarWidth, my + l.body_h - 1, kTick);
  const int labels_x = bar_x + kBarWidth + kTick + kLabelGap;
  canvas.text(labels_x, my, scale_label(p.scale.hi));
  canvas.text(labels_x, my + l.body_h - line().height, scale_label(p.scale.lo));
  l.texts.draw_caption(canvas, x, my + std::max(l.body_h, l.matrix_h + l.col_labels_h) + kTitleGap);
  return {{"title", p.title},
          {"matrix", {{"x", mx}, {"y", my}, {"cell_width", p.cell_w}, {"cell_height", p.cell_h},
                      {"rows", p.matrix.rows}, {"cols", p.matrix.cols}, {"first_row", p.matrix.first_row},
                      {"first_col", p.matrix.first_col}}},
          {"colour_bar", {{"x", bar_x}, {"y", my}, {"width", kBarWidth}, {"height", l.body_h}}},
          {"scale", {{"min", p.scale.lo}, {"max", p.scale.hi}, {"colormap", p.scale.map->name}}}};
}

// ---- bar charts ----------------------------------------------------------------------------------

constexpr int kGroupGap = 4, kSwatch = 10;

struct ChartLayout {
  double lo = 0, hi = 0;
  int axis_w, group_w, plot_w, labels_h, legend_w, legend_h;
  Texts texts;
  ChartLayout(const BarChart& c, int wrap_to)
      : axis_w(0),
        group_w(int(std::max<std::size_t>(c.series.size(), 1)) * c.bar_w + kGroupGap),
        plot_w(int(c.labels.size()) * group_w),
        labels_h(widest(thin_labels(c.labels, group_w)) + kLabelGap),
        legend_w(legend_width(c)),
        legend_h(c.series.size() > 1 ? int(c.series.size()) * (line().height + 2) : 0),
        texts(c.title, c.caption, plot_w + legend_w, wrap_to) {
    for (const auto& s : c.series)
      for (double v : s.values)
        if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
    if (c.hi > 0) hi = c.hi;
    if (hi <= lo) hi = lo + 1.0;
    axis_w = std::max(text_width(scale_label(lo)), text_width(scale_label(hi))) + kLabelGap + kTick + 1;
  }
  static int legend_width(const BarChart& c) {
    if (c.series.size() < 2) return 0;
    int w = 0;
    for (const auto& s : c.series) w = std::max(w, kSwatch + kLabelGap + text_width(s.name));
    return w + kBarGap + kLabelGap;
  }
  int y_of(double v, int plot_top, int plot_h) const { return plot_top + int(std::lround((hi - v) / (hi - lo) * plot_h)); }
  int width() const { return std::max(texts.width(), axis_w + plot_w + legend_w); }
  int height(const BarChart& c) const { return texts.title_h() + std::max(c.plot_h + labels_h, legend_h) + texts.caption_h(); }
};

json draw(Canvas& canvas, const BarChart& c, const ChartLayout& l, int x, int y) {
  l.texts.draw_title(canvas, x, y);
  const int px = x + l.axis_w, py = y + l.texts.title_h();
  canvas.vline(px - 1, py, c.plot_h + 1);  // value axis, with ticks at both ends of the range
  canvas.hline(px - 1 - kTick, py, kTick);
  canvas.hline(px - 1 - kTick, py + c.plot_h, kTick);
  const int zero = l.y_of(0.0, py, c.plot_h);
  canvas.hline(px - 1, zero, l.plot_w + 1);  // zero line
  canvas.text(px - 1 - kTick - kLabelGap, py, scale_label(l.hi), kTextSize, Align::kRight);
  canvas.text(px - 1 - kTick - kLabelGap, py + c.plot_h - line().height, scale_label(l.lo), kTextSize, Align::kRight);
  for (std::size_t s = 0; s < c.series.size(); ++s)
    for (std::size_t g = 0; g < c.labels.size() && g < c.series[s].values.size(); ++g) {
      const double v = c.series[s].values[g];
      if (!std::isfinite(v)) continue;
      const int top = std::min(zero, l.y_of(v, py, c.plot_h)), bottom = std::max(zero, l.y_of(v, py, c.plot_h));
      canvas.fill(px + int(g) * l.group_w + int(s) * c.bar_w, top, c.bar_w, std::max(bottom - top, 1), c.series[s].colour);
    }
  const std::vector<std::string> labels = thin_labels(c.labels, l.group_w);
  const int bars_w = l.group_w - kGroupGap;
  for (std::size_t g = 0; g < labels.size(); ++g)
    canvas.text_up(px + int(g) * l.group_w + bars_w / 2.0, py + c.plot_h + kLabelGap, labels[g]);
  if (c.series.size() > 1)
    for (std::size_t s = 0; s < c.series.size(); ++s) {
      const int ly = py + int(s) * (line().height + 2), lx = px + l.plot_w + kBarGap + kLabelGap;
      canvas.fill(lx, ly + (line().height - kSwatch) / 2, kSwatch, kSwatch, c.series[s].colour);
      canvas.text(lx + kSwatch + kLabelGap, ly, c.series[s].name);
    }
  l.texts.draw_caption(canvas, x, py + std::max(c.plot_h + l.labels_h, l.legend_h) + kTitleGap);
  return {{"title", c.title},
          {"plot", {{"x", px}, {"y", py}, {"width", l.plot_w}, {"height", c.plot_h}, {"min", l.lo}, {"max", l.hi},
                    {"group_width", l.group_w}, {"bar_width", c.bar_w}}}};
}

Layout layout_of(const Panel& p, int wrap_to) { return Layout(p, wrap_to); }
ChartLayout layout_of(const BarChart& c, int wrap_to) { return ChartLayout(c, wrap_to); }
int height_of(const Layout& l, const Panel&) { return l.height(); }
int height_of(const ChartLayout& l, const BarChart& c) { return l.height(c); }

// Lays `parts` out in a grid (cells as wide as the widest part of their column and as tall as the
// tallest of their row) and draws them, with `caption` (one line) below.
template <class Part>
json write_parts(const fs::path& file, const std::vector<Part>& parts, int columns, const std::string& caption) {
  const std::size_t per_row = columns > 0 ? std::size_t(columns) : std::max<std::size_t>(parts.size(), 1);
  const int wrap_to = per_row > 1 && parts.size() > 1 ? kNarrowestText : 0;
  std::vector<decltype(layout_of(parts[0], 0))> layouts;
  for (const Part& p : parts) layouts.push_back(layout_of(p, wrap_to));
  // A row's titles end at one height (the tallest title's), so its heatmaps start level.
  const std::size_t rows = (parts.size() + per_row - 1) / per_row;
  std::vector<int> col_w(per_row, 0), row_h(rows, 0), row_title_h(rows, 0);
  for (std::size_t i = 0; i < parts.size(); ++i)
    row_title_h[i / per_row] = std::max(row_title_h[i / per_row], layouts[i].texts.title_h());
  const auto drop = [&](std::size_t i) { return row_title_h[i / per_row] - layouts[i].texts.title_h(); };
  for (std::size_t i = 0; i < parts.size(); ++i) {
    col_w[i % per_row] = std::max(col_w[i % per_row], layouts[i].width());
    row_h[i / per_row] = std::max(row_h[i / per_row], drop(i) + height_of(layouts[i], parts[i]));
  }
  std::int64_t width = 2 * kMargin - kPanelGap, height = 2 * kMargin - kPanelGap;
  for (int w : col_w) width += w + kPanelGap;
  for (int h : row_h) height += h + kPanelGap;
  if (!caption.empty()) {
    width = std::max<std::int64_t>(width, 2 * kMargin + text_width(caption));
    height += kTitleGap + line().height;
  }
  width = std::max<std::int64_t>(width, 1), height = std::max<std::int64_t>(height, 1);
  if (width > kMaxSide || height > kMaxSide)
    throw hooklens::Error(fmt::format("{}: the figure would be {}x{} pixels (at most {} a side)", file.string(), width,
                                      height, kMaxSide));
  Canvas canvas(file, int(width), int(height));
  json geometry = json::array();
  int y = kMargin;
  for (std::size_t row = 0; row < row_h.size(); ++row) {
    int x = kMargin;
    for (std::size_t col = 0; col < per_row && row * per_row + col < parts.size(); ++col) {
      const std::size_t i = row * per_row + col;
      geometry.push_back(draw(canvas, parts[i], layouts[i], x, y + drop(i)));
      x += col_w[col] + kPanelGap;
    }
    y += row_h[row] + kPanelGap;
  }
  if (!caption.empty()) canvas.text(kMargin, int(height) - kMargin - line().height, caption);
  canvas.save();
  return {{"width", width}, {"height", height}, {"panels", geometry}};
}

}  // namespace

json write_figure(const fs::path& file, const std::vector<Panel>& panels, int columns, const std::string& caption) {
  return write_parts(file, panels, columns, caption);
}

json write_figure(const fs::path& file, const std::vector<BarChart>& charts, int columns, const std::string& caption) {
  return write_parts(file, charts, columns, caption);
}

std::string token_label(const std::string& token, std::size_t max_chars) {
  std::vector<std::string> chars;  // what each shown character is (one UTF-8 sequence each)
  const auto add = [&chars](const std::string& ascii) {
    for (char ch : ascii) chars.emplace_back(1, ch);
  };
  const std::string text = hooklens::utf8_decode_replace(token);  // invalid UTF-8 becomes U+FFFD
  for (std::size_t i = 0; i < text.size();) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    const std::size_t len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
    if (c >= 0x80) chars.push_back(text.substr(i, len));
    else if (c == ' ') add("_");
    else if (c == '\n') add("\\n");
    else if (c == '\t') add("\\t");
    else if (c < 32 || c == 127) add(fmt::format("\\x{:02x}", c));
    else add(std::string(1, char(c)));
    i += len;
  }
  const bool cut = chars.size() > max_chars;
  std::string s;
  for (std::size_t i = 0; i < (cut ? max_chars - 2 : chars.size()); ++i) s += chars[i];
  return cut ? s + ".." : s;
}

std::string dump(const json& j) { return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n"; }

}  // namespace hooklens::drawing

// See drawing.h. Debian's libstb holds the stb implementations (no STB_*_IMPLEMENTATION here).
#include "drawing.h"

#include <hooklens/error.h>

#include <fmt/format.h>
#include <stb/stb_easy_font.h>
#include <stb/stb_image_write.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <memory>

namespace figures {

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

Matrix head_matrix(const at::Tensor& pattern, std::int64_t head, std::int64_t first_row, std::int64_t first_col) {
  const std::int64_t heads = pattern.size(1), rows = pattern.size(2), cols = pattern.size(3);
  Matrix m{rows, cols, std::vector<double>(std::size_t(rows * cols), 0.0), first_row, first_col};
  const float* data = pattern.data_ptr<float>();
  const std::int64_t first = head < 0 ? 0 : head, last = head < 0 ? heads : head + 1;
  for (std::int64_t h = first; h < last; ++h)
    for (std::int64_t i = 0; i < rows * cols; ++i) m.values[std::size_t(i)] += data[h * rows * cols + i];
  for (auto& v : m.values) v /= double(last - first);
  return m;
}

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

// ---- text metrics (the PNG font's; the SVG uses the same layout) ---------------------------------

namespace {

constexpr int kFontScale = 2;  // stb_easy_font glyphs are ~7 px tall: doubled to be readable
constexpr int kGlyphHeight = 7 * kFontScale;
constexpr int kSvgFontSize = 14;  // px: a monospace font this size is narrower than the PNG font

std::string printable(const std::string& text) {
  std::string s = text;
  for (char& c : s)
    if (c < 32 || c > 126) c = '?';  // the font is ASCII only
  return s;
}
int text_width(const std::string& text) {
  std::string s = printable(text);
  return stb_easy_font_width(s.data()) * kFontScale;
}
int text_height() { return 12 * kFontScale; }

struct Box {
  float x0, y0, x1, y1;
};

// The glyph quads of `text` in font units, top-left of the text at (0, 0).
std::vector<Box> glyph_boxes(const std::string& text) {
  std::string s = printable(text);
  // stb_easy_font's "about 270 bytes per character" is an average: dense glyphs ('0', '5', '8') need
  // more, and a short buffer silently drops the last glyph's quads.
  std::vector<char> quads(s.size() * 1024 + 64);
  const int count = stb_easy_font_print(0, 0, s.data(), nullptr, quads.data(), int(quads.size()));
  std::vector<Box> boxes;
  for (int q = 0; q < count; ++q) {
    Box b{1e9f, 1e9f, -1e9f, -1e9f};
    for (int v = 0; v < 4; ++v) {
      const float* xyz = reinterpret_cast<const float*>(quads.data() + (q * 4 + v) * 16);
      b.x0 = std::min(b.x0, xyz[0]), b.x1 = std::max(b.x1, xyz[0]);
      b.y0 = std::min(b.y0, xyz[1]), b.y1 = std::max(b.y1, xyz[1]);
    }
    boxes.push_back(b);
  }
  return boxes;
}

// ---- canvases: what a figure is drawn on ---------------------------------------------------------

class Canvas {
 public:
  virtual ~Canvas() = default;
  virtual void fill(int x, int y, int w, int h, Rgb c) = 0;
  // Black text with its top-left corner at (x, y).
  virtual void text(int x, int y, const std::string& text) = 0;
  // Black text ending at `right`.
  virtual void text_right(int right, int y, const std::string& text) = 0;
  // Black text turned a quarter left (reading upwards), starting at (x, bottom): its glyphs' tops face x.
  virtual void text_up(int x, int bottom, const std::string& text) = 0;
  // The matrix's cells, top-left at (x, y).
  virtual void cells(int x, int y, const Matrix& m, const Scale& scale, int cell_w, int cell_h) = 0;
  // A vertical colour bar: the map's high end at the top.
  virtual void colour_bar(int x, int y, int w, int h, const ColourMap& map) = 0;
  virtual void save(const fs::path& file) const = 0;
};

// RGB pixels of a cells-only image, one pixel per cell.
std::vector<std::uint8_t> cell_pixels(const Matrix& m, const Scale& scale) {
  std::vector<std::uint8_t> px;
  px.reserve(std::size_t(m.rows * m.cols) * 3);
  for (double v : m.values) {
    const Rgb c = colour_of(scale, v);
    px.insert(px.end(), {c.r, c.g, c.b});
  }
  return px;
}

class PngCanvas : public Canvas {
 public:
  PngCanvas(int width, int height) : width_(width), height_(height), pixels_(std::size_t(width) * height * 3, 255) {}

  void fill(int x, int y, int w, int h, Rgb c) override {
    for (int py = std::max(y, 0); py < std::min(y + h, height_); ++py)
      for (int px = std::max(x, 0); px < std::min(x + w, width_); ++px) {
        std::uint8_t* p = &pixels_[(std::size_t(py) * width_ + px) * 3];
        p[0] = c.r, p[1] = c.g, p[2] = c.b;
      }
  }
  void text(int x, int y, const std::string& text) override {
    for (const Box& b : glyph_boxes(text))
      fill(x + int(b.x0) * kFontScale, y + int(b.y0) * kFontScale, int(b.x1 - b.x0) * kFontScale,
           int(b.y1 - b.y0) * kFontScale, {0, 0, 0});
  }
  void text_right(int right, int y, const std::string& s) override { text(right - text_width(s), y, s); }
  void text_up(int x, int bottom, const std::string& text) override {
    for (const Box& b : glyph_boxes(text))
      fill(x + int(b.y0) * kFontScale, bottom - int(b.x1) * kFontScale, int(b.y1 - b.y0) * kFontScale,
           int(b.x1 - b.x0) * kFontScale, {0, 0, 0});
  }
  void cells(int x, int y, const Matrix& m, const Scale& scale, int cell_w, int cell_h) override {
    for (std::int64_t r = 0; r < m.rows; ++r)
      for (std::int64_t c = 0; c < m.cols; ++c)
        fill(x + int(c) * cell_w, y + int(r) * cell_h, cell_w, cell_h, colour_of(scale, m.at(r, c)));
  }
  void colour_bar(int x, int y, int w, int h, const ColourMap& map) override {
    for (int py = 0; py < h; ++py) fill(x, y + py, w, 1, colour_at(map, 1.0 - (py + 0.5) / h));
  }
  void save(const fs::path& file) const override {
    if (!stbi_write_png(file.string().c_str(), width_, height_, 3, pixels_.data(), width_ * 3))
      throw hooklens::Error(fmt::format("{}: cannot write the PNG", file.string()));
  }

 private:
  int width_, height_;
  std::vector<std::uint8_t> pixels_;
};

std::string base64(const std::vector<std::uint8_t>& bytes) {
  static constexpr char kDigits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (std::size_t i = 0; i < bytes.size(); i += 3) {
    const std::uint32_t n = std::uint32_t(bytes[i]) << 16 | (i + 1 < bytes.size() ? bytes[i + 1] << 8 : 0) |
                            (i + 2 < bytes.size() ? bytes[i + 2] : 0);
    out += kDigits[n >> 18 & 63];
    out += kDigits[n >> 12 & 63];
    out += i + 1 < bytes.size() ? kDigits[n >> 6 & 63] : '=';
    out += i + 2 < bytes.size() ? kDigits[n & 63] : '=';
  }
  return out;
}

// `text` escaped for XML, with invalid UTF-8 and control characters replaced so the file stays valid.
std::string xml_text(const std::string& text) {
  std::string out;
  for (std::size_t i = 0; i < text.size();) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      if (c == '&') out += "&amp;";
      else if (c == '<') out += "&lt;";
      else if (c == '>') out += "&gt;";
      else if (c == '"') out += "&quot;";
      else if (c < 32 || c == 127) out += '?';
      else out += char(c);
      ++i;
      continue;
    }
    const std::size_t len = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 && c < 0xE0 ? 2 : 0;
    std::size_t ok = len > 0 && i + len <= text.size() ? len : 0;
    for (std::size_t k = 1; k < ok; ++k)
      if ((static_cast<unsigned char>(text[i + k]) & 0xC0) != 0x80) ok = 0;
    if (ok) out.append(text, i, ok), i += ok;
    else out += "\xEF\xBF\xBD", ++i;  // U+FFFD
  }
  return out;
}

std::string hex(Rgb c) { return fmt::format("#{:02x}{:02x}{:02x}", c.r, c.g, c.b); }

class SvgCanvas : public Canvas {
 public:
  SvgCanvas(int width, int height) : width_(width), height_(height) {}

  void fill(int x, int y, int w, int h, Rgb c) override {
    body_ += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"/>\n", x, y, w, h, hex(c));
  }
  void text(int x, int y, const std::string& s) override {
    if (!s.empty()) body_ += fmt::format("<text x=\"{}\" y=\"{}\">{}</text>\n", x, baseline(y), xml_text(s));
  }
  void text_right(int right, int y, const std::string& s) override {
    if (!s.empty())
      body_ += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n", right, baseline(y), xml_text(s));
  }
  void text_up(int x, int bottom, const std::string& s) override {
    if (!s.empty())
      body_ += fmt::format("<text transform=\"translate({},{}) rotate(-90)\">{}</text>\n", baseline(x), bottom,
                           xml_text(s));
  }
  void cells(int x, int y, const Matrix& m, const Scale& scale, int cell_w, int cell_h) override {
    if (m.rows == 0 || m.cols == 0) return;
    std::vector<std::uint8_t> png;
    const auto append = [](void* to, void* data, int size) {
      auto* out = static_cast<std::vector<std::uint8_t>*>(to);
      out->insert(out->end(), static_cast<std::uint8_t*>(data), static_cast<std::uint8_t*>(data) + size);
    };
    const std::vector<std::uint8_t> px = cell_pixels(m, scale);
    if (!stbi_write_png_to_func(append, &png, int(m.cols), int(m.rows), 3, px.data(), int(m.cols) * 3))
      throw hooklens::Error("cannot encode a heatmap as PNG for an SVG figure");
    body_ += fmt::format(
        "<image x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" preserveAspectRatio=\"none\" "
        "style=\"image-rendering:pixelated\" href=\"data:image/png;base64,{}\"/>\n",
        x, y, m.cols * cell_w, m.rows * cell_h, base64(png));
  }
  void colour_bar(int x, int y, int w, int h, const ColourMap& map) override {
    const std::string id = fmt::format("bar{}", bars_++);
    std::string stops;
    for (std::size_t i = 0; i < map.count; ++i)
      stops += fmt::format("<stop offset=\"{:.4f}\" stop-color=\"{}\"/>", double(i) / double(map.count - 1),
                           hex(map.stops[i]));
    body_ += fmt::format("<linearGradient id=\"{}\" x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">{}</linearGradient>\n", id,
                         stops);
    body_ += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"url(#{})\"/>\n", x, y, w, h, id);
  }
  void save(const fs::path& file) const override {
    write_text(file, fmt::format("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                                 "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" "
                                 "viewBox=\"0 0 {0} {1}\" font-family=\"monospace\" font-size=\"{2}\">\n"
                                 "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n{3}</svg>\n",
                                 width_, height_, kSvgFontSize, body_));
  }

 private:
  static int baseline(int top) { return top + kGlyphHeight - 3; }  // the text's top at `top`
  int width_, height_, bars_ = 0;
  std::string body_;
};

std::unique_ptr<Canvas> canvas_for(const fs::path& file, int width, int height) {
  if (file.extension() == ".svg") return std::make_unique<SvgCanvas>(width, height);
  return std::make_unique<PngCanvas>(width, height);
}

// ---- panels --------------------------------------------------------------------------------------

constexpr int kMargin = 10, kPanelGap = 28, kBarGap = 8, kBarWidth = 16, kLabelGap = 4;

int widest(const std::vector<std::string>& labels) {
  int w = 0;
  for (const auto& l : labels) w = std::max(w, text_width(l));
  return w;
}

std::string scale_label(double v) { return fmt::format("{:.3g}", v); }

// Where the parts of a panel go, relative to its top-left corner.
struct Layout {
  int title_h, row_labels_w, col_labels_h, matrix_w, matrix_h, body_h, bar_labels_w;
  explicit Layout(const Panel& p)
      : title_h(text_height() + 6),
        row_labels_w(p.row_labels.empty() ? 0 : widest(p.row_labels) + kLabelGap),
        col_labels_h(p.col_labels.empty() ? 0 : widest(p.col_labels) + kLabelGap),
        matrix_w(int(p.matrix.cols) * p.cell_w),
        matrix_h(int(p.matrix.rows) * p.cell_h),
        body_h(std::max(matrix_h, 2 * text_height())),
        bar_labels_w(std::max(text_width(scale_label(p.scale.lo)), text_width(scale_label(p.scale.hi)))) {}
};

// Draws `p` with its top-left corner at (x, y); returns where its matrix went.
json draw(Canvas& canvas, const Panel& p, int x, int y) {
  const Layout l(p);
  canvas.text(x, y, p.title);
  const int mx = x + l.row_labels_w, my = y + l.title_h;
  canvas.cells(mx, my, p.matrix, p.scale, p.cell_w, p.cell_h);
  for (std::size_t r = 0; r < p.row_labels.size(); ++r)
    canvas.text_right(mx - kLabelGap, my + int(r) * p.cell_h + std::max(0, (p.cell_h - kGlyphHeight) / 2),
                      p.row_labels[r]);
  for (std::size_t c = 0; c < p.col_labels.size(); ++c)  // read upwards, ending just below the matrix
    canvas.text_up(mx + int(c) * p.cell_w + std::max(0, (p.cell_w - kGlyphHeight) / 2),
                   my + l.matrix_h + kLabelGap + text_width(p.col_labels[c]), p.col_labels[c]);
  const int bar_x = mx + l.matrix_w + kBarGap;
  canvas.colour_bar(bar_x, my, kBarWidth, l.body_h, *p.scale.map);
  canvas.text(bar_x + kBarWidth + kLabelGap, my, scale_label(p.scale.hi));
  canvas.text(bar_x + kBarWidth + kLabelGap, my + l.body_h - text_height(), scale_label(p.scale.lo));
  canvas.text(x, my + std::max(l.body_h, l.matrix_h + l.col_labels_h) + 6, p.caption);
  return {{"title", p.title},
          {"matrix", {{"x", mx}, {"y", my}, {"cell_width", p.cell_w}, {"cell_height", p.cell_h},
                      {"rows", p.matrix.rows}, {"cols", p.matrix.cols}, {"first_row", p.matrix.first_row},
                      {"first_col", p.matrix.first_col}}},
          {"colour_bar", {{"x", bar_x}, {"y", my}, {"width", kBarWidth}, {"height", l.body_h}}},
          {"scale", {{"min", p.scale.lo}, {"max", p.scale.hi}, {"colormap", p.scale.map->name}}}};
}

// ---- bar charts ----------------------------------------------------------------------------------

constexpr int kGroupGap = 4, kSwatch = 12;

struct ChartLayout {
  double lo = 0, hi = 0;
  int title_h, axis_w, group_w, plot_w, labels_h, legend_w;
  explicit ChartLayout(const BarChart& c)
      : title_h(text_height() + 6),
        group_w(int(std::max<std::size_t>(c.series.size(), 1)) * c.bar_w + kGroupGap),
        plot_w(int(c.labels.size()) * group_w),
        labels_h(widest(c.labels) + kLabelGap) {
    for (const auto& s : c.series)
      for (double v : s.values)
        if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
    if (c.hi > 0) hi = c.hi;
    if (hi <= lo) hi = lo + 1.0;
    axis_w = std::max(text_width(scale_label(lo)), text_width(scale_label(hi))) + kLabelGap + 2;
    legend_w = 0;
    if (c.series.size() > 1)
      for (const auto& s : c.series) legend_w = std::max(legend_w, kSwatch + kLabelGap + text_width(s.name));
    if (legend_w > 0) legend_w += kBarGap;
  }
  int y_of(double v, int plot_top, int plot_h) const { return plot_top + int(std::lround((hi - v) / (hi - lo) * plot_h)); }
};

json draw(Canvas& canvas, const BarChart& c, int x, int y) {
  const ChartLayout l(c);
  canvas.text(x, y, c.title);
  const int px = x + l.axis_w, py = y + l.title_h;
  canvas.fill(px - 1, py, 1, c.plot_h + 1, {0, 0, 0});  // value axis
  const int zero = l.y_of(0.0, py, c.plot_h);
  canvas.fill(px - 1, zero, l.plot_w + 1, 1, {0, 0, 0});  // zero line
  canvas.text_right(px - kLabelGap - 2, py, scale_label(l.hi));
  canvas.text_right(px - kLabelGap - 2, py + c.plot_h - text_height() / 2, scale_label(l.lo));
  for (std::size_t s = 0; s < c.series.size(); ++s)
    for (std::size_t g = 0; g < c.labels.size() && g < c.series[s].values.size(); ++g) {
      const double v = c.series[s].values[g];
      if (!std::isfinite(v)) continue;
      const int top = std::min(zero, l.y_of(v, py, c.plot_h)), bottom = std::max(zero, l.y_of(v, py, c.plot_h));
      canvas.fill(px + int(g) * l.group_w + int(s) * c.bar_w, top, c.bar_w, std::max(bottom - top, 1), c.series[s].colour);
    }
  const std::vector<std::string> labels = thin_labels(c.labels, l.group_w);
  for (std::size_t g = 0; g < labels.size(); ++g)
    canvas.text_up(px + int(g) * l.group_w + std::max(0, (l.group_w - kGroupGap - kGlyphHeight) / 2),
                   py + c.plot_h + kLabelGap + text_width(labels[g]), labels[g]);
  if (c.series.size() > 1)
    for (std::size_t s = 0; s < c.series.size(); ++s) {
      const int ly = py + int(s) * (text_height() + 2), lx = px + l.plot_w + kBarGap;
      canvas.fill(lx, ly + 2, kSwatch, kSwatch, c.series[s].colour);
      canvas.text(lx + kSwatch + kLabelGap, ly, c.series[s].name);
    }
  canvas.text(x, py + c.plot_h + l.labels_h + 6, c.caption);
  return {{"title", c.title},
          {"plot", {{"x", px}, {"y", py}, {"width", l.plot_w}, {"height", c.plot_h}, {"min", l.lo}, {"max", l.hi},
                    {"group_width", l.group_w}, {"bar_width", c.bar_w}}}};
}

// Lays `parts` out in a grid (cells as wide as the widest part of their column and as tall as the
// tallest of their row) and draws them, with `caption` below.
template <class Part>
json write_parts(const fs::path& file, const std::vector<Part>& parts, int columns, const std::string& caption) {
  const std::size_t per_row = columns > 0 ? std::size_t(columns) : std::max<std::size_t>(parts.size(), 1);
  std::vector<int> col_w(per_row, 0), row_h((parts.size() + per_row - 1) / per_row, 0);
  for (std::size_t i = 0; i < parts.size(); ++i) {
    col_w[i % per_row] = std::max(col_w[i % per_row], parts[i].width());
    row_h[i / per_row] = std::max(row_h[i / per_row], parts[i].height());
  }
  std::int64_t width = 2 * kMargin - kPanelGap, height = 2 * kMargin - kPanelGap;
  for (int w : col_w) width += w + kPanelGap;
  for (int h : row_h) height += h + kPanelGap;
  if (!caption.empty()) {
    width = std::max<std::int64_t>(width, 2 * kMargin + text_width(caption));
    height += text_height() + 6;
  }
  width = std::max<std::int64_t>(width, 1), height = std::max<std::int64_t>(height, 1);
  if (width > kMaxSide || height > kMaxSide)
    throw hooklens::Error(fmt::format("{}: the figure would be {}x{} pixels (at most {} a side)", file.string(), width,
                                      height, kMaxSide));
  const std::unique_ptr<Canvas> canvas = canvas_for(file, int(width), int(height));
  json geometry = json::array();
  int y = kMargin;
  for (std::size_t row = 0; row < row_h.size(); ++row) {
    int x = kMargin;
    for (std::size_t col = 0; col < per_row && row * per_row + col < parts.size(); ++col) {
      geometry.push_back(draw(*canvas, parts[row * per_row + col], x, y));
      x += col_w[col] + kPanelGap;
    }
    y += row_h[row] + kPanelGap;
  }
  if (!caption.empty()) canvas->text(kMargin, int(height) - kMargin - text_height(), caption);
  canvas->save(file);
  return {{"width", width}, {"height", height}, {"panels", geometry}};
}

}  // namespace

int Panel::width() const {
  const Layout l(*this);
  return std::max({text_width(title), text_width(caption),
                   l.row_labels_w + l.matrix_w + kBarGap + kBarWidth + kLabelGap + l.bar_labels_w});
}

int Panel::height() const {
  const Layout l(*this);
  return l.title_h + std::max(l.body_h, l.matrix_h + l.col_labels_h) + (caption.empty() ? 0 : 6 + text_height());
}

int BarChart::width() const {
  const ChartLayout l(*this);
  return std::max({text_width(title), text_width(caption), l.axis_w + l.plot_w + l.legend_w});
}

int BarChart::height() const {
  const ChartLayout l(*this);
  const int legend_h = series.size() > 1 ? int(series.size()) * (text_height() + 2) : 0;
  return l.title_h + std::max(plot_h + l.labels_h, legend_h) + (caption.empty() ? 0 : 6 + text_height());
}

json write_figure(const fs::path& file, const std::vector<Panel>& panels, int columns, const std::string& caption) {
  return write_parts(file, panels, columns, caption);
}

json write_figure(const fs::path& file, const std::vector<BarChart>& charts, int columns, const std::string& caption) {
  return write_parts(file, charts, columns, caption);
}

std::string token_label(const std::string& token, std::size_t max_chars) {
  std::string s;
  for (unsigned char c : token) {
    if (c == ' ') s += '_';
    else if (c == '\n') s += "\\n";
    else if (c == '\t') s += "\\t";
    else if (c < 32 || c == 127) s += fmt::format("\\x{:02x}", c);
    else if (c > 127) {
      if ((c & 0xC0) != 0x80) s += '?';  // one '?' per UTF-8 character: the font is ASCII only
    } else s += char(c);
  }
  if (s.size() > max_chars) s = s.substr(0, max_chars - 2) + "..";
  return s;
}

void write_text(const fs::path& file, const std::string& text) {
  std::ofstream f(file, std::ios::binary);
  f << text;
  if (!f.flush()) throw hooklens::Error(fmt::format("{}: cannot write the file", file.string()));
}

std::string dump(const json& j) { return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n"; }

}  // namespace figures

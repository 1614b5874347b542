// See figures.h. Debian's libstb holds the stb implementations (no STB_*_IMPLEMENTATION here).
#include "figures.h"

#include <hooklens/error.h>

#include <fmt/format.h>
#include <stb/stb_easy_font.h>
#include <stb/stb_image_write.h>

#include <algorithm>
#include <cmath>
#include <fstream>

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
    for (double v : m->values) s.lo = std::min(s.lo, v), s.hi = std::max(s.hi, v);
  if (s.hi <= s.lo) s.hi = s.lo + 1.0;  // a constant matrix: any range draws it in one colour
  return s;
}

Scale signed_scale(const Matrix& m) {
  double largest = 0.0;
  for (double v : m.values) largest = std::max(largest, std::abs(v));
  if (largest == 0.0) largest = 1.0;
  return {-largest, largest, &kDiverging};
}

int cell_size(std::int64_t cells, int requested) {
  if (requested > 0) return requested;
  return int(std::clamp<std::int64_t>(512 / std::max<std::int64_t>(cells, 1), 1, 24));
}

// ---- images --------------------------------------------------------------------------------------

namespace {

constexpr int kFontScale = 2;  // stb_easy_font glyphs are ~7 px tall: doubled to be readable
constexpr int kGlyphHeight = 7 * kFontScale;

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
  std::vector<char> quads(s.size() * 300 + 64);
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

class Image {
 public:
  Image(int width, int height) : width_(width), height_(height), pixels_(std::size_t(width) * height * 3, 255) {}
  int width() const { return width_; }
  int height() const { return height_; }

  void fill(int x, int y, int w, int h, Rgb c) {
    for (int py = std::max(y, 0); py < std::min(y + h, height_); ++py)
      for (int px = std::max(x, 0); px < std::min(x + w, width_); ++px) {
        std::uint8_t* p = &pixels_[(std::size_t(py) * width_ + px) * 3];
        p[0] = c.r, p[1] = c.g, p[2] = c.b;
      }
  }

  // Black text with its top-left corner at (x, y).
  void text(int x, int y, const std::string& text) {
    for (const Box& b : glyph_boxes(text))
      fill(x + int(b.x0) * kFontScale, y + int(b.y0) * kFontScale, int(b.x1 - b.x0) * kFontScale,
           int(b.y1 - b.y0) * kFontScale, {0, 0, 0});
  }

  // Black text turned a quarter left (reading upwards), starting at (x, bottom): its glyphs' tops
  // face x.
  void text_up(int x, int bottom, const std::string& text) {
    for (const Box& b : glyph_boxes(text))
      fill(x + int(b.y0) * kFontScale, bottom - int(b.x1) * kFontScale, int(b.y1 - b.y0) * kFontScale,
           int(b.x1 - b.x0) * kFontScale, {0, 0, 0});
  }

  void save(const fs::path& file) const {
    if (!stbi_write_png(file.string().c_str(), width_, height_, 3, pixels_.data(), width_ * 3))
      throw hooklens::Error(fmt::format("{}: cannot write the PNG", file.string()));
  }

 private:
  int width_, height_;
  std::vector<std::uint8_t> pixels_;
};

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
json draw_panel(Image& image, const Panel& p, int x, int y) {
  const Layout l(p);
  image.text(x, y, p.title);
  const int mx = x + l.row_labels_w, my = y + l.title_h;
  const double span = p.scale.hi - p.scale.lo;
  for (std::int64_t r = 0; r < p.matrix.rows; ++r)
    for (std::int64_t c = 0; c < p.matrix.cols; ++c)
      image.fill(mx + int(c) * p.cell_w, my + int(r) * p.cell_h, p.cell_w, p.cell_h,
                 colour_at(*p.scale.map, (p.matrix.at(r, c) - p.scale.lo) / span));
  for (std::size_t r = 0; r < p.row_labels.size(); ++r)
    image.text(mx - kLabelGap - text_width(p.row_labels[r]),
               my + int(r) * p.cell_h + std::max(0, (p.cell_h - kGlyphHeight) / 2), p.row_labels[r]);
  for (std::size_t c = 0; c < p.col_labels.size(); ++c)  // read upwards, ending just below the matrix
    image.text_up(mx + int(c) * p.cell_w + std::max(0, (p.cell_w - kGlyphHeight) / 2),
                  my + l.matrix_h + kLabelGap + text_width(p.col_labels[c]), p.col_labels[c]);
  const int bar_x = mx + l.matrix_w + kBarGap;
  for (int py = 0; py < l.body_h; ++py)  // top = scale.hi
    image.fill(bar_x, my + py, kBarWidth, 1, colour_at(*p.scale.map, 1.0 - (py + 0.5) / l.body_h));
  image.text(bar_x + kBarWidth + kLabelGap, my, scale_label(p.scale.hi));
  image.text(bar_x + kBarWidth + kLabelGap, my + l.body_h - text_height(), scale_label(p.scale.lo));
  image.text(x, my + std::max(l.body_h, l.matrix_h + l.col_labels_h) + 6, p.caption);
  return {{"title", p.title},
          {"matrix", {{"x", mx}, {"y", my}, {"cell_width", p.cell_w}, {"cell_height", p.cell_h},
                      {"rows", p.matrix.rows}, {"cols", p.matrix.cols}, {"first_row", p.matrix.first_row},
                      {"first_col", p.matrix.first_col}}},
          {"colour_bar", {{"x", bar_x}, {"y", my}, {"width", kBarWidth}, {"height", l.body_h}}},
          {"scale", {{"min", p.scale.lo}, {"max", p.scale.hi}, {"colormap", p.scale.map->name}}}};
}

}  // namespace

int Panel::width() const {
  const Layout l(*this);
  return std::max({text_width(title), text_width(caption),
                   l.row_labels_w + l.matrix_w + kBarGap + kBarWidth + kLabelGap + l.bar_labels_w});
}

int Panel::height() const {
  const Layout l(*this);
  return l.title_h + std::max(l.body_h, l.matrix_h + l.col_labels_h) + 6 + text_height();
}

json write_figure(const fs::path& file, const std::vector<Panel>& panels, int columns) {
  const std::size_t per_row = columns > 0 ? std::size_t(columns) : std::max<std::size_t>(panels.size(), 1);
  // Grid cells as wide as the widest panel of their column and as tall as the tallest of their row.
  std::vector<int> col_w(per_row, 0), row_h((panels.size() + per_row - 1) / per_row, 0);
  for (std::size_t i = 0; i < panels.size(); ++i) {
    col_w[i % per_row] = std::max(col_w[i % per_row], panels[i].width());
    row_h[i / per_row] = std::max(row_h[i / per_row], panels[i].height());
  }
  std::int64_t width = 2 * kMargin - kPanelGap, height = 2 * kMargin - kPanelGap;
  for (int w : col_w) width += w + kPanelGap;
  for (int h : row_h) height += h + kPanelGap;
  if (width > kMaxSide || height > kMaxSide)
    throw hooklens::Error(fmt::format("{}: the figure would be {}x{} pixels (at most {} a side)", file.string(), width,
                                      height, kMaxSide));
  Image image{int(width), int(height)};
  json geometry = json::array();
  int y = kMargin;
  for (std::size_t row = 0; row < row_h.size(); ++row) {
    int x = kMargin;
    for (std::size_t col = 0; col < per_row && row * per_row + col < panels.size(); ++col) {
      geometry.push_back(draw_panel(image, panels[row * per_row + col], x, y));
      x += col_w[col] + kPanelGap;
    }
    y += row_h[row] + kPanelGap;
  }
  image.save(file);
  return {{"width", image.width()}, {"height", image.height()}, {"panels", geometry}};
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

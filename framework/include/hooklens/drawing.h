// Drawing shared by the figures renderer, the example programs and the viewer: colour maps, heatmap
// panels with colour bars and token labels, bar charts, laid out in a row or a grid and drawn once
// with Cairo onto a PNG, SVG or PDF surface (text in DejaVu Sans). Cells are drawn unsmoothed on
// whole pixels, so a test can read a cell's colour back from the geometry write_figure returns (the
// same in every format). A matrix from a captured tensor: hooklens/head_matrix.h.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace hooklens::drawing {

struct Rgb {
  std::uint8_t r, g, b;
};
constexpr Rgb kMissing{200, 200, 200};  // the colour of a cell whose value is not finite

struct ColourMap {
  const char* name;
  const Rgb* stops;
  std::size_t count;
};
extern const ColourMap kViridis;    // sequential: dark purple (low) to yellow (high)
extern const ColourMap kDiverging;  // blue - white - red: white is zero

// t in [0, 1], interpolated linearly between the map's stops.
Rgb colour_at(const ColourMap& map, double t);

struct Matrix {
  std::int64_t rows = 0, cols = 0;
  std::vector<double> values;                 // row-major; NaN draws as kMissing
  std::int64_t first_row = 0, first_col = 0;  // absolute positions, for captions
  double at(std::int64_t r, std::int64_t c) const { return values[std::size_t(r * cols + c)]; }
};

Matrix difference(const Matrix& later, const Matrix& earlier);

struct Scale {
  double lo = 0, hi = 1;
  const ColourMap* map = &kViridis;
};
// From 0 (or the minimum, if negative) to the largest finite value of all `matrices`, so panels that
// share a scale can be compared by colour.
Scale sequential_scale(const std::vector<const Matrix*>& matrices);
// Symmetric around zero, so white is "no change".
Scale signed_scale(const Matrix& m);
// The colour of value `v` on `scale`.
Rgb colour_of(const Scale& scale, double v);

constexpr int kMaxSide = 16384;  // pixels: keeps a mistaken cell size from writing a gigantic file

// Pixels per cell: a 64-token sequence gets 8 px cells (a 512 px heatmap), short ones larger cells;
// `requested` > 0 wins.
int cell_size(std::int64_t cells, int requested = 0);
// The smallest cell that fits one line of label text (labels are drawn one per row / column).
constexpr int kLabelledCell = 16;
// `labels` with all but every n-th blanked, n chosen so that the kept ones fit cells of `cell` px.
std::vector<std::string> thin_labels(std::vector<std::string> labels, int cell);

// One heatmap with its title above, colour bar to the right and caption below. Row labels go left
// of the matrix, column labels below it (reading upwards); empty vectors (or empty strings) draw none.
struct Panel {
  std::string title;
  std::string caption;
  Matrix matrix;
  Scale scale;
  int cell_w = 1, cell_h = 1;
  std::vector<std::string> row_labels = {}, col_labels = {};
};

// A bar chart: one group of bars per label (one bar per series, in the series' colour), a value
// axis from 0 (or the smallest value, if negative) to `hi` (0: the largest value), labels below the
// groups (reading upwards) and a legend when there is more than one series.
struct BarChart {
  struct Series {
    std::string name;
    std::vector<double> values;  // one per label; NaN draws no bar
    Rgb colour;
  };
  std::string title;
  std::string caption;
  std::vector<std::string> labels;
  std::vector<Series> series;
  double hi = 0;
  int bar_w = 12, plot_h = 80;
};

// Writes the panels (or charts) as one figure, `columns` per row (0: all in one row): SVG if `file`
// ends in ".svg", PDF if in ".pdf", else PNG (one unit is one pixel, or one point in a PDF).
// `caption` is one line under the whole figure. With more than one column, a part's title and
// caption are wrapped to about its width, so they leave no gap beside it. Returns the figure's geometry (size, and per panel its
// matrix's position, cell size and colour bar, or per chart its plot area) for summary files.
nlohmann::json write_figure(const std::filesystem::path& file, const std::vector<Panel>& panels, int columns = 0,
                            const std::string& caption = "");
nlohmann::json write_figure(const std::filesystem::path& file, const std::vector<BarChart>& charts, int columns = 0,
                            const std::string& caption = "");

// A token as a label: spaces shown as '_', control characters escaped, invalid UTF-8 as U+FFFD, at most
// `max_chars` characters (not bytes).
std::string token_label(const std::string& token, std::size_t max_chars = 12);

// Pretty JSON with invalid UTF-8 replaced, and a final newline.
std::string dump(const nlohmann::json& j);

}  // namespace hooklens::drawing

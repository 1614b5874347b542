#include "prompt_bars.h"

#include <algorithm>
#include <cmath>

namespace view {

PromptBars prompt_bars(const Grid& grid, int head, int prompt_length, bool autoregressive, int chosen_position) {
  PromptBars bars;
  const int keys = std::min(prompt_length, grid.cols);
  const auto weight = [&](int row, int key) { return head < 0 ? grid.mean_at(row, key) : grid.at(head, row, key); };
  const auto complete = [&](int row) {
    for (int k = 0; k < keys; ++k)
      if (!std::isfinite(weight(row, k))) return false;
    return keys > 0;
  };
  // The row that produced (autoregressive) or holds (diffusion) the generated token at `position`.
  const auto row_of = [&](int position) { return autoregressive ? position - 1 : position; };
  const int first = row_of(prompt_length);
  for (int row = std::max(0, first); row < grid.rows; ++row)
    if (complete(row)) bars.rows.push_back(row);
  bars.mean.assign(std::size_t(std::max(0, keys)), 0.0f);
  for (int row : bars.rows)
    for (int k = 0; k < keys; ++k) bars.mean[std::size_t(k)] += weight(row, k) / float(bars.rows.size());

  if (chosen_position < 0 && autoregressive && !bars.rows.empty()) chosen_position = bars.rows.back() + 1;
  const int row = chosen_position >= prompt_length ? row_of(chosen_position) : -1;
  if (row >= 0 && std::find(bars.rows.begin(), bars.rows.end(), row) != bars.rows.end()) {
    bars.chosen_row = row;
    for (int k = 0; k < keys; ++k) bars.chosen.push_back(weight(row, k));
  }
  return bars;
}

}  // namespace view

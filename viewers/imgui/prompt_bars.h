// How much attention the prompt's tokens get from the generated ones, for the "Prompt tokens" tab.
// Autoregressive runs: generated token i (position P + i) was chosen by the query row of the
// position before it (P + i - 1), so the rows P - 1 .. give the attention "while choosing" each
// generated token. Masked diffusion: the rows of the generated region (positions >= P).
#pragma once
#include "run_model.h"

#include <string>
#include <vector>

namespace view {

struct PromptBars {
  std::vector<int> rows;       // the query rows averaged (those present in the grid)
  std::vector<float> mean;     // per prompt position: the weight averaged over `rows`
  int chosen_row = -1;         // the row of the chosen generated token (-1: none)
  std::vector<float> chosen;   // per prompt position: that row's weight (empty when none)
};

// `head` < 0 averages the heads. `chosen_position` is the generated token to single out (-1: the
// newest one for autoregressive runs, none for diffusion). Rows with uncaptured (NaN) cells over
// the prompt are left out.
PromptBars prompt_bars(const Grid& grid, int head, int prompt_length, bool autoregressive, int chosen_position);

}  // namespace view

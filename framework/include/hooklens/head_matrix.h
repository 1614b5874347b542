// A drawing Matrix from a captured attention pattern (kept out of hooklens/drawing.h, which needs
// no libtorch).
#pragma once
#include <hooklens/drawing.h>

#include <ATen/core/Tensor.h>

namespace hooklens::drawing {

// `pattern` is a contiguous float [1, H, Q, K] whose first row and column are at absolute positions
// first_row, first_col; `head` < 0 averages the heads.
Matrix head_matrix(const at::Tensor& pattern, std::int64_t head, std::int64_t first_row = 0,
                   std::int64_t first_col = 0);

}  // namespace hooklens::drawing

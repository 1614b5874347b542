// See hooklens/head_matrix.h.
#include <hooklens/head_matrix.h>

namespace hooklens::drawing {

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

}  // namespace hooklens::drawing

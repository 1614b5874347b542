// Shared by the weight-reader fuzz targets: the checks made on every tensor a reader accepts.
#pragma once
#include "fuzz_util.h"
#include "hooklens/weights.h"

#include <ATen/ops/sum.h>

#include <cstdint>
#include <string>

namespace fuzz {

// A tensor a reader hands out must lie inside its storage and have no more elements than it (so a
// copy is never larger than what the file holds); its values are all read once (a read outside the
// file's mapping crashes, which the fuzzer reports).
inline void check_tensor(const std::string& name, const at::Tensor& t) {
  if (!t.defined()) violated("tensor '" + name + "' is undefined");
  if (t.numel() == 0) return;
  const std::int64_t item = static_cast<std::int64_t>(t.element_size());
  const std::int64_t storage_numel = static_cast<std::int64_t>(t.storage().nbytes()) / item;
  __int128 last = t.storage_offset();
  for (std::int64_t d = 0; d < t.dim(); ++d) {
    if (t.stride(d) < 0) violated("tensor '" + name + "' has a negative stride");
    last += static_cast<__int128>(t.size(d) - 1) * t.stride(d);
  }
  if (t.storage_offset() < 0 || last >= storage_numel) violated("tensor '" + name + "' reaches past its storage");
  if (t.numel() > storage_numel) violated("tensor '" + name + "' has more elements than its storage");
  (void)at::sum(t.to(at::kDouble)).item<double>();
}

inline void check_tensors(const hooklens::TensorMap& tensors) {
  for (const auto& [name, t] : tensors) check_tensor(name, t);
}

}  // namespace fuzz

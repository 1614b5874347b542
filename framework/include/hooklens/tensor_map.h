// Named tensors, as weight files and run shards hold them.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <string>

namespace hooklens {

using TensorMap = std::map<std::string, at::Tensor>;

}  // namespace hooklens

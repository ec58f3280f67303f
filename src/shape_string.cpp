#include "diffuse/shape_string.h"

#include <ATen/core/Tensor.h>

namespace diffuse {

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string shape_string(const at::Tensor& t) { return t.defined() ? shape_string(t.sizes().vec()) : "undefined"; }

}  // namespace diffuse

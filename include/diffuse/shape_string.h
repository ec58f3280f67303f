// A tensor shape as messages print it: "[2, 3, 28, 28]".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace at {
class Tensor;
}

namespace diffuse {

std::string shape_string(const std::vector<int64_t>& shape);
// The tensor's sizes, or "undefined" for an undefined tensor.
std::string shape_string(const at::Tensor& t);

}  // namespace diffuse

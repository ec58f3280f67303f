#include "diffuse/models/super_res.h"

#include <torch/torch.h>

#include <stdexcept>
#include <string>

#include "diffuse/error.h"
#include "diffuse/models/layers.h"
#include "diffuse/models/network.h"
#include "diffuse/shape_string.h"

namespace diffuse {

torch::Tensor downsample_area(const torch::Tensor& x0, int64_t size) {
  if (!x0.defined() || x0.dim() != 4 || size < 1)
    throw std::invalid_argument("downsample_area: expected images [B, C, H, W] and a size >= 1, got " +
                                shape_string(x0) + " and " + std::to_string(size));
  return torch::adaptive_avg_pool2d(x0, {size, size});  // mode "area" is adaptive average pooling
}

torch::Tensor network_input(const Network& net, const torch::Tensor& x_t, const torch::Tensor& low_res) {
  const int64_t size = net.low_res_size();
  if (size == 0) {
    if (low_res.defined())
      throw std::invalid_argument(net.name() +
                                  ": a low-resolution image was given, but the network is not a "
                                  "super-resolution model");
    return x_t;
  }
  if (!low_res.defined())
    throw std::invalid_argument(net.name() + ": a super-resolution network needs its low-resolution image");
  if (x_t.dim() != 4 || low_res.dim() != 4 || low_res.size(1) != x_t.size(1) || low_res.size(2) != size ||
      low_res.size(3) != size || low_res.size(0) < 1 || x_t.size(0) % low_res.size(0) != 0)
    throw std::invalid_argument(net.name() + ": expected low-resolution images [B, " + std::to_string(x_t.size(1)) +
                                ", " + std::to_string(size) + ", " + std::to_string(size) + "] for x_t " +
                                shape_string(x_t) + ", got " + shape_string(low_res));
  namespace F = torch::nn::functional;
  auto up = F::interpolate(low_res.to(x_t.device(), x_t.scalar_type()),
                           F::InterpolateFuncOptions()
                               .size(std::vector<int64_t>{x_t.size(2), x_t.size(3)})
                               .mode(torch::kBilinear)
                               .align_corners(false));
  if (up.size(0) != x_t.size(0)) up = up.repeat({x_t.size(0) / up.size(0), 1, 1, 1});
  return torch::cat({x_t, up}, 1);
}

}  // namespace diffuse

// Super-resolution conditioning, as improved- and guided-diffusion's SuperResModel: the network
// sees x_t with the low-resolution image upsampled (bilinear, corners not aligned, as
// F.interpolate's default) to x_t's size and stacked on its channels, [B, 2C, H, W]. Training
// and bits/dim make the low-resolution image from x_0 by area averaging (their
// load_superres_data); sampling takes it from the user (diffuse sample --low-res).
#pragma once

#include <torch/types.h>

#include <cstdint>

namespace diffuse {

class Network;

// x_0 [B, C, H, W] averaged down to [B, C, size, size] (F.interpolate mode "area").
torch::Tensor downsample_area(const torch::Tensor& x0, int64_t size);

// What `net` takes as x at x_t: x_t itself for a network with low_res_size() 0 (low_res must be
// undefined), else x_t with low_res [B', C, s, s] (s = net.low_res_size(), B' dividing B: a
// guided batch of k copies of x_t repeats it) upsampled and concatenated. std::invalid_argument
// on a missing, unexpected or misshapen low_res.
torch::Tensor network_input(const Network& net, const torch::Tensor& x_t, const torch::Tensor& low_res);

}  // namespace diffuse

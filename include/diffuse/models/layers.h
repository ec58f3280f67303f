// Small building blocks shared by the networks (improved-diffusion's nn.py equivalents).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/normalization.h>
#include <torch/types.h>

#include <cstdint>
#include <string>

namespace diffuse {

// improved-diffusion's normalization(): GroupNorm with 32 groups, eps 1e-5, affine.
constexpr int64_t kGroupNormGroups = 32;
torch::nn::GroupNorm make_group_norm(int64_t channels);

// GroupNorm32: statistics and affine in float32 whatever the activation dtype, cast back to the
// input's dtype. For float32 input it is a plain group_norm (no casts, no copies).
torch::Tensor group_norm32(const torch::nn::GroupNorm& norm, const torch::Tensor& x);

// SiLU of a temporary the caller owns: in place when autograd does not need the input (no grad
// mode or no grad required), out of place otherwise.
torch::Tensor silu_owned(torch::Tensor x);

// Nearest-neighbour 2x upsampling of [B, C, H, W] (F.interpolate(scale_factor=2, "nearest")).
torch::Tensor upsample_nearest_2x(const torch::Tensor& x);

// improved-diffusion's zero_module: every parameter of the module set to 0.
void zero_parameters(torch::nn::Module& module);

// "[2, 3, 28, 28]" (or "undefined") for error messages.
std::string shape_string(const torch::Tensor& t);

}  // namespace diffuse

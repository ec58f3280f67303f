// The one way samplers and evaluators see a network: its raw output at x_t for timesteps t.
#pragma once

#include <torch/types.h>

#include <functional>

namespace diffuse {

// x_t: [B, ...] in the VP variable; t: [B] in the training schedule's units 0..T-1 (integer for
// the bound, possibly fractional for the sigma-space samplers). With a learned variance the output
// holds 2C channels (prediction, then variance values) along dim 1.
using ModelFn = std::function<torch::Tensor(const torch::Tensor& x_t, const torch::Tensor& t)>;

// Classifier guidance's gradient g = s * grad_x log p(y | x_t) at x_t and the network's time t
// [B] (samplers/classifier_guidance.h makes one from a noisy-image classifier).
using GuidanceGradient = std::function<torch::Tensor(const torch::Tensor& x_t, const torch::Tensor& t)>;

}  // namespace diffuse

// Classifier guidance (Dhariwal & Nichol 2021, sec. 4): a classifier trained on noisy images,
// p(y | x_t, t), steers sampling toward class y through g = s * grad_x log p(y | x_t), which the
// Denoiser applies to every sampler (samplers/denoiser.h: the mean for ancestral sampling, eps
// for the others), as guided-diffusion's classifier_sample.py does with its cond_fn.
#pragma once

#include <torch/types.h>

#include <functional>

#include "diffuse/model_fn.h"

namespace diffuse {

// A classifier's logits [B, K] at (x_t, t), t in the network's units.
using LogitsFn = std::function<torch::Tensor(const torch::Tensor& x_t, const torch::Tensor& t)>;

// g(x_t, t) = scale * grad_x log softmax(logits(x_t, t))[y] for labels [B] (int64, any device).
// Autograd runs even when called inside a sampler's inference mode; only x_t is differentiated
// (give the classifier parameters that need no gradient).
GuidanceGradient classifier_gradient(LogitsFn logits, torch::Tensor labels, double scale);

}  // namespace diffuse

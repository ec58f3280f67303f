// Classifier-free guidance (Ho & Salimans 2022): eps~ = eps(x, null) + w (eps(x, y) - eps(x, null)).
// Applied to the raw prediction channels: every prediction type (eps, x0, v, score) is an
// affine function of eps at fixed (x_t, t), and the weights (1 - w, w) sum to one, so guiding
// the raw output equals guiding eps.
#pragma once

#include <torch/types.h>

#include <functional>

#include "diffuse/samplers/denoiser.h"

namespace diffuse {

// A class-conditional network: labels is an integer tensor [B].
using LabeledModelFn =
    std::function<torch::Tensor(const torch::Tensor& x_t, const torch::Tensor& t, const torch::Tensor& labels)>;

// guided = uncond + scale * (cond - uncond) on the prediction channels; with a learned variance
// (output of 2C channels) the variance channels are the conditional half's.
torch::Tensor combine_guidance(const torch::Tensor& cond, const torch::Tensor& uncond, double scale,
                               bool learned_variance);

// A ModelFn for labels [B] (any device): one batched call on [x; x] with [labels; null_label],
// then combine_guidance. scale == 1 makes a single plain conditional call of batch B.
ModelFn classifier_free_guidance(LabeledModelFn net, torch::Tensor labels, int64_t null_label, double scale,
                                 bool learned_variance);

// The network with fixed labels, no guidance.
ModelFn with_labels(LabeledModelFn net, torch::Tensor labels);

}  // namespace diffuse

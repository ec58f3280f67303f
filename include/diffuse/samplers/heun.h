// Heun's second-order method on the EDM probability-flow ODE (Karras et al. 2022, Algorithm 1
// without churn): an Euler predictor, then the trapezoid of the slopes at both ends; the last
// step (to sigma = 0) is plain Euler, which returns D. Sigmas and start as in euler.h.
#pragma once

#include <torch/types.h>

#include "diffuse/samplers/denoiser.h"
#include "diffuse/samplers/noise_source.h"
#include "diffuse/samplers/sampler_options.h"

namespace diffuse {

// Deterministic; 2 * steps - 1 network evaluations.
torch::Tensor sample_heun(const Denoiser& denoiser, NoiseSource& noise, const SamplerOptions& opts,
                          const torch::Tensor& x_T = {});

}  // namespace diffuse

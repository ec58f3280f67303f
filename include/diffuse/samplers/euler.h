// Euler's method on the EDM probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma
// (Karras et al. 2022, eq. 4 with sigma(t) = t), in x = x0 + sigma eps, over the sigma schedule
// of sigma_schedule.h; the last step (to sigma = 0) returns D. The start is the VP prior
// N(0, I) carried to the EDM variable: x = x_T sqrt(1 + sigma_max^2).
// Euler-ancestral (k-diffusion): each step goes down to sigma_down by Euler and adds fresh
// noise of scale sigma_up, with
//   sigma_up = min(sigma_next, eta sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)),
//   sigma_down = sqrt(sigma_next^2 - sigma_up^2).
#pragma once

#include <torch/types.h>

#include "diffuse/samplers/denoiser.h"
#include "diffuse/samplers/noise_source.h"
#include "diffuse/samplers/sampler_options.h"

namespace diffuse {

// `x_T` (VP variable), when defined, replaces noise.initial(). `steps` network evaluations.
torch::Tensor sample_euler(const Denoiser& denoiser, NoiseSource& noise, const SamplerOptions& opts,
                           const torch::Tensor& x_T = {});
torch::Tensor sample_euler_ancestral(const Denoiser& denoiser, NoiseSource& noise, const SamplerOptions& opts,
                                     const torch::Tensor& x_T = {});

// k-diffusion's get_ancestral_step.
struct AncestralStep {
  double sigma_down, sigma_up;
};
AncestralStep ancestral_step(double sigma, double sigma_next, double eta);

}  // namespace diffuse

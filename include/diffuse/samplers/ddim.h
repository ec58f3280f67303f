// DDIM (Song et al. 2021, eq. 12):
//   x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z,
//   sigma  = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev)     (eq. 16)
// on any spacing; eta = 0 is the deterministic probability-flow solver. The last step goes to
// abar_prev = 1, so the result is the final x0 prediction.
#pragma once

#include <torch/types.h>

#include "diffuse/samplers/denoiser.h"
#include "diffuse/samplers/noise_source.h"
#include "diffuse/samplers/sampler_options.h"

namespace diffuse {

// Returns x_0. `x_T`, when defined, replaces noise.initial(). noise.next() is drawn only when
// eta > 0. 1 network evaluation per step.
torch::Tensor sample_ddim(const Denoiser& denoiser, NoiseSource& noise, const SamplerOptions& opts,
                          const torch::Tensor& x_T = {});

// Deterministic DDIM inversion (improved-diffusion's ddim_reverse_sample): runs the eta = 0 ODE
// from x_0 up through the same steps as sample_ddim with these options and returns x_T, so
// sample_ddim(x_T) reproduces x_0 up to the discretisation error. Each step evaluates the
// model at the current point and level: x_next = sqrt(abar_next) x0 + sqrt(1 - abar_next) eps.
// opts.eta is ignored; clip_x0 / dynamic_threshold apply to the x0 predictions as in sampling.
torch::Tensor ddim_invert(const Denoiser& denoiser, const torch::Tensor& x0, const SamplerOptions& opts);

}  // namespace diffuse

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

// One DDIM step from x at step t of the denoiser's schedule to the level abar_to (the target
// step's abar; 1 for the data): x_to = sqrt(abar_to) x0 + sqrt(1 - abar_to - sigma^2) eps +
// sigma z, with eq. 16's sigma for eta, which is 0 going up (abar_to < abar_t, as inversion
// does). `z` is used only when sigma > 0. Both loops below are made of these steps.
torch::Tensor ddim_step(const Denoiser& denoiser, const torch::Tensor& x, int64_t t, double abar_to, double eta,
                        const torch::Tensor& z = {}, const ReverseOptions& ropts = {});
// Eq. 16's sigma from level abar to abar_to (0 when abar_to <= abar), and the update itself.
double ddim_sigma(double abar, double abar_to, double eta);
torch::Tensor ddim_update(const Predictions& pred, double abar_to, double sigma, const torch::Tensor& z);

// Deterministic DDIM inversion (improved-diffusion's ddim_reverse_sample): runs the eta = 0 ODE
// from x_0 up through the same steps as sample_ddim with these options and returns x_T, so
// sample_ddim(x_T) reproduces x_0 up to the discretisation error. Each step evaluates the
// model at the current point and level: x_next = sqrt(abar_next) x0 + sqrt(1 - abar_next) eps.
// opts.eta is ignored; clip_x0 / dynamic_threshold apply to the x0 predictions as in sampling.
torch::Tensor ddim_invert(const Denoiser& denoiser, const torch::Tensor& x0, const SamplerOptions& opts);

}  // namespace diffuse

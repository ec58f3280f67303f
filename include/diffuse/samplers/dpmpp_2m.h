// DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): a multistep second-order
// exponential integrator of the probability-flow ODE in data prediction, in time
// lambda = log(a / s) (half log-SNR). With h_i = lambda_i - lambda_{i-1}, r_i = h_{i-1} / h_i:
//   D_i = (1 + 1/(2 r_i)) x0_{i-1} - 1/(2 r_i) x0_{i-2}        (first step: D = x0_{i-1})
//   x_i = (s_i / s_{i-1}) x_{i-1} - a_i (exp(-h_i) - 1) D_i
// Noise levels: the sigma schedule of sigma_schedule.h (opts.sigmas: "karras" by default, the
// usual "DPM++ 2M Karras"; "exponential" = uniform in lambda, DPM-Solver's logSNR spacing;
// "model", or any opts.spacing, = the training steps), one network evaluation each, evaluated
// at fractional training t through Denoiser::at_sigma, then a final first-order step to
// sigma = 0 (lambda = +inf) that returns the last x0 prediction (k-diffusion's last step,
// diffusers' lower_order_final with final_sigmas_type "zero"). Worked in the EDM variable
// (x = x_t / a, lambda = -log sigma): x_next = (sigma_next / sigma) x - (exp(-h) - 1) D.
// karras and exponential sigmas are the defaults because t-spacings end badly for a multistep
// method (docs/decisions.md, "DPM-Solver++(2M) runs on Karras sigmas"). Like euler/heun it needs a
// finite sigma_max, so zero-terminal-SNR schedules are refused (use ddim or ddpm there).
#pragma once

#include <torch/types.h>

#include "diffuse/samplers/denoiser.h"
#include "diffuse/samplers/noise_source.h"
#include "diffuse/samplers/sampler_options.h"

namespace diffuse {

// Deterministic: uses only noise.initial() (or `x_T`, VP variable). `steps` network evaluations.
torch::Tensor sample_dpmpp_2m(const Denoiser& denoiser, NoiseSource& noise, const SamplerOptions& opts,
                              const torch::Tensor& x_T = {});

}  // namespace diffuse

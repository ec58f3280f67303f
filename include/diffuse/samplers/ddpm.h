// Ancestral sampling (Ho et al. 2020, Algorithm 2; Luo eq. 84-99): x_{t-1} ~ p(x_{t-1}|x_t) with
// the model's variance type (fixed small, fixed large, learned, learned range), on the full
// schedule or a respaced one (improved-diffusion's SpacedDiffusion: betas recomputed from the
// kept alpha_bar, learned variances interpolated between the respaced beta and beta-tilde).
#pragma once

#include <torch/types.h>

#include "diffuse/samplers/denoiser.h"
#include "diffuse/samplers/noise_source.h"
#include "diffuse/samplers/sampler_options.h"

namespace diffuse {

struct DdpmStep {
  torch::Tensor x_prev;   // x_{t-1}; at step 0, the mean itself (alpha_bar_prev = 1: x0)
  torch::Tensor x0_pred;  // after clipping / thresholding
};
// One step of `process` (the denoiser's trained process or a respacing of it; the network is
// called at its original_t) from x at its step i: x_prev = mean + sigma z, z = `noise` (unused at
// i = 0). A guided denoiser moves the mean by Sigma g (Dhariwal & Nichol 2021, Algorithm 1;
// guided-diffusion's condition_mean), at i = 0 too.
DdpmStep ddpm_step(const Denoiser& denoiser, const GaussianDiffusion& process, const torch::Tensor& x, int64_t i,
                   const torch::Tensor& noise, const ReverseOptions& opts);

// Returns x_0 ([B, ...] like noise.initial()). `x_T`, when defined, replaces noise.initial().
// One network evaluation and (except the last step) one noise.next() per step.
torch::Tensor sample_ddpm(const Denoiser& denoiser, NoiseSource& noise, const SamplerOptions& opts,
                          const torch::Tensor& x_T = {});

}  // namespace diffuse

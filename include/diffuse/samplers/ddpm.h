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

// Returns x_0 ([B, ...] like noise.initial()). `x_T`, when defined, replaces noise.initial().
// One network evaluation and (except the last step) one noise.next() per step.
torch::Tensor sample_ddpm(const Denoiser& denoiser, NoiseSource& noise, const SamplerOptions& opts,
                          const torch::Tensor& x_T = {});

}  // namespace diffuse

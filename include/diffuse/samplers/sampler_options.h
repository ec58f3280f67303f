// Options shared by every sampler, the per-step progress record, and the checks and helpers
// the samplers share (spacing resolution, option validation).
#pragma once

#include <c10/core/InferenceMode.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "diffuse/diffusion.h"

namespace diffuse {

// What a sampler reports before each step (progress bars, trajectory capture).
// Tensors produced inside a sampler are inference tensors (c10::InferenceMode): read or copy
// them; clone() them before any in-place change outside the callback.
struct StepInfo {
  int64_t step = 0;       // 0-based, in sampling order
  int64_t total = 0;      // number of steps of this run
  double t = 0.0;         // the network's timestep at this step (training units, maybe fractional)
  double sigma = 0.0;     // sqrt((1 - abar) / abar) at this step
  torch::Tensor x_t;      // the state at t in the VP variable (x_t = a x0 + s eps)
  torch::Tensor x0_pred;  // the denoiser's x0 at this step (after clipping / thresholding)
};

struct SamplerOptions {
  int64_t steps = 50;
  // Respacing spec (schedule.h space_timesteps: "250", "10,15,20", "ddim50", "leading:50",
  // "trailing:50", "linspace:50", "list:..."). The bare words "leading", "trailing", "linspace"
  // and "ddim" take their count from `steps`; a spec with its own count overrides `steps`.
  // "" = the sampler's default: ddpm: all T steps when steps == T, else "<steps>"; ddim:
  // "ddim<steps>" if an integer stride gives it, else "<steps>"; dpmpp-2m, euler,
  // euler-ancestral, heun: none (the `sigmas` schedule). For these sigma-space samplers a
  // spacing selects training steps and wins over `sigmas`.
  std::string spacing;
  // Stochasticity: DDIM's eta (Song et al. eq. 16; unset = 0, deterministic) and
  // euler-ancestral's eta (unset = 1, k-diffusion's default; 0 gives plain Euler).
  // ddpm, dpmpp-2m, euler and heun ignore it.
  std::optional<double> eta;
  bool clip_x0 = true;             // clamp every x0 prediction to [-1, 1]
  double dynamic_threshold = 0.0;  // Imagen's percentile p in (0, 1]; 0 = off (overrides clip_x0)
  // dpmpp-2m, euler, euler-ancestral, heun: "karras" (Karras et al. eq. 5 with rho between the
  // training schedule's sigma_min and sigma_max), "exponential" (uniform in log sigma) or
  // "model" (the training schedule's own sigmas at "linspace:<steps>" or the spacing).
  std::string sigmas = "karras";
  double rho = 7.0;
  // EDM's stochastic churn (Karras et al. 2022, Algorithm 2), euler and heun only: where
  // s_tmin <= sigma <= s_tmax, raise sigma by gamma = min(s_churn / steps, sqrt(2) - 1) (at most to
  // the schedule's sigma_max) with fresh noise of scale s_noise, then step. s_churn = 0: off.
  double s_churn = 0.0;
  double s_tmin = 0.0;
  double s_tmax = 1.0e4;
  double s_noise = 1.0;
  std::function<void(const StepInfo&)> on_step;
};

// The x0 post-processing the options ask for.
ReverseOptions x0_options(const SamplerOptions& opts);

// Throws UsageError naming the option for impossible settings: steps < 1, steps > max_steps
// (max_steps <= 0: no limit), eta < 0 or not finite, dynamic_threshold outside [0, 1].
void validate_options(const SamplerOptions& opts, int64_t max_steps, const std::string& sampler);

// The kept steps (ascending indices of a schedule of T steps) for opts.spacing, or for
// default_spec when it is empty. Failures throw UsageError naming the 'spacing' option.
std::vector<int64_t> resolve_spacing(const SamplerOptions& opts, int64_t T, const std::string& default_spec,
                                     const std::string& sampler);

namespace detail {
// Runs a sampling loop under c10::InferenceMode (no autograd records, no version counters) and
// returns a normal tensor, so callers may change the result in place.
template <class Body>
torch::Tensor run_in_inference_mode(Body&& body) {
  torch::Tensor x;
  {
    c10::InferenceMode guard;
    x = body();
  }
  return x.is_inference() ? x.clone() : x;
}
}  // namespace detail

}  // namespace diffuse

// The trained network seen as a denoiser: raw output -> (x0, eps) through the core conversions,
// with x0 clipping / dynamic thresholding, NFE counting, respaced-time mapping and the
// continuous-sigma view used by the sigma-space samplers (Euler, Heun), and classifier guidance.
//
// Two coordinates for the same noisy point (Karras et al. 2022, "EDM", and k-diffusion):
//   VP:  x_t = a x0 + s eps,   a = sqrt(abar), s = sqrt(1 - abar)        (what the network sees)
//   EDM: x   = x0 + sigma eps, sigma = s / a = sqrt((1 - abar) / abar),  x = x_t / a
// so a = 1 / sqrt(1 + sigma^2) and the network input is x / sqrt(1 + sigma^2).
#pragma once

#include <torch/types.h>

#include <functional>
#include <vector>

#include "diffuse/diffusion.h"
#include "diffuse/model_fn.h"
#include "diffuse/parameterization.h"

namespace diffuse {

struct DenoiserOutput {
  // x0 (after clipping / thresholding when asked) and eps consistent with it and x_t.
  // v and score are left undefined (use convert() for them): samplers never need them.
  Predictions pred;
  // The learned-variance channels of the output; undefined for fixed variance types.
  torch::Tensor var_values;
};

class Denoiser {
 public:
  // `diffusion` is the TRAINED process: its schedule, prediction type and variance type.
  // If its schedule is itself respaced, the network is called with schedule.original_t().
  // With `guidance` (classifier guidance), every prediction is conditioned as in Dhariwal &
  // Nichol's Algorithm 2 (Song et al. 2021's score view): eps' = eps - sqrt(1 - abar) g after
  // clipping, and x0 re-derived from eps'. Ancestral sampling uses guidance_gradient() instead
  // (their Algorithm 1: the mean moves by Sigma g).
  Denoiser(ModelFn model, GaussianDiffusion diffusion, GuidanceGradient guidance = {});

  const GaussianDiffusion& diffusion() const { return diffusion_; }
  const NoiseSchedule& schedule() const { return diffusion_.schedule(); }
  int64_t num_timesteps() const { return diffusion_.num_timesteps(); }
  Prediction prediction() const { return diffusion_.prediction(); }

  // The raw network output; `model_t` is in the network's own units (original training steps).
  // Every call counts one network evaluation (NFE).
  torch::Tensor network(const torch::Tensor& x_t, double model_t) const;
  torch::Tensor network(const torch::Tensor& x_t, const torch::Tensor& model_t) const;

  // Predictions at integer step t of this denoiser's schedule, the same t for the whole batch.
  DenoiserOutput at_step(const torch::Tensor& x_t, int64_t t, const ReverseOptions& opts = {}) const;
  // Per-sample steps t (integer tensor [B]).
  DenoiserOutput at_steps(const torch::Tensor& x_t, const torch::Tensor& t, const ReverseOptions& opts = {}) const;
  // EDM view: x = x0 + sigma eps (sigma > 0). Returns D(x; sigma) as pred.x0 and
  // eps = (x - D) / sigma, which is also the EDM ODE derivative dx/dsigma.
  DenoiserOutput at_sigma(const torch::Tensor& x, double sigma, const ReverseOptions& opts = {}) const;

  // The network's time for a (fractional) step of this schedule: original_t interpolated.
  double model_t(double t) const;
  // sigma_t = sqrt((1 - abar_t) / abar_t) per step, ascending in t.
  const std::vector<double>& sigmas() const { return sigmas_; }
  double sigma_min() const { return sigmas_.front(); }
  double sigma_max() const { return sigmas_.back(); }
  // k-diffusion's DiscreteSchedule: piecewise-linear interpolation of log sigma over the steps,
  // so t_to_sigma(sigma_to_t(s)) = s on [sigma_min, sigma_max]; clamped to [0, T-1] outside.
  double sigma_to_t(double sigma) const;
  double t_to_sigma(double t) const;

  // model_t for the whole batch as the network's time tensor [B] (float64 for float64 states).
  torch::Tensor time_tensor(const torch::Tensor& x_t, double model_t) const;

  bool guided() const { return static_cast<bool>(guidance_); }
  // g at x_t and the network's time model_t [B]; undefined when not guided().
  torch::Tensor guidance_gradient(const torch::Tensor& x_t, const torch::Tensor& model_t) const;

  // Network evaluations since construction or the last reset. Not thread-safe (one sampler
  // drives one Denoiser at a time).
  int64_t nfe() const { return nfe_; }
  void reset_nfe() const { nfe_ = 0; }

 private:
  DenoiserOutput finish(const torch::Tensor& output, const torch::Tensor& x_t, const torch::Tensor& model_t,
                        const NoiseLevel& n, const ReverseOptions& opts) const;

  ModelFn model_;
  GuidanceGradient guidance_;
  GaussianDiffusion diffusion_;
  std::vector<double> sigmas_, log_sigmas_, model_t_table_;
  bool identity_time_ = true;
  mutable int64_t nfe_ = 0;
};

}  // namespace diffuse

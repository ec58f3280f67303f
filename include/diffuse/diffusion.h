// GaussianDiffusion: the forward process q(x_t|x_0), the closed-form posterior
// q(x_{t-1}|x_t,x_0) and the model's reverse step p(x_{t-1}|x_t), over one NoiseSchedule.
// Shapes: x_0, x_t, noise are [B, ...]; t is an integer tensor [B] of 0-based steps of this
// (possibly respaced) schedule. Results come back in x's dtype and device.
#pragma once

#include <torch/types.h>

#include <string>
#include <vector>

#include "diffuse/parameterization.h"
#include "diffuse/schedule.h"

namespace diffuse {

// How p(x_{t-1}|x_t) gets its variance.
enum class VarianceType {
  FixedSmall,   // beta-tilde, the true posterior variance (clipped log at t = 0)
  FixedLarge,   // beta_t, with t = 0 taken from the posterior variance (improved-diffusion)
  Learned,      // the model outputs log-variance directly
  LearnedRange  // the model outputs v in [-1, 1]: log var = frac log beta + (1-frac) log beta-tilde
};
VarianceType parse_variance_type(const std::string& name);
std::string to_string(VarianceType v);
std::vector<std::string> variance_type_names();
inline bool is_learned(VarianceType v) { return v == VarianceType::Learned || v == VarianceType::LearnedRange; }

struct GaussianStats {
  torch::Tensor mean, variance, log_variance;
};

// Options of one reverse step.
struct ReverseOptions {
  bool clip_x0 = true;                   // clamp the predicted x_0 to [-1, 1]
  double dynamic_threshold = 0.0;        // Imagen's percentile p (e.g. 0.995); 0 = off
  double dynamic_threshold_max = 1.0e9;  // upper bound on the per-sample threshold s
};

struct ReverseStats {
  torch::Tensor mean, variance, log_variance;  // of p(x_{t-1}|x_t)
  torch::Tensor x0_pred, eps_pred;             // after clipping / thresholding of x0
};

// Imagen dynamic thresholding: s = max(1, quantile_p(|x0|)) per sample; x0 <- clamp(x0, -s, s) / s.
torch::Tensor dynamic_threshold(const torch::Tensor& x0, double p, double max_s = 1.0e9);

class GaussianDiffusion {
 public:
  // sigma_data: EDM's data scale for Prediction::Edm (unused by the other kinds).
  GaussianDiffusion(NoiseSchedule schedule, Prediction prediction = Prediction::Epsilon,
                    VarianceType variance = VarianceType::FixedSmall, double sigma_data = 0.5);

  const NoiseSchedule& schedule() const { return schedule_; }
  int64_t num_timesteps() const { return schedule_.num_timesteps(); }
  Prediction prediction() const { return prediction_; }
  double sigma_data() const { return sigma_data_; }
  VarianceType variance_type() const { return variance_; }
  // Channels the network must output for data with `channels` channels.
  int64_t model_output_channels(int64_t channels) const { return is_learned(variance_) ? 2 * channels : channels; }

  NoiseLevel level(const torch::Tensor& t, const torch::Tensor& like) const { return noise_level(schedule_, t, like); }
  // What the network is fed at level n: c_in x for EDM's preconditioning (preconditioning.h),
  // x_t itself (no copy) for the other kinds, whose c_in is 1 in the VP coordinate.
  torch::Tensor network_input(const torch::Tensor& x_t, const NoiseLevel& n) const;

  // q(x_t | x_0) = N(sqrt(abar) x_0, (1 - abar) I)  (Luo eq. 70).
  GaussianStats q_mean_variance(const torch::Tensor& x0, const torch::Tensor& t) const;
  // x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps  (reparameterisation, Luo eq. 69).
  torch::Tensor q_sample(const torch::Tensor& x0, const torch::Tensor& t, const torch::Tensor& noise) const;
  // q(x_{t-1} | x_t, x_0)  (Luo eq. 84).
  GaussianStats q_posterior(const torch::Tensor& x0, const torch::Tensor& x_t, const torch::Tensor& t) const;

  // The model's p(x_{t-1} | x_t) from its raw output (with variance channels if learned).
  ReverseStats p_mean_variance(const torch::Tensor& model_output, const torch::Tensor& x_t, const torch::Tensor& t,
                               const ReverseOptions& opts = {}) const;
  // x_{t-1} = mean + [t > 0] exp(log_var / 2) noise.
  torch::Tensor p_sample(const ReverseStats& stats, const torch::Tensor& t, const torch::Tensor& noise) const;

  // Split a learned-variance output into (prediction, variance values); passthrough otherwise.
  std::pair<torch::Tensor, torch::Tensor> split_output(const torch::Tensor& model_output) const;

 private:
  NoiseSchedule schedule_;
  Prediction prediction_;
  VarianceType variance_;
  double sigma_data_;
  std::vector<double> fixed_large_variance_, fixed_large_log_variance_, log_betas_;
};

}  // namespace diffuse

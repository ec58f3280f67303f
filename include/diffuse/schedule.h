// Noise schedules: betas -> every derived per-t quantity, precomputed once in float64.
//
// Notation follows Luo (2022), "Understanding Diffusion Models: A Unified Perspective":
//   alpha_t = 1 - beta_t, alpha_bar_t = prod_{s<=t} alpha_s,
//   q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)            (eq. 70)
//   q(x_{t-1} | x_t, x_0) = N(mu_q(x_t, x_0), sigma_q^2(t) I)                (eq. 84)
// Time indices are 0-based, as in improved-diffusion: t = 0 is the first noising step and
// t = T-1 the last, so alpha_bar_prev[0] = 1.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace diffuse {

// Vdm: a continuous gamma(t) schedule (gamma_schedule.h), possibly learned; its betas come from
// the network's schedule (factory.h), not from make_betas.
enum class ScheduleKind { Linear, Cosine, Sigmoid, ScaledLinear, Custom, Edm, Vdm };

ScheduleKind parse_schedule_kind(const std::string& name);  // throws, listing allowed names
std::string to_string(ScheduleKind kind);
std::vector<std::string> schedule_kind_names();

// How to build the betas. Defaults are the published ones for each kind.
struct ScheduleSpec {
  ScheduleKind kind = ScheduleKind::Linear;
  int64_t timesteps = 1000;
  // Linear: DDPM's 1e-4..0.02 at T = 1000, scaled by 1000/T for other T (improved-diffusion).
  // ScaledLinear: linspace(sqrt(start), sqrt(end))^2 (Stable Diffusion: 0.00085..0.012).
  // Sigmoid: sigmoid(linspace(-6, 6)) mapped onto [start, end].
  // A negative value means "the kind's default".
  double beta_start = -1.0;
  double beta_end = -1.0;
  double cosine_s = 0.008;         // Nichol & Dhariwal offset
  double max_beta = 0.999;         // cap for the cosine schedule
  std::vector<double> betas;       // Custom: explicit betas (or read from betas_file)
  std::string betas_file;          // Custom: whitespace/comma separated numbers
  bool zero_terminal_snr = false;  // Lin et al. (2023): rescale so alpha_bar_{T-1} = 0
  // Edm: T noise levels evenly spaced in log sigma over [sigma_min, sigma_max] (EDM's range),
  // alpha_bar = 1 / (1 + sigma^2): a VP grid on which continuous-sigma models also sample
  // ancestrally, and between whose steps log sigma is linear, so fractional steps are exact.
  double sigma_min = 0.002;
  double sigma_max = 80.0;
};

// The Edm schedule's grid: step i has log sigma = log_min + i log_step (T >= 2, 0 < min < max).
struct LogSigmaGrid {
  double log_min = 0.0, log_step = 1.0;
  double step_of(double log_sigma) const { return (log_sigma - log_min) / log_step; }
};
LogSigmaGrid log_sigma_grid(const ScheduleSpec& spec);

// EDM's noise conditioning c_noise = ln(sigma) / 4 (Karras et al. 2022, Table 1), in the units of
// a 1000-step model's t (x 1000) so that the sinusoidal embedding sees the range it was built for.
constexpr double kEdmNoiseScale = 250.0;

// The raw beta sequence for a spec (validated: 0 < beta <= 1, finite, T >= 1).
std::vector<double> make_betas(const ScheduleSpec& spec);

// Lin et al. (2023), Algorithm 1: shift and scale sqrt(alpha_bar) so the last value is 0 and
// the first is unchanged, then recover the betas.
std::vector<double> rescale_zero_terminal_snr(const std::vector<double>& betas);

// Which of the T original steps a respaced schedule keeps.
//  - improved-diffusion's space_timesteps strings: "250", "10,15,20" (per equal section),
//    "ddim50" (an integer stride giving exactly 50 steps);
//  - diffusers-style spacings: "leading:50", "trailing:50", "linspace:50";
//  - an explicit list: "list:0,10,20,999".
// Returns the kept steps sorted ascending, unique.
std::vector<int64_t> space_timesteps(int64_t num_timesteps, const std::string& spec);

// One row of a schedule, for printing.
struct ScheduleRow {
  int64_t t, original_t;
  double beta, alpha_bar, alpha_bar_prev, posterior_variance, posterior_log_variance_clipped, posterior_mean_coef1,
      posterior_mean_coef2, snr;
};

class NoiseSchedule {
 public:
  // `original_t[i]` is the step of the base schedule that step i stands for (identity if empty);
  // `model_time[i]` is what the network is fed at step i (original_t if empty): a continuous
  // schedule's discrete view feeds gamma (gamma_schedule.h).
  explicit NoiseSchedule(std::vector<double> betas, std::vector<int64_t> original_t = {},
                         std::vector<double> model_time = {});
  static NoiseSchedule from_spec(const ScheduleSpec& spec);

  NoiseSchedule(const NoiseSchedule& other);
  NoiseSchedule& operator=(const NoiseSchedule& other);

  int64_t num_timesteps() const { return static_cast<int64_t>(betas_.size()); }

  // A new schedule over the kept steps (ascending indices into this one), with
  // beta_i = 1 - alpha_bar[k_i] / alpha_bar[k_{i-1}], so alpha_bar is unchanged at kept steps.
  NoiseSchedule respace(const std::vector<int64_t>& kept) const;
  NoiseSchedule respace(const std::string& spec) const { return respace(space_timesteps(num_timesteps(), spec)); }

  // float64 host vectors, one value per t.
  const std::vector<double>& betas() const { return betas_; }
  const std::vector<double>& alphas() const { return alphas_; }
  const std::vector<double>& alpha_bar() const { return alpha_bar_; }
  const std::vector<double>& alpha_bar_prev() const { return alpha_bar_prev_; }
  const std::vector<double>& alpha_bar_next() const { return alpha_bar_next_; }
  const std::vector<double>& sqrt_alpha_bar() const { return sqrt_alpha_bar_; }
  const std::vector<double>& sqrt_one_minus_alpha_bar() const { return sqrt_one_minus_alpha_bar_; }
  const std::vector<double>& log_one_minus_alpha_bar() const { return log_one_minus_alpha_bar_; }
  const std::vector<double>& sqrt_recip_alpha_bar() const { return sqrt_recip_alpha_bar_; }
  const std::vector<double>& sqrt_recipm1_alpha_bar() const { return sqrt_recipm1_alpha_bar_; }
  const std::vector<double>& posterior_variance() const { return posterior_variance_; }
  const std::vector<double>& posterior_log_variance_clipped() const { return posterior_log_variance_clipped_; }
  const std::vector<double>& posterior_mean_coef1() const { return posterior_mean_coef1_; }
  const std::vector<double>& posterior_mean_coef2() const { return posterior_mean_coef2_; }
  const std::vector<double>& snr() const { return snr_; }
  const std::vector<double>& log_snr() const { return log_snr_; }
  const std::vector<int64_t>& original_t() const { return original_t_; }
  const std::vector<double>& model_time() const { return model_time_; }

  ScheduleRow row(int64_t t) const;

  // Gather `table[t]` for a batch of integer timesteps t (shape [B]) and return it in
  // like's dtype and device, shaped [B, 1, ..., 1] to broadcast against `like`.
  // The float64 table is copied to each device once and cached.
  torch::Tensor gather(const std::vector<double>& table, const torch::Tensor& t, const torch::Tensor& like) const;

 private:
  void derive();
  const torch::Tensor& device_table(const std::vector<double>& table, const torch::Device& device) const;

  std::vector<double> betas_, alphas_, alpha_bar_, alpha_bar_prev_, alpha_bar_next_, sqrt_alpha_bar_,
      sqrt_one_minus_alpha_bar_, log_one_minus_alpha_bar_, sqrt_recip_alpha_bar_, sqrt_recipm1_alpha_bar_,
      posterior_variance_, posterior_log_variance_clipped_, posterior_mean_coef1_, posterior_mean_coef2_, snr_,
      log_snr_;
  std::vector<int64_t> original_t_;
  std::vector<double> model_time_;

  // Per-(table, device) float64 copies, so gathers on CUDA never copy host memory per batch.
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, torch::Tensor> cache_;
};

// Reshape a [B] tensor to [B, 1, ..., 1] with like.dim() dimensions.
torch::Tensor broadcast_to_batch(const torch::Tensor& v, const torch::Tensor& like);

}  // namespace diffuse

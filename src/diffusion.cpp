#include "diffuse/diffusion.h"

#include <cmath>

#include "diffuse/error.h"
#include "diffuse/preconditioning.h"
#include "enum_names.h"

namespace diffuse {

namespace {
const EnumNames<VarianceType>& variance_types() {
  static const EnumNames<VarianceType> table("variance type", {{VarianceType::FixedSmall, "fixed_small"},
                                                               {VarianceType::FixedLarge, "fixed_large"},
                                                               {VarianceType::Learned, "learned"},
                                                               {VarianceType::LearnedRange, "learned_range"}});
  return table;
}
}  // namespace
std::vector<std::string> variance_type_names() { return variance_types().names(); }
VarianceType parse_variance_type(const std::string& name) { return variance_types().parse(name); }
std::string to_string(VarianceType v) { return variance_types().to_string(v); }

torch::Tensor dynamic_threshold(const torch::Tensor& x0, double p, double max_s) {
  const auto B = x0.size(0);
  auto flat = x0.reshape({B, -1}).abs().to(torch::kFloat32);
  auto s = torch::quantile(flat, p, /*dim=*/1, /*keepdim=*/false).clamp(1.0, max_s).to(x0.scalar_type());
  s = broadcast_to_batch(s, x0);
  return torch::max(torch::min(x0, s), -s) / s;
}

GaussianDiffusion::GaussianDiffusion(NoiseSchedule schedule, Prediction prediction, VarianceType variance,
                                     double sigma_data)
    : schedule_(std::move(schedule)), prediction_(prediction), variance_(variance), sigma_data_(sigma_data) {
  if (!(sigma_data > 0.0) || !std::isfinite(sigma_data))
    throw std::invalid_argument("GaussianDiffusion: sigma_data must be positive and finite, got " +
                                std::to_string(sigma_data));
  const auto T = static_cast<size_t>(schedule_.num_timesteps());
  const auto& pv = schedule_.posterior_variance();
  const auto& betas = schedule_.betas();
  fixed_large_variance_.resize(T);
  fixed_large_log_variance_.resize(T);
  log_betas_.resize(T);
  for (size_t t = 0; t < T; ++t) {
    // improved-diffusion: betas, except at t = 0 where the posterior variance (of t = 1) is used,
    // so the decoder's variance is not the (large) beta_0 of a respaced schedule.
    fixed_large_variance_[t] = t == 0 ? (T > 1 ? pv[1] : betas[0]) : betas[t];
    fixed_large_log_variance_[t] = std::log(fixed_large_variance_[t]);
    log_betas_[t] = std::log(betas[t]);
  }
}

GaussianStats GaussianDiffusion::q_mean_variance(const torch::Tensor& x0, const torch::Tensor& t) const {
  const auto& s = schedule_;
  auto mean = s.gather(s.sqrt_alpha_bar(), t, x0) * x0;
  auto var = s.gather(s.alpha_bar(), t, x0);
  var = (1.0 - var).expand_as(x0);
  auto logv = s.gather(s.log_one_minus_alpha_bar(), t, x0).expand_as(x0);
  return {mean, var, logv};
}

torch::Tensor GaussianDiffusion::q_sample(const torch::Tensor& x0, const torch::Tensor& t,
                                          const torch::Tensor& noise) const {
  const auto n = level(t, x0);
  return n.a * x0 + n.s * noise;
}

GaussianStats GaussianDiffusion::q_posterior(const torch::Tensor& x0, const torch::Tensor& x_t,
                                             const torch::Tensor& t) const {
  const auto& s = schedule_;
  auto mean = s.gather(s.posterior_mean_coef1(), t, x_t) * x0 + s.gather(s.posterior_mean_coef2(), t, x_t) * x_t;
  auto var = s.gather(s.posterior_variance(), t, x_t).expand_as(x_t);
  auto logv = s.gather(s.posterior_log_variance_clipped(), t, x_t).expand_as(x_t);
  return {mean, var, logv};
}

std::pair<torch::Tensor, torch::Tensor> GaussianDiffusion::split_output(const torch::Tensor& out) const {
  if (!is_learned(variance_)) return {out, torch::Tensor()};
  TORCH_CHECK(out.size(1) % 2 == 0, "a learned-variance model must output an even number of channels, got ",
              out.size(1));
  auto parts = out.chunk(2, 1);
  return {parts[0], parts[1]};
}

torch::Tensor GaussianDiffusion::network_input(const torch::Tensor& x_t, const NoiseLevel& n) const {
  return input_scale(prediction_, n, sigma_data_).times(x_t);
}

ReverseStats GaussianDiffusion::p_mean_variance(const torch::Tensor& model_output, const torch::Tensor& x_t,
                                                const torch::Tensor& t, const ReverseOptions& opts) const {
  auto [pred, var_values] = split_output(model_output);
  TORCH_CHECK(pred.sizes() == x_t.sizes(), "model output ", pred.sizes(), " does not match x_t ", x_t.sizes());
  const auto& s = schedule_;
  torch::Tensor variance, log_variance;
  switch (variance_) {
    case VarianceType::FixedSmall:
      variance = s.gather(s.posterior_variance(), t, x_t).expand_as(x_t);
      log_variance = s.gather(s.posterior_log_variance_clipped(), t, x_t).expand_as(x_t);
      break;
    case VarianceType::FixedLarge:
      variance = s.gather(fixed_large_variance_, t, x_t).expand_as(x_t);
      log_variance = s.gather(fixed_large_log_variance_, t, x_t).expand_as(x_t);
      break;
    case VarianceType::Learned:
      log_variance = var_values;
      variance = log_variance.exp();
      break;
    case VarianceType::LearnedRange: {
      // Nichol & Dhariwal eq. 15: Sigma = exp(v log beta + (1 - v) log beta-tilde), v mapped from [-1, 1].
      auto min_log = s.gather(s.posterior_log_variance_clipped(), t, x_t);
      auto max_log = s.gather(log_betas_, t, x_t);
      auto frac = (var_values + 1.0) / 2.0;
      log_variance = frac * max_log + (1.0 - frac) * min_log;
      variance = log_variance.exp();
      break;
    }
  }
  const auto n = level(t, x_t);
  auto views = convert(prediction_, pred, x_t, n, sigma_data_);
  auto x0 = views.x0;
  bool changed = false;
  if (opts.dynamic_threshold > 0.0) {
    x0 = dynamic_threshold(x0, opts.dynamic_threshold, opts.dynamic_threshold_max);
    changed = true;
  } else if (opts.clip_x0) {
    x0 = x0.clamp(-1.0, 1.0);
    changed = true;
  }
  auto eps = changed ? eps_from_x0(x_t, x0, n) : views.eps;
  auto post = q_posterior(x0, x_t, t);
  return {post.mean, variance, log_variance, x0, eps};
}

torch::Tensor GaussianDiffusion::p_sample(const ReverseStats& stats, const torch::Tensor& t,
                                          const torch::Tensor& noise) const {
  auto nonzero = broadcast_to_batch((t.to(stats.mean.device()) != 0).to(stats.mean.scalar_type()), stats.mean);
  return stats.mean + nonzero * (0.5 * stats.log_variance).exp() * noise;
}

}  // namespace diffuse

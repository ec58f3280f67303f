#include "diffuse/losses.h"

#include <cmath>
#include <limits>

#include "diffuse/error.h"
#include "diffuse/preconditioning.h"
#include "enum_names.h"

namespace diffuse {

namespace {
constexpr double kLn2 = 0.69314718055994530942;
}  // namespace

torch::Tensor mean_flat(const torch::Tensor& x) {
  if (x.dim() <= 1) return x;
  return x.reshape({x.size(0), -1}).mean(1);
}

torch::Tensor normal_kl(const torch::Tensor& mean1, const torch::Tensor& logvar1, const torch::Tensor& mean2,
                        const torch::Tensor& logvar2) {
  return 0.5 * (-1.0 + logvar2 - logvar1 + (logvar1 - logvar2).exp() + (mean1 - mean2).pow(2) * (-logvar2).exp());
}

namespace {
const EnumNames<DecoderCdf>& decoder_cdfs() {
  static const EnumNames<DecoderCdf> table("decoder_cdf", {{DecoderCdf::Exact, "exact"}, {DecoderCdf::Tanh, "tanh"}});
  return table;
}
}  // namespace
std::vector<std::string> decoder_cdf_names() { return decoder_cdfs().names(); }
DecoderCdf parse_decoder_cdf(const std::string& name) { return decoder_cdfs().parse(name); }
std::string to_string(DecoderCdf v) { return decoder_cdfs().to_string(v); }

torch::Tensor discretized_gaussian_log_likelihood(const torch::Tensor& x, const torch::Tensor& mean,
                                                  const torch::Tensor& log_scale, DecoderCdf cdf) {
  TORCH_CHECK(x.sizes() == mean.sizes(), "x and mean differ in shape");
  auto centered = x - mean;
  auto inv_std = (-log_scale).exp();
  auto plus_in = inv_std * (centered + 1.0 / 255.0);
  auto min_in = inv_std * (centered - 1.0 / 255.0);
  if (cdf == DecoderCdf::Tanh) {
    // improved-diffusion's approximate_standard_normal_cdf and its 1e-12 floors, as published
    // bits/dim were computed.
    auto approx = [](const torch::Tensor& v) {
      return 0.5 * (1.0 + torch::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v.pow(3))));
    };
    auto cdf_plus = approx(plus_in), cdf_min = approx(min_in);
    auto lp_low = cdf_plus.clamp_min(1e-12).log();
    auto lp_high = (1.0 - cdf_min).clamp_min(1e-12).log();
    auto lp_mid = (cdf_plus - cdf_min).clamp_min(1e-12).log();
    return torch::where(x < -0.999, lp_low, torch::where(x > 0.999, lp_high, lp_mid));
  }
  // log Phi(plus) for the lowest bin and log(1 - Phi(min)) = log Phi(-min) for the highest.
  auto log_cdf_plus = torch::special::log_ndtr(plus_in);
  auto log_one_minus_cdf_min = torch::special::log_ndtr(-min_in);
  // Phi(b) - Phi(a), a < b, in log space: log Phi(b) + log(1 - exp(log Phi(a) - log Phi(b))). Taking
  // the tail away from the mean (Phi(-min) - Phi(-plus) on its right) keeps both CDFs small, so
  // nothing cancels and nothing underflows: a bin 60 standard deviations out, as an untrained
  // x0-prediction meets at t = 0, still has a finite log-probability and a gradient in float32.
  auto right = centered > 0;
  auto log_hi = torch::special::log_ndtr(torch::where(right, -min_in, plus_in));
  auto log_lo = torch::special::log_ndtr(torch::where(right, -plus_in, min_in));
  auto tiny = std::numeric_limits<float>::min();  // only reached if the two CDFs round to equal
  auto log_delta = log_hi + (-torch::expm1(log_lo - log_hi)).clamp_min(tiny).log();
  return torch::where(x < -0.999, log_cdf_plus, torch::where(x > 0.999, log_one_minus_cdf_min, log_delta));
}

torch::Tensor prior_bpd(const GaussianDiffusion& diffusion, const torch::Tensor& x0) {
  const auto T = diffusion.num_timesteps();
  auto t = torch::full({x0.size(0)}, T - 1, torch::TensorOptions().dtype(torch::kLong).device(x0.device()));
  auto q = diffusion.q_mean_variance(x0, t);
  auto zeros = torch::zeros_like(x0);
  return mean_flat(normal_kl(q.mean, q.log_variance, zeros, zeros)) / kLn2;
}

VlbTerm vlb_term_bpd(const GaussianDiffusion& diffusion, const torch::Tensor& model_output, const torch::Tensor& x0,
                     const torch::Tensor& x_t, const torch::Tensor& t, const ReverseOptions& opts, DecoderCdf cdf) {
  auto post = diffusion.q_posterior(x0, x_t, t);
  auto p = diffusion.p_mean_variance(model_output, x_t, t, opts);
  auto kl = mean_flat(normal_kl(post.mean, post.log_variance, p.mean, p.log_variance)) / kLn2;
  // L_0: the decoder's NLL; its scale is exp(log_var / 2).
  auto nll = -mean_flat(discretized_gaussian_log_likelihood(x0, p.mean, 0.5 * p.log_variance, cdf)) / kLn2;
  auto is_zero = (t.to(kl.device()) == 0);
  return {torch::where(is_zero, nll, kl), p.x0_pred, p.eps_pred};
}

namespace {
const EnumNames<LossType>& loss_types() {
  static const EnumNames<LossType> table(
      "loss", {{LossType::Simple, "simple", {"mse"}}, {LossType::Hybrid, "hybrid"}, {LossType::Kl, "kl"}});
  return table;
}
}  // namespace
std::vector<std::string> loss_type_names() { return loss_types().names(); }
LossType parse_loss_type(const std::string& name) { return loss_types().parse(name); }
std::string to_string(LossType v) { return loss_types().to_string(v); }

namespace {
const EnumNames<LossWeighting>& loss_weightings() {
  static const EnumNames<LossWeighting> table(
      "loss weighting",
      {{LossWeighting::None, "none"}, {LossWeighting::MinSnr, "min_snr", {"min-snr"}}, {LossWeighting::Snr, "snr"}});
  return table;
}
}  // namespace
std::vector<std::string> loss_weighting_names() { return loss_weightings().names(); }
LossWeighting parse_loss_weighting(const std::string& name) { return loss_weightings().parse(name); }
std::string to_string(LossWeighting v) { return loss_weightings().to_string(v); }

torch::Tensor loss_weight(const GaussianDiffusion& diffusion, const LossConfig& cfg, const NoiseLevel& n,
                          const torch::Tensor& like) {
  if (cfg.weighting == LossWeighting::None) return torch::ones({like.size(0)}, like.options());
  const NoiseLevel n64{n.a.reshape({-1}).to(torch::kFloat64), n.s.reshape({-1}).to(torch::kFloat64)};
  const auto snr = (n64.a / n64.s).square();
  const auto out2 = preconditioning(diffusion.prediction(), n64, diffusion.sigma_data()).c_out().tensor(n64.a).square();
  const auto w0 = cfg.weighting == LossWeighting::MinSnr ? torch::clamp_max(snr, cfg.min_snr_gamma) : snr;
  const auto w = w0 * out2;
  return torch::where(torch::isfinite(w), w, torch::ones_like(w)).to(like.scalar_type());
}

torch::Tensor loss_weight(const GaussianDiffusion& diffusion, const LossConfig& cfg, const torch::Tensor& t,
                          const torch::Tensor& like) {
  const auto& s = diffusion.schedule();
  const auto t64 = t.reshape({-1});
  const auto like64 = torch::empty({t64.size(0)}, like.options().dtype(torch::kFloat64));
  return loss_weight(
      diffusion, cfg,
      NoiseLevel{s.gather(s.sqrt_alpha_bar(), t64, like64), s.gather(s.sqrt_one_minus_alpha_bar(), t64, like64)}, like);
}

namespace {
// Per-sample mean squared error of the prediction against its regression target, in float32.
torch::Tensor target_mse(const GaussianDiffusion& diffusion, const torch::Tensor& pred, const torch::Tensor& x0,
                         const torch::Tensor& noise, const NoiseLevel& n) {
  const auto target = training_target(diffusion.prediction(), x0, noise, n, diffusion.sigma_data());
  return mean_flat((pred.to(torch::kFloat32) - target.to(torch::kFloat32)).pow(2));
}
}  // namespace

TrainingLoss mse_loss(const GaussianDiffusion& diffusion, const LossConfig& cfg, const torch::Tensor& model_output,
                      const torch::Tensor& x0, const torch::Tensor& noise, const NoiseLevel& n) {
  if (cfg.type != LossType::Simple)
    throw std::invalid_argument("mse_loss: only the simple loss is defined at continuous noise levels, not " +
                                to_string(cfg.type));
  const auto mse = target_mse(diffusion, diffusion.split_output(model_output).first, x0, noise, n);
  TrainingLoss out;
  out.mse = mse * loss_weight(diffusion, cfg, n, mse);
  out.loss = out.mse;
  return out;
}

TrainingLoss training_losses(const GaussianDiffusion& diffusion, const LossConfig& cfg,
                             const torch::Tensor& model_output, const torch::Tensor& x0, const torch::Tensor& x_t,
                             const torch::Tensor& t, const torch::Tensor& noise) {
  TrainingLoss out;
  const double T = static_cast<double>(diffusion.num_timesteps());
  auto [pred, var_values] = diffusion.split_output(model_output);
  if (cfg.type != LossType::Simple) {
    // The VLB term only trains the variance when the mean has its own (MSE) loss.
    auto frozen = cfg.type == LossType::Hybrid && var_values.defined() ? torch::cat({pred.detach(), var_values}, 1)
                                                                       : model_output;
    auto vb = vlb_term_bpd(diffusion, frozen.to(torch::kFloat32), x0.to(torch::kFloat32), x_t.to(torch::kFloat32), t,
                           ReverseOptions{false, 0.0})
                  .bpd;
    out.vb = vb * (cfg.type == LossType::Hybrid ? cfg.hybrid_lambda * T : T);
  }
  if (cfg.type != LossType::Kl) {
    const auto mse = target_mse(diffusion, pred, x0, noise, diffusion.level(t, x0));
    out.mse = mse * loss_weight(diffusion, cfg, t, mse);
  }
  if (cfg.type == LossType::Simple) out.loss = out.mse;
  else if (cfg.type == LossType::Kl) out.loss = out.vb;
  else out.loss = out.mse + out.vb;
  return out;
}

TrainingLoss classifier_losses(const torch::Tensor& logits, const torch::Tensor& labels) {
  if (logits.dim() != 2 || labels.dim() != 1 || labels.size(0) != logits.size(0))
    throw std::invalid_argument("classifier_losses: expected logits [B, K] and labels [B]");
  TrainingLoss out;
  out.loss = torch::nn::functional::cross_entropy(
      logits, labels.to(torch::kLong), torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  return out;
}

}  // namespace diffuse

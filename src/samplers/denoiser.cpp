#include "diffuse/samplers/denoiser.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "diffuse/error.h"
#include "diffuse/preconditioning.h"

namespace diffuse {

namespace {

// The dtype of the timestep tensor handed to the network: float64 for float64 states (tests,
// exact references), float32 otherwise (half precision cannot hold t ~ 999 with fractions).
torch::ScalarType time_dtype(const torch::Tensor& x) {
  return x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

// A 0-dim CPU float64 tensor: combines with tensors of any device and dtype without a copy.
torch::Tensor host_scalar(double v) { return torch::scalar_tensor(v, torch::kFloat64); }

NoiseLevel scalar_level(double abar) { return {host_scalar(std::sqrt(abar)), host_scalar(std::sqrt(1.0 - abar))}; }

}  // namespace

Denoiser::Denoiser(ModelFn model, GaussianDiffusion diffusion, GuidanceGradient guidance)
    : model_(std::move(model)), guidance_(std::move(guidance)), diffusion_(std::move(diffusion)) {
  if (!model_) throw std::invalid_argument("Denoiser: the model function is empty");
  const auto& s = diffusion_.schedule();
  const auto T = static_cast<size_t>(s.num_timesteps());
  sigmas_.resize(T);
  log_sigmas_.resize(T);
  model_t_table_.resize(T);
  for (size_t t = 0; t < T; ++t) {
    const double ab = s.alpha_bar()[t];
    sigmas_[t] = std::sqrt((1.0 - ab) / ab);  // +inf where abar = 0 (zero terminal SNR)
    // log sigma = (log(1 - abar) - log(abar)) / 2, accurate for abar near 1.
    log_sigmas_[t] = 0.5 * (std::log1p(-ab) - std::log(ab));
    model_t_table_[t] = s.model_time()[t];
    identity_time_ = identity_time_ && s.model_time()[t] == static_cast<double>(t);
  }
}

torch::Tensor Denoiser::time_tensor(const torch::Tensor& x_t, double model_t) const {
  return torch::full({x_t.size(0)}, model_t, x_t.options().dtype(time_dtype(x_t)));
}

torch::Tensor Denoiser::network(const torch::Tensor& x_t, double model_t) const {
  return network(x_t, time_tensor(x_t, model_t));
}

torch::Tensor Denoiser::guidance_gradient(const torch::Tensor& x_t, const torch::Tensor& model_t) const {
  if (!guidance_) return {};
  auto g = guidance_(x_t, model_t);
  TORCH_CHECK(g.defined() && g.sizes() == x_t.sizes(), "the guidance gradient is ",
              g.defined() ? g.sizes() : c10::IntArrayRef{}, " for x_t of ", x_t.sizes());
  return g.to(x_t.scalar_type());
}

torch::Tensor Denoiser::network(const torch::Tensor& x_t, const torch::Tensor& model_t) const {
  ++nfe_;
  auto out = model_(x_t, model_t);
  TORCH_CHECK(out.defined() && out.dim() == x_t.dim() && out.size(0) == x_t.size(0), "the model returned ",
              out.defined() ? out.sizes() : c10::IntArrayRef{}, " for an input of ", x_t.sizes());
  return out;
}

double Denoiser::model_t(double t) const {
  if (identity_time_) return t;
  const double hi_t = static_cast<double>(model_t_table_.size() - 1);
  t = std::clamp(t, 0.0, hi_t);
  const auto lo = static_cast<size_t>(std::floor(t));
  const auto hi = std::min(lo + 1, model_t_table_.size() - 1);
  const double w = t - static_cast<double>(lo);
  return (1.0 - w) * model_t_table_[lo] + w * model_t_table_[hi];
}

double Denoiser::sigma_to_t(double sigma) const {
  const double ls = std::log(sigma);
  const auto& L = log_sigmas_;
  if (L.size() == 1 || !(ls > L.front())) return 0.0;
  if (ls >= L.back()) return static_cast<double>(L.size() - 1);
  // First index with L[hi] >= ls; log sigma is strictly increasing in t.
  const auto hi = static_cast<size_t>(std::lower_bound(L.begin(), L.end(), ls) - L.begin());
  const size_t lo = hi - 1;
  const double w = (ls - L[lo]) / (L[hi] - L[lo]);
  return static_cast<double>(lo) + std::clamp(w, 0.0, 1.0);
}

double Denoiser::t_to_sigma(double t) const {
  const double hi_t = static_cast<double>(log_sigmas_.size() - 1);
  t = std::clamp(t, 0.0, hi_t);
  const auto lo = static_cast<size_t>(std::floor(t));
  if (lo + 1 >= log_sigmas_.size()) return sigmas_[lo];
  const double w = t - static_cast<double>(lo);
  if (w == 0.0) return sigmas_[lo];
  return std::exp((1.0 - w) * log_sigmas_[lo] + w * log_sigmas_[lo + 1]);
}

DenoiserOutput Denoiser::finish(const torch::Tensor& output, const torch::Tensor& x_t, const torch::Tensor& model_t,
                                const NoiseLevel& n, const ReverseOptions& opts) const {
  auto [pred, var_values] = diffusion_.split_output(output);
  TORCH_CHECK(pred.sizes() == x_t.sizes(), "model prediction ", pred.sizes(), " does not match x_t ", x_t.sizes(),
              " (prediction ", to_string(prediction()), ", variance ", to_string(diffusion_.variance_type()), ")");
  const bool process = opts.dynamic_threshold > 0.0 || opts.clip_x0;
  DenoiserOutput out;
  out.var_values = var_values;
  auto& p = out.pred;
  // x0 first; eps is derived only once x0 is final (clipping changes it).
  const auto pc = preconditioning(prediction(), n, diffusion_.sigma_data());
  p.x0 = pc.x0(x_t, pred);
  if (!process) p.eps = pc.eps(x_t, pred);
  if (opts.dynamic_threshold > 0.0) p.x0 = dynamic_threshold(p.x0, opts.dynamic_threshold, opts.dynamic_threshold_max);
  else if (opts.clip_x0) p.x0 = p.x0.clamp(-1.0, 1.0);
  if (!p.eps.defined()) p.eps = eps_from_x0(x_t, p.x0, n);
  if (guidance_) {
    // The score -eps / s gains g: eps' = eps - s g (guided-diffusion's condition_score).
    p.eps = p.eps - n.s * guidance_gradient(x_t, model_t);
    p.x0 = x0_from_eps(x_t, p.eps, n);
  }
  return out;
}

DenoiserOutput Denoiser::at_step(const torch::Tensor& x_t, int64_t t, const ReverseOptions& opts) const {
  if (t < 0 || t >= num_timesteps())
    throw std::out_of_range("Denoiser::at_step: t = " + std::to_string(t) + " outside [0, " +
                            std::to_string(num_timesteps() - 1) + "]");
  const auto mt = time_tensor(x_t, model_t_table_[static_cast<size_t>(t)]);
  const auto n = scalar_level(schedule().alpha_bar()[static_cast<size_t>(t)]);
  const auto out = network(diffusion_.network_input(x_t, n), mt);
  return finish(out, x_t, mt, n, opts);
}

DenoiserOutput Denoiser::at_steps(const torch::Tensor& x_t, const torch::Tensor& t, const ReverseOptions& opts) const {
  auto mt = schedule().gather(model_t_table_, t, x_t).reshape({-1}).to(time_dtype(x_t));
  const auto n = diffusion_.level(t, x_t);
  const auto out = network(diffusion_.network_input(x_t, n), mt);
  return finish(out, x_t, mt, n, opts);
}

DenoiserOutput Denoiser::at_sigma(const torch::Tensor& x, double sigma, const ReverseOptions& opts) const {
  if (!(sigma > 0.0) || !std::isfinite(sigma))
    throw std::invalid_argument("Denoiser::at_sigma: sigma must be positive and finite, got " + std::to_string(sigma));
  const auto n = noise_level_at_sigma(host_scalar(sigma));
  const auto x_t = x * n.a;
  const auto mt = time_tensor(x_t, model_t(sigma_to_t(sigma)));
  const auto out = network(diffusion_.network_input(x_t, n), mt);
  // D(x; sigma) = x0 and (x - D)/sigma = (x_t - a x0)/s = eps: the VP conversions serve as is.
  return finish(out, x_t, mt, n, opts);
}

}  // namespace diffuse

#include "diffuse/samplers/euler.h"

#include <algorithm>
#include <cmath>

#include "diffuse/samplers/sigma_schedule.h"

namespace diffuse {

AncestralStep ancestral_step(double sigma, double sigma_next, double eta) {
  if (eta == 0.0) return {sigma_next, 0.0};
  const double up = std::min(sigma_next, eta * std::sqrt(sigma_next * sigma_next *
                                                         (sigma * sigma - sigma_next * sigma_next) / (sigma * sigma)));
  return {std::sqrt(std::max(0.0, sigma_next * sigma_next - up * up)), up};
}

namespace {

torch::Tensor run_euler(const std::string& name, const Denoiser& denoiser, NoiseSource& noise,
                        const SamplerOptions& opts, const torch::Tensor& x_T, double eta) {
  return run_sigma_sampler(name, denoiser, noise, opts, x_T,
                           [&](int64_t, const torch::Tensor& x, const DenoiserOutput& d, double s, double s_next) {
                             // dx/dsigma = (x - D) / sigma = eps; ancestral: down to sigma_down,
                             // then fresh noise of sigma_up.
                             const auto step = ancestral_step(s, s_next, eta);
                             auto next = torch::add(x, d.pred.eps, step.sigma_down - s);
                             if (step.sigma_up > 0.0) next.add_(noise.next(), step.sigma_up);
                             return next;
                           });
}

}  // namespace

torch::Tensor sample_euler(const Denoiser& denoiser, NoiseSource& noise, const SamplerOptions& opts,
                           const torch::Tensor& x_T) {
  return run_euler("euler", denoiser, noise, opts, x_T, 0.0);
}

torch::Tensor sample_euler_ancestral(const Denoiser& denoiser, NoiseSource& noise, const SamplerOptions& opts,
                                     const torch::Tensor& x_T) {
  return run_euler("euler-ancestral", denoiser, noise, opts, x_T, opts.eta.value_or(1.0));
}

}  // namespace diffuse

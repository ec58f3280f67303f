#include "diffuse/samplers/euler.h"

#include <algorithm>
#include <cmath>

#include "diffuse/samplers/sigma_schedule.h"

namespace diffuse {

AncestralStep ancestral_step(double sigma, double sigma_next, double eta) {
  if (eta == 0.0) return {sigma_next, 0.0};
  const double up =
      std::min(sigma_next, eta * std::sqrt(sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next) / (sigma * sigma)));
  return {std::sqrt(std::max(0.0, sigma_next * sigma_next - up * up)), up};
}

namespace {

torch::Tensor run_euler(const std::string& name, const Denoiser& denoiser, NoiseSource& noise,
                        const SamplerOptions& opts, const torch::Tensor& x_T, double eta) {
  const auto sig = sampling_sigmas(denoiser, opts, name);
  const auto ropts = x0_options(opts);
  const auto N = static_cast<int64_t>(sig.size()) - 1;

  return detail::run_in_inference_mode([&] {
    // The VP prior N(0, I) in the EDM variable: x = x_T / a = x_T sqrt(1 + sigma_max^2).
    auto x = (x_T.defined() ? x_T : noise.initial()) * std::sqrt(1.0 + sig[0] * sig[0]);
    for (int64_t i = 0; i < N; ++i) {
      const double s = sig[static_cast<size_t>(i)], s_next = sig[static_cast<size_t>(i + 1)];
      const auto d = denoiser.at_sigma(x, s, ropts);
      if (opts.on_step)
        opts.on_step(StepInfo{i, N, denoiser.model_t(denoiser.sigma_to_t(s)), s, x / std::sqrt(1.0 + s * s), d.pred.x0});
      if (s_next == 0.0) return d.pred.x0;  // Euler to sigma = 0 lands on D
      // dx/dsigma = (x - D) / sigma = eps.
      const auto step = ancestral_step(s, s_next, eta);
      x = torch::add(x, d.pred.eps, step.sigma_down - s);
      if (step.sigma_up > 0.0) x.add_(noise.next(), step.sigma_up);
    }
    return x;  // unreachable: the schedule ends at 0
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

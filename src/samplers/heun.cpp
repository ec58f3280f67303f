#include "diffuse/samplers/heun.h"

#include "diffuse/samplers/sigma_schedule.h"

namespace diffuse {

torch::Tensor sample_heun(const Denoiser& denoiser, NoiseSource& noise, const SamplerOptions& opts,
                          const torch::Tensor& x_T) {
  const auto ropts = x0_options(opts);
  return run_sigma_sampler("heun", denoiser, noise, opts, x_T,
                           [&](int64_t, const torch::Tensor& x, const DenoiserOutput& d, double s, double s_next) {
                             // EDM Algorithm 1, lines 5-8: Euler predictor, then the mean of both
                             // slopes dx/dsigma = eps.
                             const double dt = s_next - s;
                             const auto x_pred = torch::add(x, d.pred.eps, dt);
                             const auto d2 = denoiser.at_sigma(x_pred, s_next, ropts);
                             return torch::add(x, d.pred.eps.add(d2.pred.eps), 0.5 * dt);
                           });
}

}  // namespace diffuse

#include "diffuse/samplers/dpmpp_2m.h"

#include <cmath>

#include "diffuse/samplers/sigma_schedule.h"

namespace diffuse {

torch::Tensor sample_dpmpp_2m(const Denoiser& denoiser, NoiseSource& noise, const SamplerOptions& opts,
                              const torch::Tensor& x_T) {
  // In the EDM variable x = x_t / a (lambda = -log sigma), the update of Algorithm 2 reads
  //   x_next = (sigma_next / sigma) x - (exp(-h) - 1) D,
  // the VP form divided by a_next. The final step to sigma = 0 is first order (x = x0).
  torch::Tensor prev_x0;
  double prev_sigma = 0.0;
  return run_sigma_sampler("dpmpp-2m", denoiser, noise, opts, x_T,
                           [&](int64_t, const torch::Tensor& x, const DenoiserOutput& d, double s, double s_next) {
                             const auto& x0 = d.pred.x0;
                             const double h = std::log(s) - std::log(s_next);  // lambda_next - lambda
                             const double phi = -std::expm1(-h);               // 1 - exp(-h)
                             torch::Tensor D = x0;
                             if (prev_x0.defined()) {
                               // r = h_prev / h; D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}.
                               const double h_prev = std::log(prev_sigma) - std::log(s);
                               const double c = h / (2.0 * h_prev);
                               D = torch::add(x0 * (1.0 + c), prev_x0, -c);
                             }
                             prev_x0 = x0;
                             prev_sigma = s;
                             return torch::add(x * (s_next / s), D, phi);
                           });
}

}  // namespace diffuse

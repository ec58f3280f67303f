#include "diffuse/samplers/dpmpp_2m.h"

#include <cmath>

#include "diffuse/samplers/sigma_schedule.h"

namespace diffuse {

torch::Tensor sample_dpmpp_2m(const Denoiser& denoiser, NoiseSource& noise, const SamplerOptions& opts,
                              const torch::Tensor& x_T) {
  const std::string name = "dpmpp-2m";
  const auto sig = sampling_sigmas(denoiser, opts, name);
  const auto ropts = x0_options(opts);
  const auto N = static_cast<int64_t>(sig.size()) - 1;

  return detail::run_in_inference_mode([&] {
    // In the EDM variable x = x_t / a (lambda = -log sigma), the update of Algorithm 2 reads
    //   x_next = (sigma_next / sigma) x - (exp(-h) - 1) D,
    // the VP form divided by a_next. Start: the VP prior N(0, I), x = x_T sqrt(1 + sigma_max^2).
    auto x = (x_T.defined() ? x_T : noise.initial()) * std::sqrt(1.0 + sig[0] * sig[0]);
    torch::Tensor prev_x0;
    for (int64_t i = 0; i < N; ++i) {
      const double s = sig[static_cast<size_t>(i)], s_next = sig[static_cast<size_t>(i + 1)];
      auto x0 = denoiser.at_sigma(x, s, ropts).pred.x0;
      if (opts.on_step)
        opts.on_step(StepInfo{i, N, denoiser.model_t(denoiser.sigma_to_t(s)), s, x / std::sqrt(1.0 + s * s), x0});
      // Final step to sigma = 0 (lambda = +inf): first order, x = x0.
      if (s_next == 0.0) return x0;
      const double h = std::log(s) - std::log(s_next);  // lambda_next - lambda
      const double phi = -std::expm1(-h);                // 1 - exp(-h)
      torch::Tensor D = x0;
      if (prev_x0.defined()) {
        // r = h_prev / h; D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}.
        const double h_prev = std::log(sig[static_cast<size_t>(i - 1)]) - std::log(s);
        const double c = h / (2.0 * h_prev);
        D = torch::add(x0 * (1.0 + c), prev_x0, -c);
      }
      x = torch::add(x * (s_next / s), D, phi);
      prev_x0 = std::move(x0);
    }
    return x;  // unreachable: the schedule ends at 0
  });
}

}  // namespace diffuse

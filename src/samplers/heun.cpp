#include "diffuse/samplers/heun.h"

#include <cmath>

#include "diffuse/samplers/sigma_schedule.h"

namespace diffuse {

torch::Tensor sample_heun(const Denoiser& denoiser, NoiseSource& noise, const SamplerOptions& opts,
                          const torch::Tensor& x_T) {
  const std::string name = "heun";
  const auto sig = sampling_sigmas(denoiser, opts, name);
  const auto ropts = x0_options(opts);
  const auto N = static_cast<int64_t>(sig.size()) - 1;

  return detail::run_in_inference_mode([&] {
    auto x = (x_T.defined() ? x_T : noise.initial()) * std::sqrt(1.0 + sig[0] * sig[0]);
    for (int64_t i = 0; i < N; ++i) {
      const double s = sig[static_cast<size_t>(i)], s_next = sig[static_cast<size_t>(i + 1)];
      const auto d = denoiser.at_sigma(x, s, ropts);
      if (opts.on_step)
        opts.on_step(StepInfo{i, N, denoiser.model_t(denoiser.sigma_to_t(s)), s, x / std::sqrt(1.0 + s * s), d.pred.x0});
      if (s_next == 0.0) return d.pred.x0;  // last step: Euler to sigma = 0, which is D
      const double dt = s_next - s;
      // EDM Algorithm 1, lines 5-8: Euler predictor, then the mean of both slopes.
      const auto x_pred = torch::add(x, d.pred.eps, dt);
      const auto d2 = denoiser.at_sigma(x_pred, s_next, ropts);
      x = torch::add(x, d.pred.eps.add(d2.pred.eps), 0.5 * dt);
    }
    return x;  // unreachable: the schedule ends at 0
  });
}

}  // namespace diffuse

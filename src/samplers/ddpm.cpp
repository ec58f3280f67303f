#include "diffuse/samplers/ddpm.h"

#include <cmath>
#include <optional>

namespace diffuse {

DdpmStep ddpm_step(const Denoiser& denoiser, const GaussianDiffusion& process, const torch::Tensor& x, int64_t i,
                   const torch::Tensor& noise, const ReverseOptions& opts) {
  const double model_t = process.schedule().model_time()[static_cast<size_t>(i)];
  const auto mt = denoiser.time_tensor(x, model_t);
  const auto t = torch::full({x.size(0)}, i, x.options().dtype(torch::kLong));
  const auto out = denoiser.network(process.network_input(x, process.level(t, x)), mt);
  const auto st = process.p_mean_variance(out, x, t, opts);
  // At the first kept step alpha_bar_prev = 1, so the posterior mean is x0 itself; use it exactly
  // (the mean's coefficients are 1 and 0 only up to rounding).
  auto mean = i == 0 ? st.x0_pred : st.mean;
  if (denoiser.guided()) mean = mean + st.variance * denoiser.guidance_gradient(x, mt);
  if (i == 0) return {mean, st.x0_pred};
  return {mean + st.log_variance.mul(0.5).exp() * noise, st.x0_pred};
}

torch::Tensor sample_ddpm(const Denoiser& denoiser, NoiseSource& noise, const SamplerOptions& opts,
                          const torch::Tensor& x_T) {
  const std::string name = "ddpm";
  const int64_t T = denoiser.num_timesteps();
  validate_options(opts, T, name);
  // All T steps run on the trained process itself (respacing all steps would recompute the
  // betas with rounding); anything else on a respaced process, as improved-diffusion does.
  const bool full = opts.spacing.empty() && opts.steps == T;
  std::optional<GaussianDiffusion> spaced;
  if (!full) {
    const auto kept = resolve_spacing(opts, T, std::to_string(opts.steps), name);
    spaced.emplace(denoiser.schedule().respace(kept), denoiser.diffusion().prediction(),
                   denoiser.diffusion().variance_type(), denoiser.diffusion().sigma_data());
  }
  const GaussianDiffusion& gd = full ? denoiser.diffusion() : *spaced;
  const NoiseSchedule& sched = gd.schedule();
  const auto ropts = x0_options(opts);

  return detail::run_in_inference_mode([&] {
    auto x = x_T.defined() ? x_T : noise.initial();
    const int64_t N = gd.num_timesteps();
    for (int64_t i = N - 1; i >= 0; --i) {
      const auto k = static_cast<size_t>(i);
      const auto step = ddpm_step(denoiser, gd, x, i, i > 0 ? noise.next() : torch::Tensor(), ropts);
      if (opts.on_step) {
        const double ab = sched.alpha_bar()[k];
        opts.on_step(StepInfo{N - 1 - i, N, sched.model_time()[k], std::sqrt((1.0 - ab) / ab), x, step.x0_pred});
      }
      x = step.x_prev;
    }
    return x;
  });
}

}  // namespace diffuse

#include "diffuse/samplers/ddim.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "diffuse/error.h"
#include "diffuse/schedule.h"

namespace diffuse {

namespace {

// improved-diffusion's "ddim<steps>" (an integer stride) when one exists, else its even
// per-section spacing "<steps>".
std::string default_ddim_spacing(int64_t T, int64_t steps) {
  try {
    space_timesteps(T, "ddim" + std::to_string(steps));
    return "ddim" + std::to_string(steps);
  } catch (const UsageError&) {
    return std::to_string(steps);
  }
}

}  // namespace

double ddim_sigma(double abar, double abar_to, double eta) {
  if (abar_to <= abar || eta == 0.0) return 0.0;
  // Song et al. eq. 16; eta = 1 gives the DDPM posterior variance.
  return eta * std::sqrt((1.0 - abar_to) / (1.0 - abar) * (1.0 - abar / abar_to));
}

torch::Tensor ddim_update(const Predictions& pred, double abar_to, double sigma, const torch::Tensor& z) {
  // Guard eta > 1, where sigma^2 may exceed 1 - abar_to.
  const double c_eps = std::sqrt(std::max(0.0, 1.0 - abar_to - sigma * sigma));
  auto x = torch::add(pred.x0 * std::sqrt(abar_to), pred.eps, c_eps);
  if (sigma > 0.0) x.add_(z, sigma);
  return x;
}

torch::Tensor ddim_step(const Denoiser& denoiser, const torch::Tensor& x, int64_t t, double abar_to, double eta,
                        const torch::Tensor& z, const ReverseOptions& ropts) {
  const double ab = denoiser.schedule().alpha_bar()[static_cast<size_t>(t)];
  const double sigma = ddim_sigma(ab, abar_to, eta);
  if (sigma > 0.0 && !z.defined()) throw std::invalid_argument("ddim_step: eta > 0 needs the noise z");
  return ddim_update(denoiser.at_step(x, t, ropts).pred, abar_to, sigma, z);
}

torch::Tensor sample_ddim(const Denoiser& denoiser, NoiseSource& noise, const SamplerOptions& opts,
                          const torch::Tensor& x_T) {
  const std::string name = "ddim";
  const int64_t T = denoiser.num_timesteps();
  validate_options(opts, T, name);
  const auto kept = resolve_spacing(opts, T, default_ddim_spacing(T, opts.steps), name);
  const double eta = opts.eta.value_or(0.0);
  const auto ropts = x0_options(opts);
  const auto& abar = denoiser.schedule().alpha_bar();

  return detail::run_in_inference_mode([&] {
    auto x = x_T.defined() ? x_T : noise.initial();
    const auto N = static_cast<int64_t>(kept.size());
    for (int64_t j = N - 1; j >= 0; --j) {
      const int64_t t = kept[static_cast<size_t>(j)];
      const double ab = abar[static_cast<size_t>(t)];
      const double ab_prev = j > 0 ? abar[static_cast<size_t>(kept[static_cast<size_t>(j - 1)])] : 1.0;
      const auto d = denoiser.at_step(x, t, ropts);
      if (opts.on_step)
        opts.on_step(StepInfo{N - 1 - j, N, denoiser.model_t(static_cast<double>(t)),
                              denoiser.sigmas()[static_cast<size_t>(t)], x, d.pred.x0});
      if (j == 0) return d.pred.x0;  // abar_prev = 1: x_prev = x0 exactly
      const double sigma = ddim_sigma(ab, ab_prev, eta);
      x = ddim_update(d.pred, ab_prev, sigma, sigma > 0.0 ? noise.next() : torch::Tensor());
    }
    return x;  // unreachable: N >= 1
  });
}

torch::Tensor ddim_invert(const Denoiser& denoiser, const torch::Tensor& x0, const SamplerOptions& opts) {
  const std::string name = "ddim";
  const int64_t T = denoiser.num_timesteps();
  validate_options(opts, T, name);
  const auto kept = resolve_spacing(opts, T, default_ddim_spacing(T, opts.steps), name);
  const auto ropts = x0_options(opts);
  const auto& abar = denoiser.schedule().alpha_bar();

  return detail::run_in_inference_mode([&] {
    auto x = x0;
    const auto N = static_cast<int64_t>(kept.size());
    for (int64_t j = 0; j < N; ++j) {
      // The current level is kept[j - 1] (clean data before the first step, where the first
      // kept step stands in for it); the next is kept[j].
      const int64_t t_cur = kept[static_cast<size_t>(std::max<int64_t>(j - 1, 0))];
      const double ab_next = abar[static_cast<size_t>(kept[static_cast<size_t>(j)])];
      const auto d = denoiser.at_step(x, t_cur, ropts);
      if (opts.on_step)
        opts.on_step(StepInfo{j, N, denoiser.model_t(static_cast<double>(t_cur)),
                              denoiser.sigmas()[static_cast<size_t>(t_cur)], x, d.pred.x0});
      x = ddim_update(d.pred, ab_next, 0.0, {});
    }
    return x;
  });
}

}  // namespace diffuse

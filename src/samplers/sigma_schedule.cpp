#include "diffuse/samplers/sigma_schedule.h"

#include <algorithm>
#include <cmath>

#include "diffuse/error.h"
#include "diffuse/samplers/denoiser.h"
#include "diffuse/samplers/registry.h"
#include "enum_names.h"

namespace diffuse {

namespace {
const EnumNames<SigmaSchedule>& sigma_schedules() {
  static const EnumNames<SigmaSchedule> table("sigmas", {{SigmaSchedule::Karras, "karras"},
                                                         {SigmaSchedule::Exponential, "exponential"},
                                                         {SigmaSchedule::Model, "model"}});
  return table;
}
}  // namespace
std::vector<std::string> sigma_schedule_names() { return sigma_schedules().names(); }
SigmaSchedule parse_sigma_schedule(const std::string& name) { return sigma_schedules().parse(name); }
std::string to_string(SigmaSchedule v) { return sigma_schedules().to_string(v); }

std::vector<double> karras_sigmas(int64_t n, double sigma_min, double sigma_max, double rho) {
  std::vector<double> out(static_cast<size_t>(n) + 1, 0.0);
  const double lo = std::pow(sigma_min, 1.0 / rho), hi = std::pow(sigma_max, 1.0 / rho);
  for (int64_t i = 0; i < n; ++i) {
    const double ramp = n == 1 ? 0.0 : static_cast<double>(i) / static_cast<double>(n - 1);
    out[static_cast<size_t>(i)] = std::pow(hi + ramp * (lo - hi), rho);
  }
  // Exact ends: the karras ramp should start and stop on the schedule's own sigmas.
  out[0] = sigma_max;
  if (n > 1) out[static_cast<size_t>(n - 1)] = sigma_min;
  return out;
}

std::vector<double> exponential_sigmas(int64_t n, double sigma_min, double sigma_max) {
  std::vector<double> out(static_cast<size_t>(n) + 1, 0.0);
  const double lo = std::log(sigma_min), hi = std::log(sigma_max);
  for (int64_t i = 0; i < n; ++i) {
    const double ramp = n == 1 ? 0.0 : static_cast<double>(i) / static_cast<double>(n - 1);
    out[static_cast<size_t>(i)] = std::exp(hi + ramp * (lo - hi));
  }
  out[0] = sigma_max;
  if (n > 1) out[static_cast<size_t>(n - 1)] = sigma_min;
  return out;
}

std::vector<double> sampling_sigmas(const Denoiser& denoiser, const SamplerOptions& opts, const std::string& sampler) {
  const SigmaSchedule kind = [&] {
    try {
      return parse_sigma_schedule(opts.sigmas);
    } catch (const UsageError& e) {
      throw UsageError("sampler '" + sampler + "': option " + e.what());
    }
  }();
  const bool discrete = kind == SigmaSchedule::Model || !opts.spacing.empty();
  validate_options(opts, discrete ? denoiser.num_timesteps() : 0, sampler);
  if (!std::isfinite(denoiser.sigma_max()))
    throw UsageError("sampler '" + sampler +
                     "': the training schedule ends at alpha_bar = 0 (zero terminal SNR), so sigma_max is "
                     "infinite; use ddpm or ddim");
  if (kind == SigmaSchedule::Exponential && opts.spacing.empty())
    return exponential_sigmas(opts.steps, denoiser.sigma_min(), denoiser.sigma_max());
  if (kind == SigmaSchedule::Karras && opts.spacing.empty()) {
    if (!(opts.rho > 0.0) || !std::isfinite(opts.rho))
      throw UsageError("sampler '" + sampler + "': option 'rho' must be > 0, got " + std::to_string(opts.rho));
    return karras_sigmas(opts.steps, denoiser.sigma_min(), denoiser.sigma_max(), opts.rho);
  }
  const auto kept = resolve_spacing(opts, denoiser.num_timesteps(), "linspace", sampler);
  std::vector<double> out;
  out.reserve(kept.size() + 1);
  for (auto it = kept.rbegin(); it != kept.rend(); ++it) out.push_back(denoiser.sigmas()[static_cast<size_t>(*it)]);
  out.push_back(0.0);
  return out;
}

namespace {

// EDM Algorithm 2, lines 4-6: sigma_hat = sigma (1 + gamma), x += sqrt(sigma_hat^2 - sigma^2) s_noise eps.
// sigma_hat stays within the schedule, where the network was trained.
double churn(torch::Tensor& x, double sigma, int64_t steps, const SamplerOptions& opts, double sigma_max,
             NoiseSource& noise) {
  if (sigma < opts.s_tmin || sigma > opts.s_tmax) return sigma;
  const double gamma = std::min(opts.s_churn / static_cast<double>(steps), std::sqrt(2.0) - 1.0);
  const double hat = std::min(sigma * (1.0 + gamma), std::max(sigma, sigma_max));
  if (!(hat > sigma)) return sigma;
  x = x + noise.next() * (opts.s_noise * std::sqrt(hat * hat - sigma * sigma));
  return hat;
}

}  // namespace

torch::Tensor run_sigma_sampler(const std::string& sampler, const Denoiser& denoiser, NoiseSource& noise,
                                const SamplerOptions& opts, const torch::Tensor& x_T, const SigmaStep& step) {
  const auto sig = sampling_sigmas(denoiser, opts, sampler);
  const auto ropts = x0_options(opts);
  const auto N = static_cast<int64_t>(sig.size()) - 1;
  const bool churns = opts.s_churn > 0.0 && find_sampler(sampler).takes_churn;
  return detail::run_in_inference_mode([&] {
    auto x = (x_T.defined() ? x_T : noise.initial()) * std::sqrt(1.0 + sig[0] * sig[0]);
    for (int64_t i = 0; i < N; ++i) {
      double s = sig[static_cast<size_t>(i)];
      const double s_next = sig[static_cast<size_t>(i + 1)];
      if (churns) s = churn(x, s, N, opts, denoiser.sigma_max(), noise);
      const auto d = denoiser.at_sigma(x, s, ropts);
      if (opts.on_step)
        opts.on_step(
            StepInfo{i, N, denoiser.model_t(denoiser.sigma_to_t(s)), s, x / std::sqrt(1.0 + s * s), d.pred.x0});
      if (s_next == 0.0) return d.pred.x0;  // the step to sigma = 0 lands on D
      x = step(i, x, d, s, s_next);
    }
    return x;  // unreachable: the schedule ends at 0
  });
}

}  // namespace diffuse

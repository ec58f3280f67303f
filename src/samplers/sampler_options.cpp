#include "diffuse/samplers/sampler_options.h"

#include <cmath>

#include "diffuse/error.h"
#include "diffuse/schedule.h"

namespace diffuse {

ReverseOptions x0_options(const SamplerOptions& opts) {
  ReverseOptions r;
  r.clip_x0 = opts.clip_x0;
  r.dynamic_threshold = opts.dynamic_threshold;
  return r;
}

void validate_options(const SamplerOptions& opts, int64_t max_steps, const std::string& sampler) {
  const std::string who = "sampler '" + sampler + "': option ";
  if (opts.steps < 1) throw UsageError(who + "'steps' must be >= 1, got " + std::to_string(opts.steps));
  if (max_steps > 0 && opts.steps > max_steps)
    throw UsageError(who + "'steps' = " + std::to_string(opts.steps) + " exceeds the " + std::to_string(max_steps) +
                     " timesteps of the training schedule");
  if (opts.eta && (!std::isfinite(*opts.eta) || *opts.eta < 0.0))
    throw UsageError(who + "'eta' must be a finite number >= 0, got " + std::to_string(*opts.eta));
  if (!(opts.s_churn >= 0.0) || !std::isfinite(opts.s_churn))
    throw UsageError(who + "'s_churn' must be a finite number >= 0, got " + std::to_string(opts.s_churn));
  if (!(opts.s_noise > 0.0) || !std::isfinite(opts.s_noise))
    throw UsageError(who + "'s_noise' must be a finite number > 0, got " + std::to_string(opts.s_noise));
  if (!(opts.s_tmin >= 0.0 && opts.s_tmin <= opts.s_tmax))
    throw UsageError(who + "'s_tmin' and 's_tmax' must satisfy 0 <= s_tmin <= s_tmax, got " +
                     std::to_string(opts.s_tmin) + " and " + std::to_string(opts.s_tmax));
  if (!(opts.dynamic_threshold >= 0.0 && opts.dynamic_threshold <= 1.0))
    throw UsageError(who + "'dynamic_threshold' must be a percentile in (0, 1] or 0 (off), got " +
                     std::to_string(opts.dynamic_threshold));
}

std::vector<int64_t> resolve_spacing(const SamplerOptions& opts, int64_t T, const std::string& default_spec,
                                     const std::string& sampler) {
  std::string spec = opts.spacing.empty() ? default_spec : opts.spacing;
  const std::string count = std::to_string(opts.steps);
  if (spec == "leading" || spec == "trailing" || spec == "linspace") spec += ":" + count;
  else if (spec == "ddim") spec += count;
  try {
    return space_timesteps(T, spec);
  } catch (const UsageError& e) {
    throw UsageError("sampler '" + sampler + "': option 'spacing' = '" + spec + "': " + e.what());
  }
}

}  // namespace diffuse

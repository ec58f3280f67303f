// Noise levels for the sigma-space samplers (Euler, Euler-ancestral, Heun): descending sigmas
// ending with 0, in the EDM variable x = x0 + sigma eps.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "diffuse/samplers/noise_source.h"
#include "diffuse/samplers/sampler_options.h"

namespace diffuse {

class Denoiser;
struct DenoiserOutput;

enum class SigmaSchedule {
  Karras,       // Karras et al. (2022) eq. 5: (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho
  Exponential,  // uniform in log sigma = uniform in lambda (DPM-Solver's "logSNR" spacing)
  Model         // the training schedule's sigmas at the spaced steps
};
SigmaSchedule parse_sigma_schedule(const std::string& name);  // karras | exponential | model
std::string to_string(SigmaSchedule s);
std::vector<std::string> sigma_schedule_names();

// n sigmas from sigma_max down to sigma_min, then 0 (n + 1 values).
std::vector<double> karras_sigmas(int64_t n, double sigma_min, double sigma_max, double rho);

// n sigmas from sigma_max down to sigma_min evenly in log sigma, then 0.
std::vector<double> exponential_sigmas(int64_t n, double sigma_min, double sigma_max);

// The sigmas of one run (the last 0) for opts.sigmas / rho / steps. A non-empty opts.spacing
// selects training steps and wins over opts.sigmas (the "model" schedule at those steps).
// Validates the options (validate_options; steps <= T when training steps are used) and throws
// UsageError for an unknown schedule name, rho <= 0, or a schedule with an infinite
// sigma_max (zero terminal SNR), which these samplers cannot start from.
std::vector<double> sampling_sigmas(const Denoiser& denoiser, const SamplerOptions& opts, const std::string& sampler);

// One step of a sigma-space sampler, from x at `sigma` (where the denoiser gave `d`) to
// sigma_next > 0; `i` counts steps (multistep methods keep their own history).
using SigmaStep = std::function<torch::Tensor(int64_t i, const torch::Tensor& x, const DenoiserOutput& d, double sigma,
                                              double sigma_next)>;

// The loop every sigma-space sampler shares, in the EDM variable x = x_t / a: start from the VP
// prior, x = x_T sqrt(1 + sigma_max^2); at each sigma evaluate the denoiser and report the step;
// the last step, to sigma = 0, returns D (the x0 prediction). Runs in inference mode.
torch::Tensor run_sigma_sampler(const std::string& sampler, const Denoiser& denoiser, NoiseSource& noise,
                                const SamplerOptions& opts, const torch::Tensor& x_T, const SigmaStep& step);

}  // namespace diffuse

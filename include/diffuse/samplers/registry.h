// Samplers by name. Adding a sampler = its header/source pair (the source listed in
// CMakeLists.txt) + one line in registry.cpp: the config's sample.sampler, the CLI's --sampler and
// docs/config.md take their names from here.
#pragma once

#include <torch/types.h>

#include <string>
#include <vector>

#include "diffuse/samplers/denoiser.h"
#include "diffuse/samplers/noise_source.h"
#include "diffuse/samplers/sampler_options.h"

namespace diffuse {

using SamplerFn = torch::Tensor (*)(const Denoiser&, NoiseSource&, const SamplerOptions&, const torch::Tensor&);

struct SamplerEntry {
  const char* name;
  SamplerFn fn;
  bool stochastic;      // may draw noise.next() during sampling (ddim only with eta > 0)
  bool takes_eta;       // reads SamplerOptions::eta (the others ignore it)
  bool takes_sigmas;    // steps over SamplerOptions::sigmas / rho (else over training timesteps)
  bool takes_churn;     // applies EDM's stochastic churn (SamplerOptions::s_churn etc.)
  const char* summary;  // one line for --help
};

// ddpm, ddim, dpmpp-2m, euler, euler-ancestral, heun.
const std::vector<SamplerEntry>& sampler_registry();
std::vector<std::string> sampler_names();
// Throws UsageError("sampler '<name>' is not one of: ...").
const SamplerEntry& find_sampler(const std::string& name);

// For options a user names explicitly (command-line flags): throws UsageError when sampler `name`
// would ignore them: an eta for a sampler without one, a sigma schedule / rho for ddpm and ddim
// (they step on training timesteps), or churn settings for a sampler without churn. Values from a config's sample.*
// section are shared by every sampler and are not refused.
void check_explicit_options(const std::string& name, bool eta_given, bool sigmas_given, bool churn_given = false);

// Runs sampler `name`; returns x_0 [B, ...]. `x_T` (VP variable), when defined, replaces
// noise.initial(). Bad options throw UsageError naming the option.
torch::Tensor run_sampler(const std::string& name, const Denoiser& denoiser, NoiseSource& noise,
                          const SamplerOptions& opts, const torch::Tensor& x_T = {});

}  // namespace diffuse

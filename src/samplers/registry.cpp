#include "diffuse/samplers/registry.h"

#include "diffuse/error.h"
#include "diffuse/samplers/ddim.h"
#include "diffuse/samplers/ddpm.h"
#include "diffuse/samplers/dpmpp_2m.h"
#include "diffuse/samplers/euler.h"
#include "diffuse/samplers/heun.h"

namespace diffuse {

const std::vector<SamplerEntry>& sampler_registry() {
  static const std::vector<SamplerEntry> entries = {
      // name, function, stochastic, takes_eta, takes_sigmas, takes_churn, summary
      {"ddpm", &sample_ddpm, true, false, false, false, "ancestral DDPM with the model's variance (any respacing)"},
      {"ddim", &sample_ddim, true, true, false, false, "DDIM; eta = 0 deterministic, eta = 1 DDPM-like"},
      {"dpmpp-2m", &sample_dpmpp_2m, false, false, true, false, "DPM-Solver++(2M), second-order multistep ODE solver"},
      {"euler", &sample_euler, true, false, true, true, "Euler on the EDM ODE (karras or model sigmas; churn)"},
      {"euler-ancestral", &sample_euler_ancestral, true, true, true, false, "Euler with fresh noise each step (eta)"},
      {"heun", &sample_heun, true, false, true, true,
       "Heun's second-order EDM ODE solver (2 NFE per step); EDM's stochastic sampler with s_churn"},
  };
  return entries;
}

std::vector<std::string> sampler_names() {
  std::vector<std::string> names;
  for (const auto& e : sampler_registry()) names.emplace_back(e.name);
  return names;
}

const SamplerEntry& find_sampler(const std::string& name) {
  for (const auto& e : sampler_registry())
    if (name == e.name) return e;
  throw_not_one_of("sampler", name, sampler_names());
}

void check_explicit_options(const std::string& name, bool eta_given, bool sigmas_given, bool churn_given) {
  const auto& e = find_sampler(name);
  auto takers = [](auto pred) {
    std::string out;
    for (const auto& s : sampler_registry())
      if (pred(s)) out += (out.empty() ? "" : ", ") + std::string(s.name);
    return out;
  };
  if (eta_given && !e.takes_eta)
    throw UsageError("sampler '" + name + "' takes no eta (only " +
                     takers([](const SamplerEntry& s) { return s.takes_eta; }) + " do)");
  if (sigmas_given && !e.takes_sigmas)
    throw UsageError("sampler '" + name + "' steps on training timesteps and takes no sigma schedule or rho (" +
                     takers([](const SamplerEntry& s) { return s.takes_sigmas; }) +
                     " do); use spacing to choose its steps");
  if (churn_given && !e.takes_churn)
    throw UsageError("sampler '" + name + "' takes no churn settings (only " +
                     takers([](const SamplerEntry& s) { return s.takes_churn; }) + " do)");
}

torch::Tensor run_sampler(const std::string& name, const Denoiser& denoiser, NoiseSource& noise,
                          const SamplerOptions& opts, const torch::Tensor& x_T) {
  return find_sampler(name).fn(denoiser, noise, opts, x_T);
}

}  // namespace diffuse

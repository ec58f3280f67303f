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
      {"ddpm", &sample_ddpm, true, "ancestral DDPM with the model's variance (any respacing)"},
      {"ddim", &sample_ddim, true, "DDIM; eta = 0 deterministic, eta = 1 DDPM-like"},
      {"dpmpp-2m", &sample_dpmpp_2m, false, "DPM-Solver++(2M), second-order multistep ODE solver"},
      {"euler", &sample_euler, false, "Euler on the EDM ODE (karras or model sigmas)"},
      {"euler-ancestral", &sample_euler_ancestral, true, "Euler with fresh noise each step (eta)"},
      {"heun", &sample_heun, false, "Heun's second-order EDM ODE solver (2 NFE per step)"},
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

torch::Tensor run_sampler(const std::string& name, const Denoiser& denoiser, NoiseSource& noise,
                          const SamplerOptions& opts, const torch::Tensor& x_T) {
  return find_sampler(name).fn(denoiser, noise, opts, x_T);
}

}  // namespace diffuse

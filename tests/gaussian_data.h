// Gaussian data x0 ~ N(mu, diag(s^2)) on a VP schedule, for which the exact network, denoiser
// and probability-flow solution are known (the closed forms are in test_samplers.cpp's header).
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <utility>

#include "diffuse/diffusion.h"
#include "diffuse/model_fn.h"
#include "diffuse/samplers/denoiser.h"
#include "diffuse/schedule.h"

namespace diffuse::test {

inline NoiseSchedule linear_schedule(int64_t T = 1000) {
  ScheduleSpec spec;
  spec.timesteps = T;
  return NoiseSchedule::from_spec(spec);
}

struct Gaussian {
  torch::Tensor mu, s;  // [d], float64
  double sigma_data = 0.5;  // Prediction::Edm's
  NoiseSchedule schedule = linear_schedule();

  int64_t dim() const { return mu.size(0); }

  // alpha_bar at a training time t, fractional t by linear interpolation of log sigma
  // (the same definition as k-diffusion's DiscreteSchedule, written out independently).
  double abar_at(double t) const {
    const auto& ab = schedule.alpha_bar();
    const double fl = std::floor(t);
    const auto lo = static_cast<size_t>(fl);
    if (t == fl) return ab[lo];
    auto log_sigma = [&](size_t i) { return 0.5 * std::log((1.0 - ab[i]) / ab[i]); };
    const double w = t - fl;
    const double ls = (1.0 - w) * log_sigma(lo) + w * log_sigma(lo + 1);
    return 1.0 / (1.0 + std::exp(2.0 * ls));
  }

  // Per-sample (a, sig) as [B, 1] float64 tensors.
  std::pair<torch::Tensor, torch::Tensor> levels(const torch::Tensor& t) const {
    auto tc = t.to(torch::kCPU, torch::kFloat64).contiguous();
    const auto* tp = tc.data_ptr<double>();
    const int64_t B = tc.size(0);
    auto a = torch::empty({B, 1}, torch::kFloat64), sig = torch::empty({B, 1}, torch::kFloat64);
    auto* ap = a.data_ptr<double>();
    auto* sp = sig.data_ptr<double>();
    double last_t = -1.0, ab = 0.0;
    for (int64_t i = 0; i < B; ++i) {
      if (tp[i] != last_t) ab = abar_at(last_t = tp[i]);  // samplers pass one t per batch
      ap[i] = std::sqrt(ab);
      sp[i] = std::sqrt(1.0 - ab);
    }
    return {a, sig};
  }

  // The exact network for a prediction type; `var_channel(t)` (if given) fills the variance
  // channels of a learned-variance output.
  ModelFn model(Prediction p, std::function<double(double)> var_channel = {}) const {
    return [this, p, var_channel](const torch::Tensor& x, const torch::Tensor& t) {
      auto [a, sig] = levels(t);
      auto xd = x.to(torch::kFloat64);
      // EDM's network sees c_in x with x = x_t / a, c_in = 1 / sqrt(sigma^2 + sigma_data^2), sigma = sig / a.
      const auto sigma = sig / a;
      const auto root = torch::sqrt(sigma * sigma + sigma_data * sigma_data);
      if (p == Prediction::Edm) xd = xd * root * a;
      auto eps = sig * (xd - a * mu) / (a * a * s * s + sig * sig);
      auto x0 = (xd - sig * eps) / a;
      torch::Tensor out;
      switch (p) {
        case Prediction::Epsilon: out = eps; break;
        case Prediction::X0: out = x0; break;
        case Prediction::V: out = a * eps - sig * x0; break;
        case Prediction::Score: out = -eps / sig; break;
        case Prediction::Edm: {
          // F = (D - c_skip x) / c_out with D = x0 (Karras et al. 2022, eq. 7 and Table 1).
          const auto c_skip = sigma_data * sigma_data / (root * root);
          const auto c_out = sigma * sigma_data / root;
          out = (x0 - c_skip * (xd / a)) / c_out;
          break;
        }
      }
      if (var_channel) {
        auto tc = t.to(torch::kCPU, torch::kFloat64);
        auto v = torch::empty({x.size(0), 1}, torch::kFloat64);
        for (int64_t i = 0; i < x.size(0); ++i) v[i][0] = var_channel(tc[i].item<double>());
        out = torch::cat({out, v.expand_as(out)}, 1);
      }
      return out.to(x.scalar_type());
    };
  }

  Denoiser denoiser(Prediction p = Prediction::Epsilon, VarianceType v = VarianceType::FixedSmall,
                    std::function<double(double)> var_channel = {}) const {
    return Denoiser(model(p, std::move(var_channel)), GaussianDiffusion(schedule, p, v, sigma_data));
  }

  // The exact ODE solution from x_T read at training level t.
  torch::Tensor exact_flow(const torch::Tensor& x_T, int64_t t) const {
    const double ab = schedule.alpha_bar()[static_cast<size_t>(t)];
    const double sigma2 = (1.0 - ab) / ab;
    return mu + (x_T / std::sqrt(ab) - mu) * s / torch::sqrt(s * s + sigma2);
  }
};

inline Gaussian make_gaussian() {
  Gaussian g;
  g.mu = torch::tensor({0.5, -0.3, 0.1}, torch::kFloat64);
  g.s = torch::tensor({0.4, 0.7, 0.2}, torch::kFloat64);
  return g;
}

}  // namespace diffuse::test

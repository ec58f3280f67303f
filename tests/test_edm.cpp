// EDM's formulation (Karras, Aittala, Aila, Laine 2022) against closed forms: the scalings of its
// Table 1, the ideal denoiser of Gaussian data, the loss at the optimum, Heun's order on the exact
// ODE, stochastic churn keeping the data distribution, and the log-normal noise levels.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "diffuse/error.h"
#include "diffuse/losses.h"
#include "diffuse/preconditioning.h"
#include "diffuse/samplers/heun.h"
#include "diffuse/samplers/registry.h"
#include "diffuse/timestep_sampler.h"
#include "gaussian_data.h"

using namespace diffuse;

namespace {

NoiseLevel level_of(double sigma) {
  const double a = 1.0 / std::sqrt(1.0 + sigma * sigma);
  return {torch::scalar_tensor(a, torch::kFloat64), torch::scalar_tensor(sigma * a, torch::kFloat64)};
}

double item(const torch::Tensor& t) { return t.item<double>(); }

ScheduleSpec edm_spec(int64_t T = 1000) {
  ScheduleSpec s;
  s.kind = ScheduleKind::Edm;
  s.timesteps = T;
  return s;
}

test::Gaussian edm_gaussian() {
  auto g = test::make_gaussian();
  g.schedule = NoiseSchedule::from_spec(edm_spec());
  g.sigma_data = 0.6;
  return g;
}

// The exact probability-flow solution for Gaussian data: x(sigma) - mu scales with sqrt(s^2 + sigma^2).
torch::Tensor exact_flow(const test::Gaussian& g, const torch::Tensor& x_from, double from, double to) {
  return g.mu + (x_from - g.mu) * torch::sqrt((g.s * g.s + to * to) / (g.s * g.s + from * from));
}

}  // namespace

// Table 1's c_skip, c_out, c_in and the loss weight, written in x = x0 + sigma eps, against the
// wrapper's VP-coordinate coefficients (x_t = a x).
TEST(Edm, ScalingsAreKarrasTable1) {
  for (double sd : {0.5, 1.3}) {
    for (double sigma : {0.002, 0.1, 1.0, 7.0, 80.0}) {
      const auto n = level_of(sigma);
      const double a = item(n.a);
      const auto pc = preconditioning(Prediction::Edm, n, sd);
      const double r = std::sqrt(sigma * sigma + sd * sd);
      const double c_skip = sd * sd / (r * r), c_out = sigma * sd / r, c_in = 1.0 / r;
      EXPECT_NEAR(item(pc.in.tensor(n.a)) * a, c_in, 1e-12 * c_in);
      EXPECT_NEAR(item(input_scale(Prediction::Edm, n, sd).tensor(n.a)) * a, c_in, 1e-12 * c_in);
      EXPECT_NEAR(item(pc.skip.tensor(n.a)) * a, c_skip, 1e-12);
      EXPECT_NEAR(item(pc.c_out().tensor(n.a)), c_out, 1e-12 * c_out);
      // eps = (x - D) / sigma and the target F* = (x0 - c_skip x) / c_out, on random numbers.
      const double x0 = 0.3, eps = -1.7, f = 0.45;
      const double x = x0 + sigma * eps;
      const double d = c_skip * x + c_out * f;
      EXPECT_NEAR(item(pc.x0(torch::scalar_tensor(a * x, torch::kFloat64), torch::scalar_tensor(f, torch::kFloat64))),
                  d, 1e-10);
      EXPECT_NEAR(item(pc.eps(torch::scalar_tensor(a * x, torch::kFloat64), torch::scalar_tensor(f, torch::kFloat64))),
                  (x - d) / sigma, 1e-9 * (1 + std::abs(x - d) / sigma));
      const double want = (x0 - c_skip * x) / c_out;
      EXPECT_NEAR(
          item(pc.target(torch::scalar_tensor(x0, torch::kFloat64), torch::scalar_tensor(eps, torch::kFloat64))), want,
          1e-9 * (1 + std::abs(want)));
    }
  }
}

// v-prediction is EDM's preconditioning with sigma_data = 1 and F = -v (Salimans & Ho's v is
// EDM's F up to sign): same x0 and eps from the same network.
TEST(Edm, VPredictionIsEdmWithUnitSigmaData) {
  torch::manual_seed(5);
  const auto a = torch::rand({8, 1}, torch::kFloat64) * 0.98 + 0.01;
  const NoiseLevel n{a, torch::sqrt(1 - a * a)};
  const auto x_t = torch::randn({8, 3}, torch::kFloat64), v = torch::randn({8, 3}, torch::kFloat64);
  const auto by_v = convert(Prediction::V, v, x_t, n);
  const auto by_edm = convert(Prediction::Edm, -v, x_t, n, 1.0);
  EXPECT_TRUE(torch::allclose(by_v.x0, by_edm.x0, 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(by_v.eps, by_edm.eps, 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(by_edm.v, v, 1e-12, 1e-12));
}

// The edm schedule's noise levels are log-uniform over [sigma_min, sigma_max], and the sigma
// samplers' fractional steps (log sigma interpolated) land exactly on the continuous sigma.
TEST(Edm, ScheduleIsALogUniformSigmaGrid) {
  const auto spec = edm_spec(100);
  const auto sched = NoiseSchedule::from_spec(spec);
  for (int64_t i = 0; i < 100; ++i) {
    const double ab = sched.alpha_bar()[static_cast<size_t>(i)];
    const double want = std::exp(std::log(0.002) + static_cast<double>(i) * std::log(80.0 / 0.002) / 99.0);
    EXPECT_NEAR(std::sqrt((1 - ab) / ab), want, 1e-10 * want) << i;
  }
  Denoiser den([](const torch::Tensor& x, const torch::Tensor&) { return x; }, GaussianDiffusion(sched));
  for (double sigma : {0.0021, 0.37, 5.0, 79.0})
    EXPECT_NEAR(den.t_to_sigma(den.sigma_to_t(sigma)), sigma, 1e-12 * sigma);
  auto bad = spec;
  bad.sigma_min = 90.0;
  EXPECT_THROW(make_betas(bad), UsageError);
  bad = spec;
  bad.timesteps = 1;
  EXPECT_THROW(make_betas(bad), UsageError);
}

// For Gaussian data the ideal denoiser is D(x; sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu). A
// network that outputs the ideal F (test::Gaussian undoes c_in itself, then inverts eq. 7 in x)
// gives exactly that D through the Denoiser, at grid and between-grid sigmas.
TEST(Edm, IdealNetworkGivesTheIdealDenoiser) {
  const auto g = edm_gaussian();
  const auto den = g.denoiser(Prediction::Edm);
  ReverseOptions no_clip;
  no_clip.clip_x0 = false;
  torch::manual_seed(2);
  for (double sigma : {0.002, 0.05, 0.6, 3.3, 80.0}) {
    const auto x = g.mu + torch::randn({16, 3}, torch::kFloat64) * std::sqrt(0.25 + sigma * sigma);
    const auto d = den.at_sigma(x, sigma, no_clip);
    const auto ideal = g.mu + g.s * g.s / (g.s * g.s + sigma * sigma) * (x - g.mu);
    EXPECT_LT((d.pred.x0 - ideal).abs().max().item<double>(), 1e-9) << "sigma " << sigma;
    EXPECT_LT((d.pred.eps - (x - ideal) / sigma).abs().max().item<double>(), 1e-9 * std::max(1.0, 1.0 / sigma));
  }
}

// EDM's loss at the optimum. For x0 ~ N(mu, s^2) per dimension, E[(D* - x0)^2 | sigma] is the
// posterior variance s^2 sigma^2 / (s^2 + sigma^2), and EDM's weight lambda = 1 / c_out^2 makes
//   L(sigma) = (sigma^2 + sd^2) s^2 / (sd^2 (s^2 + sigma^2))        (= 1 when sd = s),
// averaged over ln sigma ~ N(P_mean, P_std^2) by Simpson's rule. Monte Carlo through the real
// log-normal sampler and mse_loss, with F = the ideal F; tolerance 4 standard errors.
TEST(Edm, LossAtTheOptimumEqualsItsClosedForm) {
  const double mu = 0.2, s = 0.7, sd = 0.5, pm = -1.2, ps = 1.2;
  const auto spec = edm_spec();
  LognormalSigmaSampler sampler(spec.timesteps, log_sigma_grid(spec), pm, ps);
  const int64_t N = 200000;
  auto gen = torch::make_generator<torch::CPUGeneratorImpl>(11);
  const auto draw = sampler.sample(N, torch::kCPU, gen);
  const auto sigma = draw.sigma.reshape({N, 1});
  const auto x0 = mu + s * torch::randn({N, 1}, gen, torch::kFloat64);
  const auto eps = torch::randn({N, 1}, gen, torch::kFloat64);
  const auto x = x0 + sigma * eps;
  const auto a = (1 + sigma * sigma).rsqrt();
  const NoiseLevel n{a, sigma * a};
  // F* from D* by eq. 7: F = (D - c_skip x) / c_out.
  const auto r = torch::sqrt(sigma * sigma + sd * sd);
  const auto ideal_d = mu + s * s / (s * s + sigma * sigma) * (x - mu);
  const auto f = (ideal_d - sd * sd / (r * r) * x) / (sigma * sd / r);
  GaussianDiffusion gd(NoiseSchedule::from_spec(spec), Prediction::Edm, VarianceType::FixedSmall, sd);
  const auto l = mse_loss(gd, LossConfig{}, f, x0, eps, n).loss.to(torch::kFloat64);
  const double mc = l.mean().item<double>(), se = l.std().item<double>() / std::sqrt(static_cast<double>(N));
  // Simpson over ln sigma in [pm - 10 ps, pm + 10 ps].
  const int M = 4000;
  const double lo = pm - 10 * ps, h = 20 * ps / M;
  double integral = 0;
  for (int i = 0; i <= M; ++i) {
    const double ls = lo + i * h, sg = std::exp(ls);
    const double pdf = std::exp(-0.5 * std::pow((ls - pm) / ps, 2)) / (ps * std::sqrt(2 * M_PI));
    const double L = (sg * sg + sd * sd) * s * s / (sd * sd * (s * s + sg * sg));
    integral += (i == 0 || i == M ? 1 : (i % 2 ? 4 : 2)) * pdf * L;
  }
  integral *= h / 3;
  EXPECT_NEAR(mc, integral, 4 * se) << "closed form " << integral << ", Monte Carlo " << mc << " +- " << se;
  // And the design point: sigma_data equal to the data's std gives a unit loss at every sigma.
  GaussianDiffusion unit(NoiseSchedule::from_spec(spec), Prediction::Edm, VarianceType::FixedSmall, s);
  const auto ru = torch::sqrt(sigma * sigma + s * s);
  const auto fu = (ideal_d - s * s / (ru * ru) * x) / (sigma * s / ru);
  const auto lu = mse_loss(unit, LossConfig{}, fu, x0, eps, n).loss.to(torch::kFloat64);
  EXPECT_NEAR(lu.mean().item<double>(), 1.0, 4 * lu.std().item<double>() / std::sqrt(static_cast<double>(N)));
}

// EDM's deterministic Heun (Algorithm 1) on the ideal denoiser: the error at sigma_min against
// the exact ODE solution falls as 1/N^2 (second order), so doubling the steps divides it by ~4.
TEST(Edm, HeunIsSecondOrderOnTheExactOde) {
  const auto g = edm_gaussian();
  const auto den = g.denoiser(Prediction::Edm);
  std::vector<double> errs;
  for (int64_t steps : {16, 32, 64}) {
    SamplerOptions o;
    o.steps = steps;
    o.clip_x0 = false;
    torch::Tensor at_min;
    double sigma_last = 0;
    o.on_step = [&](const StepInfo& s) {
      sigma_last = s.sigma;
      at_min = s.x_t * std::sqrt(1 + s.sigma * s.sigma);  // the EDM variable at the last nonzero sigma
    };
    auto noise = NoiseSource::range(7, 0, 512, {3}, torch::kCPU, torch::kFloat64);
    const auto x_T = noise.initial();
    sample_heun(den, noise, o);
    const double smax = den.sigma_max();
    const auto want = exact_flow(g, x_T * std::sqrt(1 + smax * smax), smax, sigma_last);
    errs.push_back((at_min - want).abs().max().item<double>());
    EXPECT_NEAR(sigma_last, den.sigma_min(), 1e-12);
  }
  for (size_t i = 0; i + 1 < errs.size(); ++i) {
    const double ratio = errs[i] / errs[i + 1];
    EXPECT_GT(ratio, 3.0) << "errors " << errs[i] << " -> " << errs[i + 1];
    EXPECT_LT(ratio, 5.5) << "errors " << errs[i] << " -> " << errs[i + 1];
  }
  // Rounding is far below the errors compared (float64), so the ratios measure the method.
  EXPECT_GT(errs.back(), 1e-9);
}

// Stochastic churn (Algorithm 2) adds noise and denoises it again; with the ideal denoiser and
// S_noise = 1 the samples still follow the data: per-dimension mean and std within 5 standard
// errors of mu and s over 20,000 samples (at 64 steps, gamma = 0.16; the step's own error is
// then below the tolerance). It costs no extra evaluations and changes the samples.
TEST(Edm, ChurnKeepsTheDataDistribution) {
  const auto g = edm_gaussian();
  const auto den = g.denoiser(Prediction::Edm);
  SamplerOptions o;
  o.steps = 64;
  o.clip_x0 = false;
  o.s_churn = 10;
  o.s_tmin = 0.05;
  o.s_tmax = 50;
  const int64_t n = 20000;
  auto noise = NoiseSource::range(3, 0, n, {3}, torch::kCPU, torch::kFloat64);
  den.reset_nfe();
  const auto x = run_sampler("heun", den, noise, o);
  EXPECT_EQ(den.nfe(), 2 * 64 - 1);
  const auto mean = x.mean(0), sd = x.std(0);
  for (int64_t k = 0; k < 3; ++k) {
    const double s = g.s[k].item<double>();
    EXPECT_NEAR(mean[k].item<double>(), g.mu[k].item<double>(), 5 * s / std::sqrt(double(n))) << k;
    EXPECT_NEAR(sd[k].item<double>(), s, 5 * s / std::sqrt(2.0 * double(n))) << k;
  }
  auto again = NoiseSource::range(3, 0, n, {3}, torch::kCPU, torch::kFloat64);
  o.s_churn = 0;
  const auto plain = run_sampler("heun", den, again, o);
  EXPECT_GT((plain - x).abs().mean().item<double>(), 1e-3);
  // Churn settings on a sampler without churn are refused when given explicitly.
  EXPECT_THROW(check_explicit_options("dpmpp-2m", false, false, true), UsageError);
  EXPECT_NO_THROW(check_explicit_options("euler", false, false, true));
  o.s_churn = -1;
  auto n3 = NoiseSource::range(3, 0, 4, {3}, torch::kCPU, torch::kFloat64);
  EXPECT_THROW(run_sampler("heun", den, n3, o), UsageError);
}

// The log-normal sampler draws ln sigma ~ N(P_mean, P_std^2) (moments within 5 SE over 100,000
// draws), reports each sigma's fractional step on the grid and the nearest step, and its law of
// t sums to one and matches the drawn steps' frequencies.
TEST(Edm, LognormalSamplerDrawsItsLaw) {
  const auto spec = edm_spec(50);
  const auto grid = log_sigma_grid(spec);
  LognormalSigmaSampler sampler(50, grid, -1.2, 1.2);
  auto gen = torch::make_generator<torch::CPUGeneratorImpl>(3);
  const int64_t N = 100000;
  const auto d = sampler.sample(N, torch::kCPU, gen);
  const auto ls = d.sigma.log();
  EXPECT_NEAR(ls.mean().item<double>(), -1.2, 5 * 1.2 / std::sqrt(double(N)));
  EXPECT_NEAR(ls.std().item<double>(), 1.2, 5 * 1.2 / std::sqrt(2.0 * double(N)));
  EXPECT_TRUE(torch::allclose(d.step.to(torch::kFloat64), (ls - grid.log_min) / grid.log_step, 1e-5, 1e-4));
  EXPECT_TRUE(torch::all(d.weights == 1).item<bool>());
  const auto p = sampler.probabilities();
  EXPECT_NEAR(p.sum().item<double>(), 1.0, 1e-12);
  const auto counts = torch::bincount(d.t, {}, 50).to(torch::kFloat64) / double(N);
  EXPECT_LT((counts - p).abs().max().item<double>(), 5 * std::sqrt(0.25 / double(N)));
  EXPECT_THROW(LognormalSigmaSampler(50, grid, 0.0, 0.0), UsageError);
}

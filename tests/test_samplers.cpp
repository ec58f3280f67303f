// Samplers against closed-form truth: Gaussian data x0 ~ N(mu, diag(s^2)), for which the exact
// denoiser is known. With a = sqrt(abar), sig = sqrt(1 - abar):
//   x_t ~ N(a mu, a^2 s^2 + sig^2),   E[eps | x_t] = sig (x_t - a mu) / (a^2 s^2 + sig^2),
// and the probability-flow ODE is linear: in x = x_t / a (EDM variable, sigma = sig / a),
//   x(sigma) - mu = (x(sigma') - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma'^2),
// so a deterministic sampler's exact answer from x_T at level t is
//   x0 = mu + (x_T / a_t - mu) s / sqrt(s^2 + sigma_t^2).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <map>

#include "diffuse/error.h"
#include "diffuse/samplers/ddim.h"
#include "diffuse/samplers/ddpm.h"
#include "diffuse/samplers/registry.h"
#include "diffuse/schedule.h"
#include "gaussian_data.h"

using namespace diffuse;
using test::Gaussian;
using test::linear_schedule;
using test::make_gaussian;

namespace {

NoiseSource noise_for(const Gaussian& g, int64_t n, uint64_t seed = 1234, int64_t first = 0) {
  return NoiseSource::range(seed, first, n, {g.dim()}, torch::kCPU, torch::kFloat64);
}

SamplerOptions unclipped(int64_t steps) {
  SamplerOptions o;
  o.steps = steps;
  o.clip_x0 = false;
  return o;
}

double mean_abs(const torch::Tensor& a) { return a.abs().mean().item<double>(); }

}  // namespace

// Every sampler's samples have the data's mean and variance. n = 4000 draws: the sample mean
// has standard error s/sqrt(n) and the sample variance s^2 sqrt(2/(n-1)) (Gaussian data); each
// is held to 4 standard errors plus an allowance for the sampler's own bias at these step
// counts (0.02 s for the mean, 4% for the variance; measured with 40000 draws the biases are
// within 3%: ddpm fixed_small runs ~2-3% narrow and fixed_large ~2-6% wide even at T steps,
// since neither is the exact reverse kernel; euler-ancestral converges at first order, ~3% at
// 800 steps). The noise is seeded, so the test is reproducible. Exactness of the deterministic
// solvers is tested against the closed-form flow below.
TEST(SamplersGaussian, EverySamplerMatchesDataMoments) {
  const auto g = make_gaussian();
  const int64_t n = 4000;
  struct Case {
    std::string sampler;
    SamplerOptions opts;
    VarianceType variance;
  };
  auto with = [](int64_t steps, double eta) {
    auto o = unclipped(steps);
    o.eta = eta;
    return o;
  };
  const std::vector<Case> cases = {
      {"ddpm", unclipped(1000), VarianceType::FixedSmall},
      {"ddpm", unclipped(1000), VarianceType::FixedLarge},
      {"ddpm", unclipped(250), VarianceType::FixedLarge},  // respaced
      {"ddim", unclipped(500), VarianceType::FixedSmall},
      {"ddim", with(500, 1.0), VarianceType::FixedSmall},
      {"dpmpp-2m", unclipped(50), VarianceType::FixedSmall},
      {"euler", unclipped(200), VarianceType::FixedSmall},
      {"euler-ancestral", unclipped(800), VarianceType::FixedSmall},
      {"heun", unclipped(50), VarianceType::FixedSmall},
  };
  const auto se_mean = g.s / std::sqrt(static_cast<double>(n));
  const double se_var_rel = std::sqrt(2.0 / (n - 1));
  for (const auto& c : cases) {
    auto den = g.denoiser(Prediction::Epsilon, c.variance);
    auto noise = noise_for(g, n);
    const auto x = run_sampler(c.sampler, den, noise, c.opts);
    ASSERT_EQ(x.sizes(), (std::vector<int64_t>{n, g.dim()}));
    const auto mean = x.mean(0), var = x.var(0);
    for (int64_t k = 0; k < g.dim(); ++k) {
      const double mu = g.mu[k].item<double>(), s = g.s[k].item<double>();
      EXPECT_NEAR(mean[k].item<double>(), mu, 4.0 * se_mean[k].item<double>() + 0.02 * s)
          << c.sampler << " steps=" << c.opts.steps << " " << to_string(c.variance) << " dim " << k;
      EXPECT_NEAR(var[k].item<double>() / (s * s), 1.0, 4.0 * se_var_rel + 0.04)
          << c.sampler << " steps=" << c.opts.steps << " " << to_string(c.variance) << " dim " << k;
    }
  }
}

// DDIM with eta = 1 is DDPM with the posterior variance (Song et al. sec. 4.1): two independent
// implementations (GaussianDiffusion::p_mean_variance vs eq. 12), same spacing and noise draws.
TEST(SamplersGaussian, DdimEtaOneIsDdpmFixedSmall) {
  const auto g = make_gaussian();
  auto den = g.denoiser(Prediction::Epsilon, VarianceType::FixedSmall);
  for (const std::string spacing : {"50", "trailing:20"}) {
    auto opts = unclipped(50);
    opts.spacing = spacing;
    opts.eta = 1.0;
    auto a = noise_for(g, 300), b = noise_for(g, 300);
    const auto ddim = sample_ddim(den, a, opts);
    const auto ddpm = sample_ddpm(den, b, opts);
    EXPECT_EQ(a.taken(), b.taken());
    EXPECT_LT((ddim - ddpm).abs().max().item<double>(), 1e-10) << spacing;
  }
}

// The four parameterisations of the same exact denoiser give the same samples (same noise) for
// every sampler; DDIM is held to the brief's 1e-4, all of them in fact agree to float64 rounding.
TEST(SamplersGaussian, PredictionTypesAgreeWithEpsilon) {
  const auto g = make_gaussian();
  for (const auto& name : sampler_names()) {
    auto opts = unclipped(name == "ddpm" ? 50 : 20);
    if (name == "ddim") opts.eta = 0.5;  // exercise the stochastic path too
    auto eps_den = g.denoiser(Prediction::Epsilon);
    auto noise = noise_for(g, 256);
    const auto ref = run_sampler(name, eps_den, noise, opts);
    for (auto p : {Prediction::X0, Prediction::V, Prediction::Score, Prediction::Edm}) {
      auto den = g.denoiser(p);
      auto noise_p = noise_for(g, 256);
      const auto x = run_sampler(name, den, noise_p, opts);
      const double err = (x - ref).abs().max().item<double>();
      EXPECT_LT(err, name == "ddim" ? 1e-4 : 1e-8) << name << " " << to_string(p);
    }
  }
  // With clipping on (x0 clamped inside the update), the agreement still holds.
  auto opts = unclipped(20);
  opts.clip_x0 = true;
  auto n0 = noise_for(g, 256), n1 = noise_for(g, 256);
  auto e = g.denoiser(Prediction::Epsilon), v = g.denoiser(Prediction::V);
  EXPECT_LT((sample_ddim(e, n0, opts) - sample_ddim(v, n1, opts)).abs().max().item<double>(), 1e-4);
}

// eta = 0: no noise is drawn after x_T and two runs agree bit for bit; inverting a sample and
// sampling again returns it; the inversion itself is the exact flow map run backwards.
TEST(SamplersGaussian, DdimEtaZeroIsDeterministicAndInverts) {
  const auto g = make_gaussian();
  auto den = g.denoiser();
  auto opts = unclipped(100);
  auto noise = noise_for(g, 500);
  const auto a = sample_ddim(den, noise, opts);
  EXPECT_EQ(noise.taken(), 0u);
  auto noise2 = noise_for(g, 500);
  EXPECT_TRUE(torch::equal(a, sample_ddim(den, noise2, opts)));
  EXPECT_TRUE(torch::equal(a, sample_ddim(den, noise2, opts, noise_for(g, 500).initial())));

  // Round trip from data points (drawn from the data distribution).
  opts = unclipped(200);
  const auto x0 = g.mu + g.s * noise_for(g, 500, /*seed=*/777).initial();
  const auto x_T = ddim_invert(den, x0, opts);
  // Closed form: the flow map from the data up to the top kept level (995 for "ddim200").
  const auto kept = space_timesteps(1000, "ddim200");
  const double ab_T = g.schedule.alpha_bar()[static_cast<size_t>(kept.back())];
  const double sigma_T = std::sqrt((1.0 - ab_T) / ab_T);
  const auto exact_T = std::sqrt(ab_T) * (g.mu + (x0 - g.mu) * torch::sqrt(g.s * g.s + sigma_T * sigma_T) / g.s);
  EXPECT_LT(mean_abs(x_T - exact_T), 0.02);
  EXPECT_NEAR(x_T.var(0).mean().item<double>(), 1.0, 0.15);  // the prior N(0, I), roughly
  // Measured: mean error 0.011, max 0.055 at 200 steps; 0.0024 at 1000 (first order).
  const auto back = sample_ddim(den, noise, opts, x_T);
  EXPECT_LT(mean_abs(back - x0), 0.015);
  EXPECT_LT((back - x0).abs().max().item<double>(), 0.08);
  auto fine = unclipped(1000);
  const auto back_fine = sample_ddim(den, noise, fine, ddim_invert(den, x0, fine));
  EXPECT_LT(mean_abs(back_fine - x0), 0.3 * mean_abs(back - x0));
}

// Deterministic samplers converge to the exact flow map from the level they start at, at their
// order: doubling the steps halves a first-order error (DDIM, Euler) and quarters a second-order
// one (DPM-Solver++(2M), Heun). Measured ratios 40 -> 80 steps: DDIM 1.92, Euler 1.98, DPM++
// 4.8 (karras) / 4.9 (exponential), Heun 4.7 (karras) / 4.7 (model).
TEST(SamplersGaussian, DeterministicSamplersConvergeToExactFlow) {
  const auto g = make_gaussian();
  auto den = g.denoiser();
  const int64_t n = 500;
  const auto x_T = noise_for(g, n).initial();
  struct Case {
    std::string sampler, sigmas;
    int order;
    double tol80;  // error bound at 80 steps (measured value x 1.5)
  };
  for (const auto& c : std::vector<Case>{{"ddim", "", 1, 0.021},
                                         {"euler", "karras", 1, 0.020},
                                         {"dpmpp-2m", "karras", 2, 1.3e-3},
                                         {"dpmpp-2m", "exponential", 2, 4e-4},
                                         {"heun", "karras", 2, 1.3e-3},
                                         {"heun", "model", 2, 8e-4}}) {
    double err[2];
    for (int k = 0; k < 2; ++k) {
      auto opts = unclipped(k == 0 ? 40 : 80);
      if (!c.sigmas.empty()) opts.sigmas = c.sigmas;
      auto noise = noise_for(g, n);
      const auto x = run_sampler(c.sampler, den, noise, opts, x_T);
      // Start levels: "ddim<n>" tops at 1000 - 1000/n; sigma schedules at sigma_max = sigma_999.
      const int64_t top = c.sampler == "ddim" ? 1000 - 1000 / opts.steps : 999;
      err[k] = mean_abs(x - g.exact_flow(x_T, top));
    }
    const double ratio = err[0] / err[1];
    EXPECT_LT(err[1], c.tol80) << c.sampler << " " << c.sigmas;
    if (c.order == 1) {
      EXPECT_GT(ratio, 1.7) << c.sampler << " " << c.sigmas;
      EXPECT_LT(ratio, 2.3) << c.sampler << " " << c.sigmas;
    } else {
      EXPECT_GT(ratio, 3.4) << c.sampler << " " << c.sigmas;
    }
  }
  // DDIM over all T steps: 80 steps' error / 12.5 by first order, measured 1.2e-3.
  auto noise = noise_for(g, n);
  EXPECT_LT(mean_abs(sample_ddim(den, noise, unclipped(1000)) - g.exact_flow(x_T, 999)), 2e-3);
}

// DPM-Solver++(2M) at 20 steps is closer to the 1000-step DDIM (ODE) solution from the same
// x_T than DDIM at 20 steps, on the same timesteps ("trailing:20", from T-1); with its default
// karras sigmas too. (Measured against the exact flow: 0.024 and 0.018 vs DDIM's 0.054.)
TEST(SamplersGaussian, DpmSolverBeatsDdimAtTwentySteps) {
  const auto g = make_gaussian();
  auto den = g.denoiser();
  const int64_t n = 500;
  auto noise = noise_for(g, n);
  const auto ref = sample_ddim(den, noise, unclipped(1000));
  auto opts = unclipped(20);
  opts.spacing = "trailing";
  const double err_dpm = mean_abs(run_sampler("dpmpp-2m", den, noise, opts) - ref);
  const double err_ddim = mean_abs(run_sampler("ddim", den, noise, opts) - ref);
  EXPECT_LT(err_dpm, 0.6 * err_ddim) << "dpm " << err_dpm << " ddim " << err_ddim;
  den.reset_nfe();
  EXPECT_LT(mean_abs(run_sampler("dpmpp-2m", den, noise, unclipped(20)) - ref), 0.6 * err_ddim);
  EXPECT_EQ(den.nfe(), 20);
}

// Sample i depends only on (seed, i): 8 samples in one batch equal batches of 3 + 5 with the
// same global indices, exactly, for every sampler (stochastic ones draw per-step noise).
TEST(SamplersGaussian, BatchSplitInvariance) {
  const auto g = make_gaussian();
  for (const auto& name : sampler_names()) {
    auto opts = unclipped(20);
    if (name == "ddim") opts.eta = 1.0;
    auto den = g.denoiser();
    auto all_noise = noise_for(g, 8, 99, 0);
    const auto all = run_sampler(name, den, all_noise, opts);
    auto n1 = noise_for(g, 3, 99, 0);
    auto n2 = noise_for(g, 5, 99, 3);
    const auto split = torch::cat({run_sampler(name, den, n1, opts), run_sampler(name, den, n2, opts)});
    EXPECT_TRUE(torch::equal(all, split)) << name << ": max diff " << (all - split).abs().max().item<double>();
    // Another seed gives other samples.
    auto other = noise_for(g, 8, 100, 0);
    EXPECT_GT((run_sampler(name, den, other, opts) - all).abs().min().item<double>(), 0.0) << name;
  }
}

// Learned variances: a model whose variance channels encode the true posterior variance
// (learned: its log; learned_range: v = -1) samples exactly as fixed_small; learned_range with
// v = +1 (log beta) as fixed_large. On a respaced schedule (100 of 1000 steps) the variances
// are the respaced process's, as in improved-diffusion.
TEST(SamplersGaussian, LearnedVarianceMatchesFixed) {
  const auto g = make_gaussian();
  const auto kept = space_timesteps(1000, "100");
  const auto spaced = g.schedule.respace(kept);
  std::map<int64_t, size_t> index_of;
  for (size_t i = 0; i < kept.size(); ++i) index_of[kept[i]] = i;
  auto log_post_var = [&](double t) {
    const size_t i = index_of.at(static_cast<int64_t>(t));
    return i == 0 ? spaced.posterior_log_variance_clipped()[0] : std::log(spaced.posterior_variance()[i]);
  };
  auto opts = unclipped(100);
  auto sample = [&](const Denoiser& den) {
    auto noise = noise_for(g, 300);
    return sample_ddpm(den, noise, opts);
  };
  const auto fixed_small = sample(g.denoiser(Prediction::Epsilon, VarianceType::FixedSmall));
  const auto fixed_large = sample(g.denoiser(Prediction::Epsilon, VarianceType::FixedLarge));
  ASSERT_GT(mean_abs(fixed_small - fixed_large), 1e-3);  // the two fixed choices do differ
  const auto learned = sample(g.denoiser(Prediction::Epsilon, VarianceType::Learned, log_post_var));
  EXPECT_LT((learned - fixed_small).abs().max().item<double>(), 1e-10);
  const auto range_small =
      sample(g.denoiser(Prediction::Epsilon, VarianceType::LearnedRange, [](double) { return -1.0; }));
  EXPECT_LT((range_small - fixed_small).abs().max().item<double>(), 1e-10);
  const auto range_large =
      sample(g.denoiser(Prediction::Epsilon, VarianceType::LearnedRange, [](double) { return 1.0; }));
  EXPECT_LT((range_large - fixed_large).abs().max().item<double>(), 1e-10);
  // Every sampler accepts a learned-variance model (the variance channels are ignored by the
  // non-ancestral ones) and gives what the fixed-variance model gives.
  for (const auto& name : sampler_names()) {
    if (name == "ddpm") continue;
    auto a = noise_for(g, 64), b = noise_for(g, 64);
    auto den_l = g.denoiser(Prediction::Epsilon, VarianceType::LearnedRange, [](double) { return 0.3; });
    auto den_f = g.denoiser(Prediction::Epsilon, VarianceType::FixedSmall);
    EXPECT_TRUE(torch::equal(run_sampler(name, den_l, a, unclipped(10)), run_sampler(name, den_f, b, unclipped(10))))
        << name;
  }
}

// Zero terminal SNR (abar_{T-1} = 0): in the limit sigma' -> inf of the flow in this file's
// header, the exact ODE from pure noise x_T lands on x0 = mu + s x_T. The exact v-model is
// defined at abar = 0 (there E[x0 | x_t] = mu and eps = x_t), and DDIM on it converges to that
// answer at first order or better: 4 times the steps, at most a third of the error.
TEST(SamplersGaussian, ZeroTerminalSnrFlowFromPureNoise) {
  auto g = make_gaussian();
  ScheduleSpec spec;
  spec.timesteps = 1000;
  spec.zero_terminal_snr = true;
  g.schedule = NoiseSchedule::from_spec(spec);
  ASSERT_EQ(g.schedule.alpha_bar().back(), 0.0);
  ModelFn v_model = [&](const torch::Tensor& x, const torch::Tensor& t) {
    auto [a, sig] = g.levels(t);
    const auto x0 = g.mu + a * g.s * g.s * (x - a * g.mu) / (a * a * g.s * g.s + sig * sig);
    const auto eps = (x - a * x0) / sig;
    return a * eps - sig * x0;
  };
  const Denoiser den(v_model, GaussianDiffusion(g.schedule, Prediction::V));
  auto noise = noise_for(g, 256);
  const auto exact = g.mu + g.s * noise.initial();
  std::vector<double> err;
  for (int64_t steps : {25, 100, 400}) {
    noise.reset();
    const auto x = sample_ddim(den, noise, unclipped(steps));
    ASSERT_FALSE(x.isnan().any().item<bool>()) << steps;
    err.push_back(mean_abs(x - exact));
  }
  EXPECT_LT(err[1], err[0] / 3) << err[0] << " " << err[1];
  EXPECT_LT(err[2], err[1] / 3) << err[1] << " " << err[2];
  EXPECT_LT(err[2], 0.01 * mean_abs(exact - g.mu));
}

// Data centred outside [-1, 1]: with clipping (or dynamic thresholding) every sampler returns
// values in [-1, 1]; without, the samples leave it.
TEST(SamplersGaussian, ClippingKeepsSamplesInRange) {
  Gaussian g;
  g.mu = torch::tensor({1.5, -1.2}, torch::kFloat64);
  g.s = torch::tensor({0.5, 0.3}, torch::kFloat64);
  for (const auto& name : sampler_names()) {
    auto den = g.denoiser();
    SamplerOptions opts;
    opts.steps = 10;
    auto noise = noise_for(g, 200);
    EXPECT_LE(run_sampler(name, den, noise, opts).abs().max().item<double>(), 1.0) << name;
    opts.dynamic_threshold = 0.9;
    EXPECT_LE(run_sampler(name, den, noise, opts).abs().max().item<double>(), 1.0) << name;
    opts.dynamic_threshold = 0.0;
    opts.clip_x0 = false;
    EXPECT_GT(run_sampler(name, den, noise, opts).abs().max().item<double>(), 1.2) << name;
  }
}

// The network is called with the ORIGINAL training t on respaced schedules, and fractional t
// matching sigma for the sigma-space samplers; NFE and on_step counts are as documented.
TEST(SamplersGaussian, NetworkTimesNfeAndProgress) {
  const auto g = make_gaussian();
  std::vector<double> times;
  ModelFn inner = g.model(Prediction::Epsilon);
  Denoiser den(
      [&](const torch::Tensor& x, const torch::Tensor& t) {
        EXPECT_TRUE((t == t[0]).all().item<bool>());
        times.push_back(t[0].item<double>());
        return inner(x, t);
      },
      GaussianDiffusion(g.schedule));
  auto noise = noise_for(g, 4);
  std::vector<int64_t> steps_seen;
  auto opts = unclipped(10);
  opts.on_step = [&](const StepInfo& s) {
    EXPECT_EQ(s.total, 10);
    EXPECT_EQ(s.x_t.sizes(), (std::vector<int64_t>{4, 3}));
    EXPECT_EQ(s.x0_pred.sizes(), (std::vector<int64_t>{4, 3}));
    steps_seen.push_back(s.step);
  };
  sample_ddim(den, noise, opts);  // "ddim10": stride 100
  std::vector<double> expect;
  for (int t = 900; t >= 0; t -= 100) expect.push_back(t);
  EXPECT_EQ(times, expect);
  EXPECT_EQ(den.nfe(), 10);
  EXPECT_EQ(steps_seen, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));

  times.clear();
  den.reset_nfe();
  opts.on_step = nullptr;
  run_sampler("ddpm", den, noise, opts);  // "10": sections of 1000 -> 0, 111, ..., 999
  const auto kept = space_timesteps(1000, "10");
  ASSERT_EQ(times.size(), kept.size());
  for (size_t i = 0; i < kept.size(); ++i) EXPECT_EQ(times[i], static_cast<double>(kept[kept.size() - 1 - i]));
  EXPECT_EQ(times.front(), 999.0);

  times.clear();
  den.reset_nfe();
  run_sampler("heun", den, noise, opts);
  EXPECT_EQ(den.nfe(), 2 * 10 - 1);
  EXPECT_DOUBLE_EQ(times.front(), 999.0);  // sigma_max -> T - 1
  EXPECT_NEAR(times.back(), 0.0, 1e-9);    // sigma_min -> 0
  for (double t : times) {
    EXPECT_GE(t, 0.0);
    EXPECT_LE(t, 999.0);
  }
  den.reset_nfe();
  run_sampler("euler", den, noise, opts);
  run_sampler("dpmpp-2m", den, noise, opts);
  EXPECT_EQ(den.nfe(), 20);
}

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "diffuse/error.h"
#include "diffuse/eval/bpd.h"
#include "diffuse/losses.h"
#include "test_util.h"

using namespace diffuse;

namespace {

constexpr double kLn2 = 0.69314718055994530942;

// A tiny linear schedule: T = 6, betas 0.02 .. 0.5 (explicit, so no 1000/T scaling).
NoiseSchedule tiny_schedule(int64_t T = 6) {
  ScheduleSpec spec;
  spec.kind = ScheduleKind::Linear;
  spec.timesteps = T;
  spec.beta_start = 0.02;
  spec.beta_end = 0.5;
  return NoiseSchedule::from_spec(spec);
}

// 8-bit images in [-1, 1], float64, with both edge values present.
torch::Tensor grid_images(int64_t B, int64_t C, int64_t H, int64_t W, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto k = torch::randint(0, 256, {B, C, H, W}, gen, torch::kFloat64);
  k.index_put_({0, 0, 0, 0}, 0.0);
  k.index_put_({0, 0, 0, 1}, 255.0);
  return k / 127.5 - 1.0;
}

torch::Generator seeded(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

// sqrt(abar_t), sqrt(1 - abar_t) per batch element, from the schedule's betas (not its tables).
std::pair<torch::Tensor, torch::Tensor> scales(const std::vector<double>& betas, const torch::Tensor& t) {
  auto tc = t.to(torch::kCPU);
  std::vector<double> a, s;
  for (int64_t i = 0; i < tc.size(0); ++i) {
    double abar = 1.0;
    for (int64_t k = 0; k <= tc[i].item<int64_t>(); ++k) abar *= 1.0 - betas[static_cast<size_t>(k)];
    a.push_back(std::sqrt(abar));
    s.push_back(std::sqrt(1.0 - abar));
  }
  auto opt = torch::TensorOptions().dtype(torch::kFloat64);
  return {torch::tensor(a, opt).view({-1, 1, 1, 1}), torch::tensor(s, opt).view({-1, 1, 1, 1})};
}

// Standard normal CDF in double precision.
double phi(double z) { return 0.5 * (1.0 + std::erf(z / std::sqrt(2.0))); }

}  // namespace

// An exact model: handed x0, it returns the true eps of x_t. Every KL term is then 0 (the
// model's p(x_{t-1}|x_t) is the true posterior with the same fixed-small variance), so the bound
// is the prior plus the decoder term, both written out here from their definitions.
TEST(EvalBpd, ExactModelGivesPriorPlusDecoder) {
  const auto sched = tiny_schedule();
  const auto& betas = sched.betas();
  const int64_t T = sched.num_timesteps();
  GaussianDiffusion diffusion(sched, Prediction::Epsilon, VarianceType::FixedSmall);
  auto x0 = grid_images(5, 2, 3, 3, 11);
  ModelFn exact = [&](const torch::Tensor& x_t, const torch::Tensor& t) {
    auto [a, s] = scales(betas, t);
    return (x_t - a * x0) / s;
  };
  auto r = calc_bpd_loop(diffusion, exact, x0, seeded(1));

  ASSERT_EQ(r.terms.sizes(), (std::vector<int64_t>{5, T}));
  for (int64_t t = 1; t < T; ++t)
    EXPECT_LT(r.terms.select(1, t).abs().max().item<double>(), 1e-12) << "KL term at t=" << t;
  EXPECT_LT(r.diffusion.abs().max().item<double>(), 1e-11);
  EXPECT_LT(r.x0_mse.max().item<double>(), 1e-24);
  EXPECT_LT(r.eps_mse.max().item<double>(), 1e-20);

  // Decoder: N(x0, sigma^2) with sigma^2 = beta-tilde_1 = beta_1 (1 - abar_0) / (1 - abar_1)
  // (improved-diffusion clips the t = 0 log-variance to the t = 1 value), discretised into bins
  // of half-width 1/255; the edge bins reach to +-infinity.
  const double abar0 = 1 - betas[0], abar1 = abar0 * (1 - betas[1]);
  const double sigma = std::sqrt(betas[1] * (1 - abar0) / (1 - abar1));
  double abarT = 1.0;
  for (double b : betas) abarT *= 1 - b;
  auto xc = x0.reshape({5, -1});
  for (int64_t i = 0; i < 5; ++i) {
    double nll = 0, prior = 0;
    for (int64_t j = 0; j < xc.size(1); ++j) {
      const double x = xc[i][j].item<double>();
      const double p = (x == -1.0 || x == 1.0) ? phi((1.0 / 255.0) / sigma)
                                               : phi((1.0 / 255.0) / sigma) - phi((-1.0 / 255.0) / sigma);
      nll += -std::log(p);
      // KL(N(sqrt(abar_T) x, 1 - abar_T) || N(0, 1)), in nats.
      prior += 0.5 * (-1.0 - std::log(1 - abarT) + (1 - abarT) + abarT * x * x);
    }
    nll /= static_cast<double>(xc.size(1)) * kLn2;
    prior /= static_cast<double>(xc.size(1)) * kLn2;
    EXPECT_NEAR(r.decoder[i].item<double>(), nll, 1e-9 * nll) << i;
    EXPECT_NEAR(r.prior[i].item<double>(), prior, 1e-12) << i;
    EXPECT_NEAR(r.total[i].item<double>(), prior + nll, 1e-9 * nll) << i;
  }
  // The three parts add up to the total.
  EXPECT_LT((r.prior + r.decoder + r.diffusion - r.total).abs().max().item<double>(), 1e-12);
}

// The same with an x0-predicting exact model (the model output is x0 itself).
TEST(EvalBpd, ExactX0ModelHasZeroKl) {
  GaussianDiffusion diffusion(tiny_schedule(5), Prediction::X0, VarianceType::FixedSmall);
  auto x0 = grid_images(3, 1, 2, 2, 5);
  ModelFn exact = [&](const torch::Tensor&, const torch::Tensor&) { return x0.clone(); };
  auto r = calc_bpd_loop(diffusion, exact, x0, seeded(2));
  EXPECT_LT(r.diffusion.abs().max().item<double>(), 1e-12);
  EXPECT_LT(r.x0_mse.max().item<double>(), 1e-28);
  EXPECT_GT(r.decoder.min().item<double>(), 0.0);
}

// An imperfect model (zeros): calc_bpd_loop equals the sum of vlb_term_bpd per t computed here
// with the same noise (drawn in the documented order), plus prior_bpd.
TEST(EvalBpd, ZeroModelMatchesTermByTermSum) {
  for (auto variance : {VarianceType::FixedSmall, VarianceType::LearnedRange}) {
    for (bool clip : {true, false}) {
      GaussianDiffusion diffusion(tiny_schedule(), Prediction::Epsilon, variance);
      const int64_t T = diffusion.num_timesteps();
      auto x0 = grid_images(4, 1, 3, 3, 7);
      const int64_t out_c = diffusion.model_output_channels(1);
      ModelFn zeros = [&](const torch::Tensor& x_t, const torch::Tensor&) {
        return torch::zeros({x_t.size(0), out_c, 3, 3}, x_t.options());
      };
      BpdOptions opts;
      opts.clip_x0 = clip;
      std::vector<int64_t> seen;
      opts.progress = [&](int64_t t) { seen.push_back(t); };
      auto r = calc_bpd_loop(diffusion, zeros, x0, seeded(3), opts);

      auto gen = seeded(3);
      auto sum = prior_bpd(diffusion, x0);
      ReverseOptions ro;
      ro.clip_x0 = clip;
      for (int64_t t = T - 1; t >= 0; --t) {
        auto noise = torch::randn(x0.sizes(), gen, x0.options());
        auto tb = torch::full({4}, t, torch::kLong);
        auto x_t = diffusion.q_sample(x0, tb, noise);
        auto out = zeros(x_t, tb);
        auto term = vlb_term_bpd(diffusion, out, x0, x_t, tb, ro);
        EXPECT_LT((r.terms.select(1, t) - term.bpd).abs().max().item<double>(), 1e-12) << t;
        // x0 of a zero-eps model is x_t / sqrt(abar_t), clipped if asked.
        auto [a, s] = scales(diffusion.schedule().betas(), tb);
        auto x0_pred = x_t / a;
        if (clip) x0_pred = x0_pred.clamp(-1.0, 1.0);
        auto x0_mse = (x0_pred - x0).square().mean({1, 2, 3});
        EXPECT_LT((r.x0_mse.select(1, t) - x0_mse).abs().max().item<double>(), 1e-12) << t;
        auto eps_pred = (x_t - a * x0_pred) / s;
        auto eps_mse = (eps_pred - noise).square().mean({1, 2, 3});
        EXPECT_LT((r.eps_mse.select(1, t) - eps_mse).abs().max().item<double>(), 1e-10) << t;
        sum = sum + term.bpd;
      }
      EXPECT_LT((r.total - sum).abs().max().item<double>(), 1e-10);
      EXPECT_LT((r.prior + r.decoder + r.diffusion - r.total).abs().max().item<double>(), 1e-10);
      EXPECT_GT(r.diffusion.min().item<double>(), 0.01);  // the zero model is far from exact
      ASSERT_EQ(seen.size(), static_cast<size_t>(T));
      EXPECT_EQ(seen.front(), T - 1);
      EXPECT_EQ(seen.back(), 0);
    }
  }
}

// A respaced diffusion calls the model with the original (training) timesteps.
TEST(EvalBpd, RespacedScheduleCallsModelWithOriginalSteps) {
  GaussianDiffusion diffusion(tiny_schedule(6).respace("list:0,2,5"), Prediction::Epsilon, VarianceType::FixedSmall);
  auto x0 = grid_images(2, 1, 2, 2, 1);
  std::vector<int64_t> seen;
  ModelFn zeros = [&](const torch::Tensor& x_t, const torch::Tensor& t) {
    EXPECT_EQ(t.scalar_type(), torch::kLong);
    EXPECT_EQ(t.min().item<int64_t>(), t.max().item<int64_t>());
    seen.push_back(t[0].item<int64_t>());
    return torch::zeros_like(x_t);
  };
  auto r = calc_bpd_loop(diffusion, zeros, x0, seeded(0));
  EXPECT_EQ(seen, (std::vector<int64_t>{5, 2, 0}));
  EXPECT_EQ(r.terms.size(1), 3);
}

TEST(EvalBpd, WrongModelOutputShapeIsAClearError) {
  GaussianDiffusion diffusion(tiny_schedule(), Prediction::Epsilon, VarianceType::LearnedRange);
  auto x0 = grid_images(2, 1, 2, 2, 1);
  ModelFn bad = [](const torch::Tensor& x_t, const torch::Tensor&) { return torch::zeros_like(x_t); };
  try {
    calc_bpd_loop(diffusion, bad, x0, seeded(0));
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("expected [2, 2, 2, 2]"), std::string::npos) << e.what();
  }
}

// The Monte Carlo estimate over random t is unbiased: its 99% interval covers the exact value,
// uniform or importance-weighted; importance sampling with p(t) ~ the mean term cuts the variance.
TEST(EvalBpd, MonteCarloEstimateCoversExactValue) {
  GaussianDiffusion diffusion(tiny_schedule(8), Prediction::Epsilon, VarianceType::FixedSmall);
  const int64_t T = diffusion.num_timesteps();
  auto x0 = grid_images(96, 1, 2, 2, 21);
  // An imperfect model: eps shrunk towards 0 by half, computed from the true x0.
  const auto& betas = diffusion.schedule().betas();
  ModelFn half = [&](const torch::Tensor& x_t, const torch::Tensor& t) {
    auto [a, s] = scales(betas, t);
    return 0.5 * (x_t - a * x0) / s;
  };
  // Exact value: mean total over images, averaged over a few noise draws.
  double exact = 0;
  torch::Tensor mean_terms = torch::zeros({T}, torch::kFloat64);
  const int reps = 4;
  for (int rep = 0; rep < reps; ++rep) {
    auto r = calc_bpd_loop(diffusion, half, x0, seeded(100 + rep));
    exact += r.total.mean().item<double>() / reps;
    mean_terms += r.terms.mean(0) / reps;
  }

  BpdMcOptions uo;
  uo.samples_per_image = 4;
  auto u = estimate_bpd_mc(diffusion, half, x0, seeded(7), uo);
  ASSERT_EQ(u.per_image.size(0), 96);
  EXPECT_EQ(u.num_images, 96);
  EXPECT_GT(u.std_error, 0.0);
  EXPECT_NEAR(u.mean, exact, 2.6 * u.std_error) << "uniform: exact " << exact << " SE " << u.std_error;

  BpdMcOptions io = uo;
  io.probabilities = torch::linspace(1.0, 3.0, T, torch::kFloat64);  // an arbitrary proposal
  auto w = estimate_bpd_mc(diffusion, half, x0, seeded(8), io);
  EXPECT_NEAR(w.mean, exact, 2.6 * w.std_error) << "importance: exact " << exact << " SE " << w.std_error;

  io.probabilities = mean_terms;  // close to the variance-minimising proposal
  auto best = estimate_bpd_mc(diffusion, half, x0, seeded(9), io);
  EXPECT_NEAR(best.mean, exact, 2.6 * best.std_error);
  EXPECT_LT(best.std_error, u.std_error);

  // make_bpd_estimate is the plain mean and standard error.
  auto e = make_bpd_estimate(torch::tensor({1.0, 2.0, 4.0}, torch::kFloat64), 3);
  EXPECT_DOUBLE_EQ(e.mean, 7.0 / 3.0);
  EXPECT_NEAR(e.std_error, std::sqrt((16.0 / 9 + 1.0 / 9 + 25.0 / 9) / 2.0 / 3.0), 1e-15);
}

TEST(EvalBpd, MonteCarloRejectsBadProbabilities) {
  GaussianDiffusion diffusion(tiny_schedule(), Prediction::Epsilon, VarianceType::FixedSmall);
  auto x0 = grid_images(2, 1, 2, 2, 1);
  ModelFn zeros = [](const torch::Tensor& x_t, const torch::Tensor&) { return torch::zeros_like(x_t); };
  BpdMcOptions o;
  o.probabilities = torch::ones({3}, torch::kFloat64);
  EXPECT_THROW(estimate_bpd_mc(diffusion, zeros, x0, seeded(0), o), UsageError);
  o.probabilities = torch::tensor({1.0, -1.0, 1.0, 1.0, 1.0, 1.0}, torch::kFloat64);
  EXPECT_THROW(estimate_bpd_mc(diffusion, zeros, x0, seeded(0), o), UsageError);
  o.probabilities = torch::Tensor();
  o.samples_per_image = 0;
  EXPECT_THROW(estimate_bpd_mc(diffusion, zeros, x0, seeded(0), o), UsageError);
}

// The accumulator's means over two batches equal the means over their concatenation, and the
// CSV / JSON files read back to the same doubles.
TEST(EvalBpd, AccumulatorAndWritersRoundTrip) {
  GaussianDiffusion diffusion(tiny_schedule(5), Prediction::Epsilon, VarianceType::FixedSmall);
  ModelFn zeros = [](const torch::Tensor& x_t, const torch::Tensor&) { return torch::zeros_like(x_t); };
  auto r1 = calc_bpd_loop(diffusion, zeros, grid_images(3, 1, 2, 2, 1), seeded(1));
  auto r2 = calc_bpd_loop(diffusion, zeros, grid_images(4, 1, 2, 2, 2), seeded(2));
  BpdAccumulator acc;
  acc.add(r1);
  acc.add(r2);
  auto s = acc.summary();
  EXPECT_EQ(s.num_images, 7);
  EXPECT_EQ(s.timesteps, 5);
  auto cat = [](const torch::Tensor& a, const torch::Tensor& b) { return torch::cat({a, b}, 0); };
  auto total = cat(r1.total, r2.total);
  EXPECT_NEAR(s.total_bpd, total.mean().item<double>(), 1e-12);
  EXPECT_NEAR(s.total_bpd_std_error, (total.std() / std::sqrt(7.0)).item<double>(), 1e-12);
  EXPECT_NEAR(s.prior_bpd, cat(r1.prior, r2.prior).mean().item<double>(), 1e-15);
  EXPECT_NEAR(s.decoder_bpd, cat(r1.decoder, r2.decoder).mean().item<double>(), 1e-12);
  EXPECT_NEAR(s.diffusion_bpd, cat(r1.diffusion, r2.diffusion).mean().item<double>(), 1e-12);
  auto vb = cat(r1.terms, r2.terms).mean(0), x0m = cat(r1.x0_mse, r2.x0_mse).mean(0);
  auto epsm = cat(r1.eps_mse, r2.eps_mse).mean(0);
  for (int64_t t = 0; t < 5; ++t) {
    EXPECT_NEAR(s.vb_bpd[t], vb[t].item<double>(), 1e-12);
    EXPECT_NEAR(s.x0_mse[t], x0m[t].item<double>(), 1e-12);
    EXPECT_NEAR(s.eps_mse[t], epsm[t].item<double>(), 1e-12);
  }
  EXPECT_NEAR(s.total_bpd, s.prior_bpd + s.decoder_bpd + s.diffusion_bpd, 1e-12);

  test::TempDir dir;
  const auto csv = dir.str() + "/terms.csv", json = dir.str() + "/bpd.json";
  write_bpd_terms_csv(csv, s);
  std::ifstream in(csv);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "t,vb_bpd,x0_mse,eps_mse");
  for (int64_t t = 0; t < 5; ++t) {
    ASSERT_TRUE(std::getline(in, line));
    std::stringstream ss(line);
    std::string f[4];
    for (auto& x : f) std::getline(ss, x, ',');
    EXPECT_EQ(std::stoll(f[0]), t);
    EXPECT_EQ(std::stod(f[1]), s.vb_bpd[t]);  // exact: shortest round-trip form
    EXPECT_EQ(std::stod(f[2]), s.x0_mse[t]);
    EXPECT_EQ(std::stod(f[3]), s.eps_mse[t]);
  }
  EXPECT_FALSE(std::getline(in, line));

  write_bpd_json(json, s);
  auto y = YAML::LoadFile(json);  // JSON is YAML
  EXPECT_EQ(y["total_bpd"].as<double>(), s.total_bpd);
  EXPECT_EQ(y["prior_bpd"].as<double>(), s.prior_bpd);
  EXPECT_EQ(y["decoder_bpd"].as<double>(), s.decoder_bpd);
  EXPECT_EQ(y["diffusion_bpd"].as<double>(), s.diffusion_bpd);
  EXPECT_EQ(y["total_bpd_std_error"].as<double>(), s.total_bpd_std_error);
  EXPECT_EQ(y["num_images"].as<int64_t>(), 7);
  EXPECT_EQ(y["timesteps"].as<int64_t>(), 5);
  ASSERT_EQ(y["vb_bpd"].size(), 5u);
  EXPECT_EQ(y["vb_bpd"][4].as<double>(), s.vb_bpd[4]);

  // Non-finite numbers become null (JSON has no NaN).
  BpdSummary bad = s;
  bad.total_bpd = NAN;
  EXPECT_NE(bpd_summary_json(bad).find("\"total_bpd\": null"), std::string::npos);

  const auto missing = dir.str() + "/no/such/dir/terms.csv";
  try {
    write_bpd_terms_csv(missing, s);
    FAIL() << "expected UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos);
  }
  EXPECT_THROW(write_bpd_json(missing, s), UsageError);

  // Batches with different T do not mix.
  auto r3 = calc_bpd_loop(GaussianDiffusion(tiny_schedule(4)), zeros, grid_images(1, 1, 2, 2, 3), seeded(3));
  EXPECT_THROW(acc.add(r3), std::invalid_argument);
}

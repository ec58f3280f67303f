// GaussianDiffusion against independent computations: Bayes' rule by numerical integration,
// Monte Carlo moments, and the variance types' definitions.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "diffuse/diffusion.h"

#include "diffusion_fixture.h"

using namespace diffuse;

namespace {
using test::make_diffusion;
torch::Tensor scalar_t(int64_t t) { return torch::tensor({t}, torch::kLong); }
torch::Tensor val(double v) { return torch::tensor({v}, torch::kFloat64); }
}  // namespace

// q(x_{t-1}|x_t,x_0) is proportional to q(x_t|x_{t-1}) q(x_{t-1}|x_0) (Bayes, with the Markov
// property). Normalise that product numerically on a fine grid over x_{t-1} and compare its mean
// and variance with the closed form.
TEST(Diffusion, PosteriorEqualsBayesRuleByNumericalIntegration) {
  for (auto kind : {ScheduleKind::Linear, ScheduleKind::Cosine}) {
    auto d = make_diffusion(kind, 1000);
    const auto& s = d.schedule();
    for (int64_t t : {1, 2, 5, 50, 250, 500, 750, 998, 999}) {
      for (auto [x0, xt] : {std::pair{0.7, -0.3}, std::pair{-1.0, 1.5}}) {
        const double alpha = s.alphas()[t], beta = s.betas()[t], abp = s.alpha_bar_prev()[t];
        auto post = d.q_posterior(val(x0), val(xt), scalar_t(t));
        const double mean = post.mean.item<double>(), var = post.variance.item<double>();
        // Grid around the closed-form answer, wide enough (+-14 sd) that the tails vanish.
        const int n = 40001;
        const double lo = mean - 14 * std::sqrt(var), hi = mean + 14 * std::sqrt(var);
        const double h = (hi - lo) / (n - 1);
        std::vector<double> logw(n);
        double mx = -1e300;
        for (int i = 0; i < n; ++i) {
          const double y = lo + i * h;  // x_{t-1}
          const double l1 = -0.5 * std::pow(xt - std::sqrt(alpha) * y, 2) / beta;
          const double l2 = -0.5 * std::pow(y - std::sqrt(abp) * x0, 2) / (1 - abp);
          logw[i] = l1 + l2;
          mx = std::max(mx, logw[i]);
        }
        double z = 0, m1 = 0, m2 = 0;
        for (int i = 0; i < n; ++i) {
          const double w = std::exp(logw[i] - mx), y = lo + i * h;
          z += w;
          m1 += w * y;
          m2 += w * y * y;
        }
        m1 /= z;
        const double v = m2 / z - m1 * m1;
        EXPECT_NEAR(mean, m1, 1e-9 * (1 + std::abs(m1))) << to_string(kind) << " t=" << t;
        EXPECT_NEAR(var, v, 1e-6 * v) << to_string(kind) << " t=" << t;
        EXPECT_NEAR(post.log_variance.item<double>(), std::log(v), 1e-6);
      }
    }
  }
}

TEST(Diffusion, QSampleMomentsMatchMonteCarlo) {
  auto d = make_diffusion(ScheduleKind::Cosine, 1000);
  torch::manual_seed(0);
  const int64_t n = 200000;
  for (int64_t t : {0, 300, 900}) {
    auto x0 = torch::full({n, 1}, 0.6, torch::kFloat64);
    auto x_t = d.q_sample(x0, torch::full({n}, t, torch::kLong), torch::randn({n, 1}, torch::kFloat64));
    const double ab = d.schedule().alpha_bar()[t];
    const double want_mean = std::sqrt(ab) * 0.6, want_var = 1 - ab;
    // Standard errors: sd/sqrt(n) for the mean, var*sqrt(2/n) for the variance; 5 SE tolerance.
    EXPECT_NEAR(x_t.mean().item<double>(), want_mean, 5 * std::sqrt(want_var / n));
    EXPECT_NEAR(x_t.var().item<double>(), want_var, 5 * want_var * std::sqrt(2.0 / n));
    auto q = d.q_mean_variance(x0.slice(0, 0, 1), torch::full({1}, t, torch::kLong));
    EXPECT_NEAR(q.mean.item<double>(), want_mean, 1e-15);
    EXPECT_NEAR(q.variance.item<double>(), want_var, 1e-15);
  }
}

TEST(Diffusion, VarianceTypesFollowTheirDefinitions) {
  const int64_t T = 100;
  auto x_t = torch::randn({3, 2}, torch::kFloat64);
  auto t = torch::tensor({0, 1, 57}, torch::kLong);
  auto zeros = torch::zeros_like(x_t);
  auto small = make_diffusion(ScheduleKind::Linear, T, VarianceType::FixedSmall).p_mean_variance(zeros, x_t, t);
  auto large = make_diffusion(ScheduleKind::Linear, T, VarianceType::FixedLarge).p_mean_variance(zeros, x_t, t);
  const auto s = make_diffusion(ScheduleKind::Linear, T).schedule();
  // fixed_small: the posterior variance, its log clipped at t = 0 to t = 1's value.
  EXPECT_DOUBLE_EQ(small.variance[2][0].item<double>(), s.posterior_variance()[57]);
  EXPECT_DOUBLE_EQ(small.log_variance[0][0].item<double>(), std::log(s.posterior_variance()[1]));
  // fixed_large: beta_t, but the posterior variance of t = 1 at t = 0.
  EXPECT_DOUBLE_EQ(large.variance[2][1].item<double>(), s.betas()[57]);
  EXPECT_DOUBLE_EQ(large.variance[1][1].item<double>(), s.betas()[1]);
  EXPECT_DOUBLE_EQ(large.variance[0][1].item<double>(), s.posterior_variance()[1]);

  // learned_range: v = +1 gives log beta, v = -1 the clipped log posterior variance, 0 the midpoint.
  auto lr = make_diffusion(ScheduleKind::Linear, T, VarianceType::LearnedRange);
  for (double v : {-1.0, 0.0, 1.0}) {
    auto out = torch::cat({zeros, torch::full_like(x_t, v)}, 1);
    auto st = lr.p_mean_variance(out, x_t, t);
    const double frac = (v + 1) / 2;
    const double want = frac * std::log(s.betas()[57]) + (1 - frac) * s.posterior_log_variance_clipped()[57];
    EXPECT_NEAR(st.log_variance[2][0].item<double>(), want, 1e-12);
  }
  // learned: the output is the log-variance itself.
  auto le = make_diffusion(ScheduleKind::Linear, T, VarianceType::Learned);
  auto st = le.p_mean_variance(torch::cat({zeros, torch::full_like(x_t, -3.0)}, 1), x_t, t);
  EXPECT_DOUBLE_EQ(st.variance[1][1].item<double>(), std::exp(-3.0));
}

// With the true x0 the model's reverse mean is exactly the posterior mean, for every
// parameterisation (the three views are the same model).
TEST(Diffusion, ReverseMeanEqualsPosteriorWithExactPrediction) {
  for (auto p : {Prediction::Epsilon, Prediction::X0, Prediction::V, Prediction::Score, Prediction::Edm}) {
    auto d = make_diffusion(ScheduleKind::Cosine, 200, VarianceType::FixedSmall, p);
    auto x0 = torch::rand({4, 3}, torch::kFloat64) * 2 - 1;
    auto eps = torch::randn({4, 3}, torch::kFloat64);
    auto t = torch::tensor({1, 20, 100, 199}, torch::kLong);
    auto x_t = d.q_sample(x0, t, eps);
    auto target = training_target(p, x0, eps, d.level(t, x0));
    auto st = d.p_mean_variance(target, x_t, t, ReverseOptions{false, 0.0});
    auto post = d.q_posterior(x0, x_t, t);
    EXPECT_TRUE(torch::allclose(st.mean, post.mean, 1e-9, 1e-9)) << to_string(p);
    EXPECT_TRUE(torch::allclose(st.x0_pred, x0, 1e-8, 1e-8)) << to_string(p);
  }
}

TEST(Diffusion, ClippingAndDynamicThresholding) {
  auto d = make_diffusion(ScheduleKind::Linear, 100, VarianceType::FixedSmall, Prediction::X0);
  auto x_t = torch::zeros({2, 4}, torch::kFloat64);
  auto out = torch::tensor({{3.0, -2.0, 0.5, 0.0}, {0.2, 0.1, -0.3, 0.4}}, torch::kFloat64);
  auto t = torch::tensor({10, 10}, torch::kLong);
  auto clipped = d.p_mean_variance(out, x_t, t, ReverseOptions{true, 0.0}).x0_pred;
  EXPECT_DOUBLE_EQ(clipped[0][0].item<double>(), 1.0);
  EXPECT_DOUBLE_EQ(clipped[0][1].item<double>(), -1.0);
  // Dynamic thresholding with p = 1: s = max |x0| (>= 1), then x0 / s. The second row has
  // max |x0| < 1, so s = 1 and it is unchanged.
  auto dyn = dynamic_threshold(out, 1.0);
  EXPECT_NEAR(dyn[0][0].item<double>(), 1.0, 1e-12);
  EXPECT_NEAR(dyn[0][1].item<double>(), -2.0 / 3.0, 1e-12);
  EXPECT_NEAR(dyn[0][2].item<double>(), 0.5 / 3.0, 1e-12);
  EXPECT_TRUE(torch::allclose(dyn[1], out[1]));
  // p = 0.9 of |x| = 0, 0.2, ..., 2.0 (11 values, linear interpolation: the value at rank 9) is
  // 1.8: values are clamped to +-1.8 and divided by it; dynamic_threshold_max caps s at 1.5.
  auto row = torch::linspace(0.0, 2.0, 11, torch::kFloat64) *
             torch::tensor({1., -1., 1., -1., 1., -1., 1., -1., 1., -1., 1.}, torch::kFloat64);
  row = row.reshape({1, 11});
  auto q = dynamic_threshold(row, 0.9);
  EXPECT_TRUE(torch::allclose(q, torch::clamp(row, -1.8, 1.8) / 1.8, 1e-6, 1e-7)) << q;
  auto capped = dynamic_threshold(row, 0.9, 1.5);
  EXPECT_TRUE(torch::allclose(capped, torch::clamp(row, -1.5, 1.5) / 1.5, 1e-6, 1e-7)) << capped;
  EXPECT_NEAR(capped.max().item<double>(), 1.0, 1e-7);
}

TEST(Diffusion, PSampleAddsNoNoiseAtTZero) {
  auto d = make_diffusion(ScheduleKind::Linear, 100);
  auto x_t = torch::randn({2, 3}, torch::kFloat64);
  auto t = torch::tensor({0, 5}, torch::kLong);
  auto st = d.p_mean_variance(torch::zeros_like(x_t), x_t, t);
  auto noise = torch::ones_like(x_t);
  auto x = d.p_sample(st, t, noise);
  EXPECT_TRUE(torch::allclose(x[0], st.mean[0]));
  EXPECT_TRUE(torch::allclose(x[1], st.mean[1] + std::sqrt(d.schedule().posterior_variance()[5])));
}

// eps / x0 / v / score: round trips, and Tweedie's formula on Gaussian data where the true
// score and posterior mean are known in closed form.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "diffuse/diffusion.h"
#include "diffuse/error.h"
#include "diffuse/parameterization.h"

using namespace diffuse;

TEST(Parameterization, ConversionsRoundTrip) {
  ScheduleSpec spec;
  spec.kind = ScheduleKind::Cosine;
  GaussianDiffusion d(NoiseSchedule::from_spec(spec));
  torch::manual_seed(1);
  auto x0 = torch::randn({16, 3, 2, 2}, torch::kFloat64);
  auto eps = torch::randn_like(x0);
  auto t = torch::randint(0, 1000, {16}, torch::kLong);
  auto x_t = d.q_sample(x0, t, eps);
  auto n = d.level(t, x0);
  for (auto p : {Prediction::Epsilon, Prediction::X0, Prediction::V, Prediction::Score, Prediction::Edm}) {
    auto views = convert(p, training_target(p, x0, eps, n), x_t, n);
    // x0 from eps divides by sqrt(alpha_bar), which is ~1e-2 near t = T; 1e-9 covers that.
    EXPECT_TRUE(torch::allclose(views.x0, x0, 1e-9, 1e-9)) << to_string(p);
    EXPECT_TRUE(torch::allclose(views.eps, eps, 1e-9, 1e-9)) << to_string(p);
    EXPECT_TRUE(torch::allclose(views.v, v_from_x0_eps(x0, eps, n), 1e-9, 1e-9)) << to_string(p);
    EXPECT_TRUE(torch::allclose(views.score, -eps / n.s, 1e-9, 1e-9)) << to_string(p);
  }
  // Pairwise identities.
  auto v = v_from_x0_eps(x0, eps, n);
  EXPECT_TRUE(torch::allclose(x0_from_v(x_t, v, n), x0, 1e-10, 1e-10));
  EXPECT_TRUE(torch::allclose(eps_from_v(x_t, v, n), eps, 1e-10, 1e-10));
  EXPECT_TRUE(torch::allclose(eps_from_score(score_from_eps(eps, n), n), eps, 1e-12, 1e-12));
  EXPECT_THROW(parse_prediction("noise"), UsageError);
}

// Data x0 ~ N(mu, s0^2). Then x_t ~ N(a mu, a^2 s0^2 + s^2) and the true score is
// -(x_t - a mu) / (a^2 s0^2 + s^2). Tweedie's formula (Luo eq. 133) says
// E[x0 | x_t] = (x_t + s^2 score) / a, which must equal the Gaussian conditional mean
// mu + a s0^2 (x_t - a mu) / (a^2 s0^2 + s^2) computed by ordinary Gaussian conditioning.
TEST(Parameterization, TweedieHoldsForGaussianData) {
  ScheduleSpec spec;
  GaussianDiffusion d(NoiseSchedule::from_spec(spec));
  const double mu = 0.4, s0 = 0.3;
  auto x_t = torch::linspace(-3, 3, 13, torch::kFloat64);
  for (int64_t step : {0, 10, 400, 999}) {
    auto t = torch::full({13}, step, torch::kLong);
    auto n = d.level(t, x_t);
    auto var_t = n.a * n.a * s0 * s0 + n.s * n.s;
    auto true_score = -(x_t - n.a * mu) / var_t;
    auto views = convert(Prediction::Score, true_score, x_t, n);
    auto cond_mean = mu + n.a * s0 * s0 * (x_t - n.a * mu) / var_t;
    EXPECT_TRUE(torch::allclose(views.x0, cond_mean, 1e-9, 1e-9)) << "t=" << step;
  }
  // Monte Carlo: regress x0 on x_t at one t; the empirical E[x0 | x_t] slope matches Tweedie's.
  torch::manual_seed(3);
  const int64_t n = 400000, step = 300;
  auto x0 = mu + s0 * torch::randn({n}, torch::kFloat64);
  auto t = torch::full({n}, step, torch::kLong);
  auto xt = d.q_sample(x0, t, torch::randn({n}, torch::kFloat64));
  const double a = d.schedule().sqrt_alpha_bar()[step], s = d.schedule().sqrt_one_minus_alpha_bar()[step];
  auto xc = xt - xt.mean();
  const double slope = ((x0 - x0.mean()) * xc).sum().item<double>() / (xc * xc).sum().item<double>();
  const double want = a * s0 * s0 / (a * a * s0 * s0 + s * s);
  // Regression slope SE ~ sd(resid) / (sd(x_t) sqrt(n)); 5 SE.
  const double resid_sd = std::sqrt(s0 * s0 * s * s / (a * a * s0 * s0 + s * s));
  const double se = resid_sd / (std::sqrt(a * a * s0 * s0 + s * s) * std::sqrt(static_cast<double>(n)));
  EXPECT_NEAR(slope, want, 5 * se);
}

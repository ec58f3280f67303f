// ELBO pieces against independent truth: Monte Carlo KL, normalisation of the discretised
// likelihood, zero KL at the true posterior, the prior term's size, and loss weights.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "diffuse/error.h"
#include "diffuse/losses.h"

#include "diffusion_fixture.h"

using namespace diffuse;

namespace {
using test::make_diffusion;
}  // namespace

TEST(Losses, GaussianKlMatchesMonteCarlo) {
  torch::manual_seed(0);
  const int64_t n = 400000;
  for (auto [m1, lv1, m2, lv2] :
       {std::tuple{0.3, -1.0, -0.2, 0.5}, std::tuple{1.0, 0.2, 1.0, 0.2}, std::tuple{-2.0, -4.0, 0.0, 0.0}}) {
    auto x = m1 + std::exp(0.5 * lv1) * torch::randn({n}, torch::kFloat64);
    auto logp1 = -0.5 * (lv1 + (x - m1).pow(2) / std::exp(lv1));
    auto logp2 = -0.5 * (lv2 + (x - m2).pow(2) / std::exp(lv2));
    auto diff = logp1 - logp2;
    const double mc = diff.mean().item<double>(), se = diff.std().item<double>() / std::sqrt(double(n));
    auto t = [](double v) { return torch::tensor({v}, torch::kFloat64); };
    const double kl = normal_kl(t(m1), t(lv1), t(m2), t(lv2)).item<double>();
    EXPECT_NEAR(kl, mc, 5 * se + 1e-12);
    EXPECT_GE(kl, 0.0);
  }
}

TEST(Losses, DiscretizedLikelihoodSumsToOneOverAllBins) {
  auto bins = torch::arange(256, torch::kFloat64) / 127.5 - 1.0;  // the 256 values of 8-bit data
  for (double mean : {-1.2, -0.5, 0.0, 0.013, 0.9, 1.0}) {
    for (double log_scale : {-7.0, -4.0, -1.0, 0.0, 1.5}) {
      auto m = torch::full_like(bins, mean);
      auto ls = torch::full_like(bins, log_scale);
      auto lp = discretized_gaussian_log_likelihood(bins, m, ls);
      EXPECT_NEAR(lp.exp().sum().item<double>(), 1.0, 1e-9) << mean << " " << log_scale;
      EXPECT_TRUE(torch::all(lp <= 1e-12).item<bool>());
    }
  }
  // An interior bin equals Phi(upper) - Phi(lower) written out with std::erf.
  auto x = torch::tensor({0.2}, torch::kFloat64);
  const double mean = 0.1, sd = 0.05;
  auto lp = discretized_gaussian_log_likelihood(x, torch::tensor({mean}, torch::kFloat64),
                                                torch::tensor({std::log(sd)}, torch::kFloat64));
  auto Phi = [](double z) { return 0.5 * (1 + std::erf(z / std::sqrt(2.0))); };
  const double want = Phi((0.2 + 1 / 255.0 - mean) / sd) - Phi((0.2 - 1 / 255.0 - mean) / sd);
  EXPECT_NEAR(lp.item<double>(), std::log(want), 1e-10);
}

// improved-diffusion's tanh approximation, written out per element in double with std::tanh
// and its 1e-12 floors; its bins still telescope to a total of 1; and it stays within the
// approximation's known error of the exact CDF.
TEST(Losses, DiscretizedLikelihoodTanhMatchesImprovedDiffusionsFormula) {
  auto approx = [](double z) { return 0.5 * (1 + std::tanh(std::sqrt(2 / M_PI) * (z + 0.044715 * z * z * z))); };
  auto Phi = [](double z) { return 0.5 * std::erfc(-z / std::sqrt(2.0)); };
  auto bins = torch::arange(256, torch::kFloat64) / 127.5 - 1.0;
  double worst_cdf_gap = 0;
  for (double mean : {-1.2, -0.5, 0.0, 0.013, 0.9, 1.0}) {
    for (double log_scale : {-7.0, -4.0, -1.0, 0.0, 1.5}) {
      auto lp = discretized_gaussian_log_likelihood(bins, torch::full_like(bins, mean),
                                                    torch::full_like(bins, log_scale), DecoderCdf::Tanh);
      const double sd = std::exp(log_scale);
      double total = 0;
      for (int k = 0; k < 256; ++k) {
        const double x = k / 127.5 - 1.0;
        const double hi = approx((x + 1 / 255.0 - mean) / sd), lo = approx((x - 1 / 255.0 - mean) / sd);
        const double p = k == 0 ? hi : k == 255 ? 1 - lo : hi - lo;
        total += p;
        // Compared as probabilities: where p is a difference of two CDFs near 1, one ulp of tanh
        // (ATen's vectorised one against std::tanh) moves log p by 1e-16 / p.
        const double want = std::max(p, 1e-12);
        EXPECT_NEAR(std::exp(lp[k].item<double>()), want, 1e-15 + 1e-9 * want)
            << mean << " " << log_scale << " bin " << k;
        worst_cdf_gap = std::max(worst_cdf_gap, std::abs(hi - Phi((x + 1 / 255.0 - mean) / sd)));
      }
      EXPECT_NEAR(total, 1.0, 1e-12);
      const double floored = lp.clamp_min(std::log(1e-12) + 1e-9).exp().sum().item<double>();
      EXPECT_NEAR(floored, 1.0, 256 * 1e-12 + 1e-12) << mean << " " << log_scale;
    }
  }
  // The tanh form is within 2e-4 of Phi everywhere (its published maximum error is ~1.7e-4).
  EXPECT_LT(worst_cdf_gap, 2e-4);
  EXPECT_GT(worst_cdf_gap, 1e-6);  // and it is an approximation: the option changes something
  EXPECT_EQ(parse_decoder_cdf("tanh"), DecoderCdf::Tanh);
  EXPECT_THROW(parse_decoder_cdf("erf"), UsageError);
}

// Far from the mean (an untrained x0-prediction at t = 0: sd 0.0074, errors of 0.1 to 0.9) the
// bin's probability underflows float32 and, past about 0.3, float64 too; the log-likelihood must
// stay finite and exact in both, with the right gradient. Truth: the same bin probability and its
// derivative in 80-bit long double (erfcl reaches 1e-4951), an independent computation.
TEST(Losses, DiscretizedLikelihoodStaysFiniteAndExactFarInTheTail) {
  const long double sd = 0.0074L, w = 1.0L / 255.0L, r2 = std::sqrt(2.0L);
  for (double err : {0.1, 0.5, 0.9}) {
    const double x = 0.2, mean = x - err;  // the data sit err above the predicted mean
    const long double z_lo = (err - w) / sd, z_hi = (err + w) / sd;
    const long double p = 0.5L * (std::erfc(z_lo / r2) - std::erfc(z_hi / r2));
    ASSERT_GT(p, 0.0L);
    const long double want = std::log(p);
    // d log P / d mean = (phi(z_lo) - phi(z_hi)) / (sd P)
    const long double phi_lo = std::exp(-0.5L * z_lo * z_lo) / std::sqrt(2.0L * M_PI);
    const long double phi_hi = std::exp(-0.5L * z_hi * z_hi) / std::sqrt(2.0L * M_PI);
    const long double want_grad = (phi_lo - phi_hi) / (sd * p);
    for (auto dtype : {torch::kFloat32, torch::kFloat64}) {
      const double tol = dtype == torch::kFloat32 ? 1e-5 : 1e-9;
      auto m = torch::tensor({mean}, dtype).requires_grad_(true);
      auto lp = discretized_gaussian_log_likelihood(torch::tensor({x}, dtype), m,
                                                    torch::tensor({std::log(double(sd))}, dtype));
      lp.sum().backward();
      EXPECT_NEAR(lp.item<double>(), double(want), std::abs(double(want)) * tol) << "err " << err << " " << dtype;
      const double g = m.grad().item<double>();
      EXPECT_NEAR(g, double(want_grad), std::abs(double(want_grad)) * 100 * tol) << "err " << err << " " << dtype;
    }
  }
}

// Every denoising-matching term vanishes when the model's reverse distribution is the true
// posterior (the model is handed x_0), and is positive otherwise.
TEST(Losses, KlTermsZeroAtTruePosteriorPositiveOtherwise) {
  for (auto kind : {ScheduleKind::Linear, ScheduleKind::Cosine}) {
    for (auto var : {VarianceType::FixedSmall, VarianceType::Learned, VarianceType::LearnedRange}) {
      auto d = make_diffusion(kind, 1000, var);
      torch::manual_seed(2);
      const int64_t B = 999;  // every t >= 1 once (t = 0 is the decoder term, not a KL)
      auto x0 = torch::rand({B, 1, 2, 2}, torch::kFloat64) * 2 - 1;
      auto eps = torch::randn_like(x0);
      auto t = torch::arange(1, 1000, torch::kLong);
      auto x_t = d.q_sample(x0, t, eps);
      auto out = eps.clone();
      if (var == VarianceType::Learned) {
        auto logv = d.schedule().gather(d.schedule().posterior_log_variance_clipped(), t, x0).expand_as(x0);
        out = torch::cat({eps, logv}, 1);
      } else if (var == VarianceType::LearnedRange) {
        // v = -1 puts the interpolation at its lower end, log beta-tilde (clipped): the posterior's.
        out = torch::cat({eps, -torch::ones_like(eps)}, 1);
      }
      auto term = vlb_term_bpd(d, out, x0, x_t, t, ReverseOptions{false, 0.0});
      EXPECT_LT(term.bpd.abs().max().item<double>(), 1e-9) << to_string(kind);
      auto wrong = out.clone();
      wrong.slice(1, 0, 1).add_(0.1);
      auto bad = vlb_term_bpd(d, wrong, x0, x_t, t, ReverseOptions{false, 0.0});
      EXPECT_GT(bad.bpd.min().item<double>(), 0.0);
    }
  }
}

// The KL term of an imperfect model against KL(q || p) written out from the betas: q's mean and
// variance from Ho et al. eq. 7, p's mean from the model's x0, and p's variance per type
// (fixed_small: beta-tilde, fixed_large: beta, learned_range: exp(f log beta + (1 - f) log
// beta-tilde), f = (v + 1) / 2 with v != -1). Gaussians per element, averaged, in bits.
TEST(Losses, KlTermEqualsTheClosedFormWrittenOutForEachVarianceType) {
  ScheduleSpec spec;
  spec.timesteps = 1000;
  const auto sched = NoiseSchedule::from_spec(spec);
  std::vector<double> abar(1000);
  double a = 1.0;
  for (size_t i = 0; i < 1000; ++i) abar[i] = a *= 1.0 - sched.betas()[i];
  torch::manual_seed(9);
  const auto x0 = torch::rand({3, 1, 2, 2}, torch::kFloat64) * 2 - 1;
  const auto eps = torch::randn_like(x0);
  const std::vector<int64_t> ts{1, 300, 999};
  const auto t = torch::tensor(ts, torch::kLong);
  const auto v = torch::full_like(x0, 0.4);
  for (auto var : {VarianceType::FixedSmall, VarianceType::FixedLarge, VarianceType::LearnedRange}) {
    const GaussianDiffusion d(sched, Prediction::Epsilon, var);
    const auto x_t = d.q_sample(x0, t, eps);
    const auto eps_hat = eps + 0.3 * torch::sin(3 * x0);  // an imperfect model
    const auto out = var == VarianceType::LearnedRange ? torch::cat({eps_hat, v}, 1) : eps_hat;
    const auto term = vlb_term_bpd(d, out, x0, x_t, t, ReverseOptions{false, 0.0});
    for (size_t i = 0; i < ts.size(); ++i) {
      const auto k = static_cast<size_t>(ts[i]);
      const double beta = sched.betas()[k], ab = abar[k], ab_prev = abar[k - 1];
      const double q_var = beta * (1 - ab_prev) / (1 - ab);
      const double c0 = std::sqrt(ab_prev) * beta / (1 - ab), ct = std::sqrt(1 - beta) * (1 - ab_prev) / (1 - ab);
      const auto xi = x_t[i], x0i = x0[i];
      const auto x0_hat = (xi - std::sqrt(1 - ab) * eps_hat[i]) / std::sqrt(ab);
      const auto q_mean = c0 * x0i + ct * xi, p_mean = c0 * x0_hat + ct * xi;
      double p_logvar = std::log(q_var);
      if (var == VarianceType::FixedLarge) p_logvar = std::log(beta);
      if (var == VarianceType::LearnedRange) p_logvar = 0.7 * std::log(beta) + 0.3 * std::log(q_var);
      const auto kl = 0.5 * (-1.0 + p_logvar - std::log(q_var) + q_var / std::exp(p_logvar) +
                             (q_mean - p_mean).pow(2) / std::exp(p_logvar));
      const double expected = kl.mean().item<double>() / std::log(2.0);
      EXPECT_NEAR(term.bpd[static_cast<int64_t>(i)].item<double>(), expected, 1e-9 * std::abs(expected) + 1e-12)
          << to_string(var) << " t " << k;
      EXPECT_GT(expected, 0.0);
    }
  }
}

// For the linear schedule this holds with DDPM's fixed betas 1e-4..0.02; improved-diffusion's
// default rescales them by 1000/T, which keeps sum(beta) and hence alpha_bar_T nearly constant.
TEST(Losses, PriorTermSmallAtT1000AndGrowsAsTShrinks) {
  auto x0 = torch::linspace(-1, 1, 16, torch::kFloat64).reshape({2, 8});
  for (auto kind : {ScheduleKind::Linear, ScheduleKind::Cosine}) {
    double prev = -1;
    for (int64_t T : {1000, 200, 50}) {
      ScheduleSpec spec;
      spec.kind = kind;
      spec.timesteps = T;
      if (kind == ScheduleKind::Linear) {
        spec.beta_start = 1e-4;
        spec.beta_end = 0.02;
      }
      GaussianDiffusion d(NoiseSchedule::from_spec(spec));
      const double p = prior_bpd(d, x0).max().item<double>();
      // Independent: KL(N(a x0, 1-a^2) || N(0,1)) = 0.5 (a^2 x0^2 - a^2 - log(1 - a^2)) per dim.
      const double ab = d.schedule().alpha_bar().back();
      double want = 0;
      for (int i = 8; i < 16; ++i) {
        const double xv = x0.view({-1})[i].item<double>();
        want += 0.5 * (ab * xv * xv - ab - std::log1p(-ab));
      }
      want /= 8 * std::log(2.0);
      EXPECT_NEAR(p, want, 1e-12 + 1e-9 * want);
      if (T == 1000) {
        EXPECT_LT(p, 1e-4) << to_string(kind);
      }
      EXPECT_GT(p, prev) << to_string(kind) << " T=" << T;
      prev = p;
    }
  }
}

TEST(Losses, DecoderTermAtTZero) {
  auto d = make_diffusion(ScheduleKind::Linear, 1000);
  auto x0 = torch::tensor({{-1.0, 0.0, 1.0}}, torch::kFloat64);
  auto t = torch::zeros({1}, torch::kLong);
  auto eps = torch::zeros_like(x0);
  auto x_t = d.q_sample(x0, t, eps);
  auto term = vlb_term_bpd(d, eps, x0, x_t, t, ReverseOptions{false, 0.0});
  // The decoder mean is x0 itself here; its scale is sqrt of the clipped posterior variance.
  const double sd = std::exp(0.5 * d.schedule().posterior_log_variance_clipped()[0]);
  auto Phi = [](double z) { return 0.5 * (1 + std::erf(z / std::sqrt(2.0))); };
  const double edge = Phi((1 / 255.0) / sd), mid = Phi((1 / 255.0) / sd) - Phi((-1 / 255.0) / sd);
  const double want = -(2 * std::log(edge) + std::log(mid)) / 3 / std::log(2.0);
  EXPECT_NEAR(term.bpd.item<double>(), want, 1e-9);
}

TEST(Losses, TrainingLossesSimpleHybridKl) {
  auto d = make_diffusion(ScheduleKind::Cosine, 100, VarianceType::LearnedRange);
  torch::manual_seed(4);
  auto x0 = torch::rand({8, 1, 2, 2}) * 2 - 1;
  auto eps = torch::randn_like(x0);
  auto t = torch::randint(0, 100, {8}, torch::kLong);
  auto x_t = d.q_sample(x0, t, eps);
  auto out = torch::cat({eps + 0.1 * torch::randn_like(eps), torch::zeros_like(eps)}, 1).requires_grad_(true);
  LossConfig cfg;
  cfg.type = LossType::Simple;
  auto simple = training_losses(d, cfg, out, x0, x_t, t, eps);
  auto want = (out.slice(1, 0, 1) - eps).pow(2).reshape({8, -1}).mean(1);
  EXPECT_TRUE(torch::allclose(simple.mse, want));
  // Hybrid: the VLB term sees the mean detached, so it sends no gradient to the mean channels.
  cfg.type = LossType::Hybrid;
  auto hyb = training_losses(d, cfg, out, x0, x_t, t, eps);
  auto g = torch::autograd::grad({hyb.vb.sum()}, {out})[0];
  EXPECT_EQ(g.slice(1, 0, 1).abs().max().item<float>(), 0.0f);
  EXPECT_GT(g.slice(1, 1, 2).abs().max().item<float>(), 0.0f);
  EXPECT_TRUE(torch::allclose(hyb.loss, hyb.mse + hyb.vb));
  // KL: T times the VLB term.
  cfg.type = LossType::Kl;
  auto kl = training_losses(d, cfg, out, x0, x_t, t, eps);
  auto vb = vlb_term_bpd(d, out.detach(), x0, x_t, t, ReverseOptions{false, 0.0}).bpd;
  EXPECT_TRUE(torch::allclose(kl.loss, vb * 100.0, 1e-4, 1e-5));
  // Hybrid: lambda * T times the same term (the mean's detachment changes no value).
  EXPECT_TRUE(torch::allclose(hyb.vb, vb * (cfg.hybrid_lambda * 100.0), 1e-4, 1e-7));
}

// Weighted MSE on x0, v or the score equals the eps-MSE (weighting "snr"), and min-SNR-gamma caps it.
TEST(Losses, SnrWeightsExpressLossesInEpsilonUnits) {
  torch::manual_seed(5);
  auto x0 = torch::rand({6, 1, 3, 3}, torch::kFloat64) * 2 - 1;
  auto eps = torch::randn_like(x0);
  auto t = torch::tensor({0, 5, 50, 200, 700, 999}, torch::kLong);
  auto base = make_diffusion(ScheduleKind::Linear, 1000);
  auto x_t = base.q_sample(x0, t, eps);
  auto err_x0 = 0.05 * torch::randn_like(x0);  // the same mistake on x0, seen by each parameterisation
  auto n = base.level(t, x0);
  auto eps_mse = mean_flat((eps_from_x0(x_t, x0 + err_x0, n) - eps).pow(2));
  for (auto p : {Prediction::X0, Prediction::V, Prediction::Score, Prediction::Edm}) {
    auto d = make_diffusion(ScheduleKind::Linear, 1000, VarianceType::FixedSmall, p);
    auto wrong_x0 = x0 + err_x0;
    auto wrong_eps = eps_from_x0(x_t, wrong_x0, n);
    // EDM's F = (D - c_skip x) / c_out in x = x_t / a, sigma = s / a, sigma_data 0.5 (Table 1).
    auto sigma = n.s / n.a, root = torch::sqrt(sigma * sigma + 0.25);
    auto edm_f = (wrong_x0 - 0.25 / (root * root) * (x_t / n.a)) / (sigma * 0.5 / root);
    auto out = p == Prediction::X0    ? wrong_x0
               : p == Prediction::V   ? v_from_x0_eps(wrong_x0, wrong_eps, n)
               : p == Prediction::Edm ? edm_f
                                      : score_from_eps(wrong_eps, n);
    LossConfig cfg;
    cfg.weighting = LossWeighting::Snr;
    auto l = training_losses(d, cfg, out, x0, x_t, t, eps);
    EXPECT_TRUE(torch::allclose(l.mse.to(torch::kFloat64), eps_mse, 1e-4, 1e-6)) << to_string(p);
    cfg.weighting = LossWeighting::MinSnr;
    cfg.min_snr_gamma = 5.0;
    auto m = training_losses(d, cfg, out, x0, x_t, t, eps);
    // min-SNR: the eps-equivalent loss times min(snr, gamma) / snr.
    auto snr = d.schedule().gather(d.schedule().snr(), t, eps_mse);
    EXPECT_TRUE(torch::allclose(m.mse.to(torch::kFloat64), eps_mse * torch::clamp_max(snr, 5.0) / snr, 1e-4, 1e-6));
  }
  // Epsilon prediction: its MSE is already in epsilon units; min-SNR scales it by min(snr, gamma) / snr.
  auto d = make_diffusion(ScheduleKind::Linear, 1000);
  LossConfig cfg;
  cfg.weighting = LossWeighting::MinSnr;
  cfg.min_snr_gamma = 5.0;
  auto m = training_losses(d, cfg, eps_from_x0(x_t, x0 + err_x0, n), x0, x_t, t, eps);
  auto snr = d.schedule().gather(d.schedule().snr(), t, eps_mse).reshape({-1});
  EXPECT_TRUE(torch::allclose(m.mse.to(torch::kFloat64), eps_mse * torch::clamp_max(snr, 5.0) / snr, 1e-4, 1e-6));
  // Where snr > gamma the weight is below one, where snr < gamma it is one.
  EXPECT_LT(m.mse[1].item<double>(), eps_mse[1].item<double>());
  EXPECT_NEAR(m.mse[5].item<double>(), eps_mse[5].item<double>(), 1e-9);
}

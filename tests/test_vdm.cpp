// The continuous gamma schedule and the VDM bound (gamma_schedule.h, vdm.h) against closed forms
// for Gaussian data, the existing discrete ELBO machinery, and autograd written another way.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "diffuse/diffusion.h"
#include "diffuse/eval/bpd.h"
#include "diffuse/gamma_schedule.h"
#include "diffuse/losses.h"
#include "diffuse/schedule.h"
#include "diffuse/timestep_sampler.h"
#include "diffuse/vdm.h"

namespace diffuse {
namespace {

const double kLn2 = std::log(2.0);

GammaSpec spec_of(GammaKind kind, int64_t hidden = 64) { return {kind, -13.3, 5.0, hidden}; }

// Every parameter of the learned schedule drawn at random (wide), so its shape bends far from a line.
void randomize(GammaSchedule& g, double scale = 2.0) {
  torch::NoGradGuard no_grad;
  for (auto& p : g.named_parameters()) {
    if (p.key() == "gamma0" || p.key() == "gamma1") continue;
    p.value().copy_(torch::randn(p.value().sizes()) * scale);
  }
}

// A strongly bent learned shape: hidden units that all switch near t = 0.2 and outweigh the
// linear part, so gamma climbs early and flattens.
void bend(GammaSchedule& g) {
  torch::NoGradGuard no_grad;
  for (auto& p : g.named_parameters()) {
    auto& v = p.value();
    if (p.key() == "l1_weight" || p.key() == "l1_bias") v.fill_(0.0);  // h = softplus(0) t = 0.69 t
    if (p.key() == "l2_weight") v.fill_(10.0);                         // u = 10 h + b, switching at h = 0.15
    if (p.key() == "l2_bias") v.fill_(-1.5);
    if (p.key() == "l3_weight") v.fill_(5.0);
  }
}

// Data x ~ N(mu, s^2) in every dimension: with z = alpha x + sigma eps the optimal eps predictor
// is E[eps | z] = sigma (z - alpha mu) / (alpha^2 s^2 + sigma^2), and E||eps - E[eps|z]||^2 =
// D s^2 SNR / (s^2 SNR + 1).
struct GaussianData {
  double mu = 0.3, s = 0.5;
  int64_t dims = 16;
  GammaModelFn exact_eps() const {
    return [mu = mu, s = s](const torch::Tensor& z, const torch::Tensor& gamma) {
      auto g = gamma.reshape({-1, 1}).to(torch::kFloat64);
      auto a2 = torch::sigmoid(-g), s2 = torch::sigmoid(g);
      return (s2.sqrt() * (z.to(torch::kFloat64) - a2.sqrt() * mu) / (a2 * s * s + s2)).to(z.scalar_type());
    };
  }
  torch::Tensor draw(int64_t n) const { return torch::randn({n, dims}, torch::kFloat64) * s + mu; }
  // E[||eps - eps_hat||^2] / 2 per unit of gamma, in nats: D s^2 SNR / (s^2 SNR + 1) / 2.
  double integrand(double gamma) const { return 0.5 * dims * s * s / (s * s + std::exp(gamma)); }
  // The continuous loss: 1/2 D [log(1 + s^2 e^-g0) - log(1 + s^2 e^-g1)] nats (the antiderivative
  // of the integrand in gamma is g - log(s^2 + e^g)).
  double continuous_nats(double g0, double g1) const {
    return 0.5 * dims * (std::log1p(s * s * std::exp(-g0)) - std::log1p(s * s * std::exp(-g1)));
  }
};

// Mean and standard error of the per-example diffusion loss (nats per example) over n examples.
std::pair<double, double> mc_diffusion_nats(const GammaSchedule& g, const GaussianData& data, int64_t n,
                                            const VdmOptions& o) {
  torch::NoGradGuard no_grad;
  const auto x = data.draw(n);
  const auto t = draw_times(n, /*antithetic=*/false);
  const auto eps = torch::randn_like(x);
  const auto l = vdm_loss(g, data.exact_eps(), x, t, eps, eps, o).diffusion * (kLn2 * data.dims);
  return {l.mean().item<double>(), (l.std() / std::sqrt(static_cast<double>(n))).item<double>()};
}

TEST(GammaSchedule, LearnedIsStrictlyIncreasingWithExactEndsForRandomWeights) {
  torch::manual_seed(1);
  for (int trial = 0; trial < 5; ++trial) {
    GammaSchedule g(spec_of(GammaKind::Learned));
    randomize(g, 3.0);
    const auto gamma = g.at(torch::linspace(0.0, 1.0, 2001, torch::kFloat64)).gamma;
    EXPECT_GT((gamma.slice(0, 1) - gamma.slice(0, 0, -1)).min().item<double>(), 0.0) << "trial " << trial;
    EXPECT_NEAR(gamma[0].item<double>(), -13.3, 1e-5);
    EXPECT_NEAR(gamma[-1].item<double>(), 5.0, 1e-5);
  }
}

TEST(GammaSchedule, AutogradDerivativeMatchesCentralDifferences) {
  torch::manual_seed(2);
  for (const auto& name : gamma_kind_names()) {
    const auto kind = parse_gamma_kind(name);
    GammaSchedule g(spec_of(kind));
    randomize(g);
    const auto t = torch::tensor({0.01, 0.2, 0.5, 0.77, 0.99}, torch::kFloat64);
    const double h = 1e-6;
    const auto fd = (g.at(t + h).gamma - g.at(t - h).gamma) / (2 * h);
    const auto ad = g.at(t, /*derivative=*/true).derivative;
    EXPECT_TRUE(torch::allclose(ad, fd, 1e-6, 1e-6)) << to_string(kind) << ": " << ad << " vs " << fd;
  }
}

// gamma_kind_shape against what each kind computes: a line is g0 + (g1 - g0) t exactly, a curve
// leaves that line by more than a unit of gamma and trains nothing, a network trains more than
// its two ends.
TEST(GammaSchedule, ShapeSaysHowGammaGoesBetweenItsEnds) {
  torch::manual_seed(3);
  const auto t = torch::linspace(0.0, 1.0, 101, torch::kFloat64);
  for (const auto& name : gamma_kind_names()) {
    const auto kind = parse_gamma_kind(name);
    GammaSchedule g(spec_of(kind));
    randomize(g);
    const double g0 = g.gamma0().item<double>(), g1 = g.gamma1().item<double>();
    const double off_line = (g.at(t).gamma - (g0 + (g1 - g0) * t)).abs().max().item<double>();
    const auto trained = g.parameters().size();
    switch (gamma_kind_shape(kind)) {
      case GammaShape::Line:
        EXPECT_LT(off_line, 1e-9) << name;
        EXPECT_EQ(g.has_shape(), false) << name;
        break;
      case GammaShape::Curve:
        EXPECT_GT(off_line, 1.0) << name;
        EXPECT_EQ(trained, 0u) << name;
        break;
      case GammaShape::Network:
        EXPECT_GT(trained, 2u) << name;
        EXPECT_TRUE(g.has_shape()) << name;
        break;
    }
  }
}

TEST(GammaSchedule, DiscreteViewHoldsSigmoidOfMinusGammaAndFeedsGamma) {
  torch::manual_seed(3);
  GammaSchedule g(spec_of(GammaKind::Learned));
  randomize(g);
  const int64_t T = 50;
  const auto sched = discretize(g, T);
  ASSERT_EQ(sched.num_timesteps(), T + 1);
  const auto gamma = g.at(torch::linspace(0.0, 1.0, T + 1, torch::kFloat64)).gamma;
  for (int64_t i = 0; i <= T; ++i) {
    const double gi = gamma[i].item<double>();
    EXPECT_NEAR(sched.alpha_bar()[static_cast<size_t>(i)], 1.0 / (1.0 + std::exp(gi)), 1e-13) << i;
    EXPECT_NEAR(sched.log_snr()[static_cast<size_t>(i)], -gi, 1e-8) << i;
    EXPECT_DOUBLE_EQ(sched.model_time()[static_cast<size_t>(i)], gi) << i;
  }
  // Respacing keeps the network's time of each kept step.
  const auto kept = sched.respace(std::vector<int64_t>{0, 10, 50});
  EXPECT_DOUBLE_EQ(kept.model_time()[1], sched.model_time()[10]);
}

// The cosine and linear-beta kinds are the discrete schedules seen through their SNR: at the
// discrete schedule's step i (time tau = (i + 1) / T), the kind's gamma at the t that maps to
// that tau (tau linear in t between the taus of the ends) is the step's -log SNR. Exact for
// cosine (improved-diffusion's alpha_bar is f(tau) / f(0) up to the rounding of the betas'
// product). For DDPM's linear betas, q = -log alpha_bar of the VP SDE (the integral of beta(tau))
// differs from the discrete sum of -log(1 - beta_j) by the Riemann sum's error, at most
// (b1 - b0) (i + 1) / (2 T^2), plus the O(beta^2) terms of -log(1 - beta), below 1.1% of q as
// beta <= 0.02.
TEST(GammaSchedule, CosineAndLinearBetaKindsAreTheDiscreteSchedulesSnr) {
  const int64_t T = 1000;
  for (const auto& [kind, discrete] :
       {std::pair{GammaKind::Cosine, ScheduleKind::Cosine}, std::pair{GammaKind::LinearBeta, ScheduleKind::Linear}}) {
    GammaSchedule g(spec_of(kind));
    EXPECT_FALSE(g.learnable());
    EXPECT_TRUE(g.parameters().empty());
    ScheduleSpec ds;
    ds.kind = discrete;
    ds.timesteps = T;
    const auto sched = NoiseSchedule::from_spec(ds);
    // The kind's span: its ends exact, strictly increasing between.
    const auto grid = g.at(torch::linspace(0.0, 1.0, 4001, torch::kFloat64)).gamma;
    EXPECT_NEAR(grid[0].item<double>(), -13.3, 1e-9) << to_string(kind);
    EXPECT_NEAR(grid[-1].item<double>(), 5.0, 1e-9) << to_string(kind);
    EXPECT_GT((grid.slice(0, 1) - grid.slice(0, 0, -1)).min().item<double>(), 0.0) << to_string(kind);
    // tau at the ends by the textbook inverses (acos; the quadratic formula), then t linear in tau.
    const bool cosine = kind == GammaKind::Cosine;  // a structured binding is not capturable in C++17
    auto tau_of = [cosine](double g) {
      const double sig_neg = 1.0 / (1.0 + std::exp(g));  // alpha^2 at gamma g
      if (cosine) {
        const double s = 0.008, f0 = std::pow(std::cos(s / (1 + s) * M_PI / 2), 2);
        return std::acos(std::sqrt(f0 * sig_neg)) * (1 + s) * 2 / M_PI - s;
      }
      const double q = -std::log(sig_neg), b0 = 0.1, d = 19.9;
      return (-b0 + std::sqrt(b0 * b0 + 2 * d * q)) / d;
    };
    const double tau0 = tau_of(-13.3), tau1 = tau_of(5.0);
    const auto& log_snr = sched.log_snr();
    const auto& abar = sched.alpha_bar();
    int64_t checked = 0;
    for (int64_t i = 0; i < T; ++i) {
      const double t = (static_cast<double>(i + 1) / T - tau0) / (tau1 - tau0);
      if (t < 0 || t > 1) continue;
      const double gamma = g.at(torch::full({1}, t, torch::kFloat64)).gamma.item<double>();
      if (kind == GammaKind::Cosine) {
        EXPECT_NEAR(gamma, -log_snr[static_cast<size_t>(i)], 1e-6) << "step " << i;
      } else {
        const double q = std::log1p(std::exp(gamma)), q_discrete = -std::log(abar[static_cast<size_t>(i)]);
        EXPECT_NEAR(q, q_discrete, 19.9 * static_cast<double>(i + 1) / (2.0 * T * T) + 0.011 * q_discrete)
            << "step " << i;
      }
      ++checked;
    }
    EXPECT_GT(checked, 500) << to_string(kind);
  }
}

TEST(GammaSchedule, RefusesEndsOutOfOrder) {
  EXPECT_THROW(GammaSchedule({GammaKind::Linear, 5.0, -13.3, 8}), std::exception);
}

TEST(Vdm, ContinuousLossOfTheExactDenoiserMatchesItsClosedFormAndQuadrature) {
  torch::manual_seed(4);
  GaussianData data;
  GammaSchedule g(spec_of(GammaKind::Linear));
  const double exact = data.continuous_nats(-13.3, 5.0);
  // Simpson's rule on gamma'(t) times the integrand over t in [0, 1].
  const int64_t n = 2000;
  const auto t = torch::linspace(0.0, 1.0, n + 1, torch::kFloat64);
  const auto at = g.at(t, true);
  double quad = 0;
  for (int64_t i = 0; i <= n; ++i) {
    const double w = (i == 0 || i == n) ? 1 : (i % 2 ? 4 : 2);
    quad += w * at.derivative[i].item<double>() * data.integrand(at.gamma[i].item<double>());
  }
  quad /= 3.0 * n;
  EXPECT_NEAR(quad, exact, 1e-6 * exact);
  // Monte Carlo over 100k examples: within 4 standard errors.
  const auto [mean, se] = mc_diffusion_nats(g, data, 100000, {});
  EXPECT_NEAR(mean, exact, 4 * se) << "mean " << mean << " se " << se << " exact " << exact;
  EXPECT_LT(se, 0.03 * exact);
}

TEST(Vdm, DiscreteLossMatchesItsExactSumAndApproachesTheContinuousOneAtRateOneOverT) {
  torch::manual_seed(5);
  GaussianData data;
  GammaSchedule g(spec_of(GammaKind::Linear));
  auto exact_sum = [&](int64_t T) {
    double sum = 0;
    for (int64_t i = 1; i <= T; ++i) {
      const double gt = -13.3 + 18.3 * i / T, gs = -13.3 + 18.3 * (i - 1) / T;
      sum += std::expm1(gt - gs) * data.integrand(gt);  // 1/2 expm1 E||eps - eps_hat||^2 at t
    }
    return sum;
  };
  const double inf = data.continuous_nats(-13.3, 5.0);
  // The T-step loss exceeds the continuous one by O(1/T): doubling T halves the excess.
  double prev = exact_sum(400) - inf;
  for (const int64_t T : {800, 1600}) {
    const double excess = exact_sum(T) - inf;
    EXPECT_GT(excess, 0.0);
    EXPECT_NEAR(prev / excess, 2.0, 0.05) << "T = " << T;
    prev = excess;
  }
  for (const int64_t T : {10, 1000}) {
    VdmOptions o;
    o.timesteps = T;
    const auto [mean, se] = mc_diffusion_nats(g, data, 100000, o);
    EXPECT_NEAR(mean, exact_sum(T), 4 * se) << "T = " << T;
  }
}

TEST(Vdm, ContinuousLossDependsOnTheScheduleOnlyThroughItsEnds) {
  torch::manual_seed(6);
  GaussianData data;
  const double exact = data.continuous_nats(-13.3, 5.0);
  GammaSchedule line(spec_of(GammaKind::Linear));
  GammaSchedule bent(spec_of(GammaKind::Learned));
  bend(bent);
  // The bent schedule really is another schedule: its midpoint is far from the line's.
  const auto mid = torch::tensor({0.5}, torch::kFloat64);
  EXPECT_GT(std::abs(bent.at(mid).gamma.item<double>() - line.at(mid).gamma.item<double>()), 1.0);
  for (const GammaSchedule* g : {&line, &bent}) {
    const auto [mean, se] = mc_diffusion_nats(*g, data, 100000, {});
    EXPECT_NEAR(mean, exact, 4 * se) << to_string(g->spec().kind);
  }
  // So do the cosine and linear-beta schedules' SNR between the same ends.
  for (const auto kind : {GammaKind::Cosine, GammaKind::LinearBeta}) {
    const auto [mean, se] = mc_diffusion_nats(GammaSchedule(spec_of(kind)), data, 30000, {});
    EXPECT_NEAR(mean, exact, 4 * se) << to_string(kind);
  }
  // Other ends, another value: the bound does see the ends.
  GammaSchedule shorter({GammaKind::Linear, -8.0, 5.0, 1});
  const auto [mean, se] = mc_diffusion_nats(shorter, data, 50000, {});
  EXPECT_NEAR(mean, data.continuous_nats(-8.0, 5.0), 4 * se);
  EXPECT_GT(std::abs(mean - exact), 20 * se);
}

// The discrete T-step loss on a linear gamma, term by term and summed, equals calc_bpd_loop's
// KL terms on the discrete view of the same schedule, for the same model and noise.
TEST(Vdm, DiscreteLossEqualsTheDiscreteElboOnTheEquivalentBetaSchedule) {
  torch::manual_seed(7);
  const int64_t T = 1000;
  GammaSchedule g(spec_of(GammaKind::Linear));
  const GaussianDiffusion diffusion(discretize(g, T), Prediction::Epsilon, VarianceType::FixedSmall);
  // A fixed nonlinear "network" of (z, gamma): the same function for both, fed gamma by both.
  auto model = [](const torch::Tensor& z, const torch::Tensor& gamma) {
    return torch::tanh(0.7 * z + 0.05 * gamma.to(z.scalar_type()).reshape({-1, 1, 1, 1}));
  };
  const auto x0 = (torch::randint(0, 256, {3, 1, 4, 4}, torch::kFloat64) / 127.5 - 1.0);
  std::vector<torch::Tensor> noise;
  for (int64_t t = 0; t <= T; ++t) noise.push_back(torch::randn({3, 1, 4, 4}, torch::kFloat64));
  BpdOptions bo;
  bo.clip_x0 = false;
  bo.noise = [&](int64_t t) { return noise[static_cast<size_t>(t)]; };
  const auto ref = calc_bpd_loop(diffusion, model, x0, {}, bo);

  VdmOptions o;
  o.timesteps = T;
  auto sum = torch::zeros({3}, torch::kFloat64);
  for (int64_t i = 1; i <= T; ++i) {
    const auto t = torch::full({3}, static_cast<double>(i) / T, torch::kFloat64);
    const auto term = vdm_loss(g, model, x0, t, noise[static_cast<size_t>(i)], noise[0], o).diffusion / T;
    if (i == 1 || i == 2 || i == 500 || i == T) {
      EXPECT_TRUE(torch::allclose(term, ref.terms.select(1, i), 1e-6, 1e-12))
          << "step " << i << ": " << term << " vs " << ref.terms.select(1, i);
    }
    sum += term;
  }
  EXPECT_TRUE(torch::allclose(sum, ref.diffusion, 1e-6, 0)) << sum << " vs " << ref.diffusion;
  EXPECT_TRUE(torch::allclose(vdm_prior_bpd(g, x0), ref.prior, 1e-9, 1e-15));
}

TEST(Vdm, PriorIsTheGaussianKlInClosedForm) {
  GammaSchedule g({GammaKind::Linear, -5.0, 1.5, 1});
  const auto x = torch::tensor({{0.5, -1.0, 0.0, 1.0}}, torch::kFloat64);
  const double a2 = 1.0 / (1.0 + std::exp(1.5)), s2 = 1.0 - a2;
  double kl = 0;
  for (double v : {0.5, -1.0, 0.0, 1.0}) kl += 0.5 * (s2 + a2 * v * v - std::log(s2) - 1.0);
  EXPECT_NEAR(vdm_prior_bpd(g, x).item<double>(), kl / 4 / kLn2, 1e-14);
}

void decoders_are_normalised(const GammaSchedule& g, double ratio);

// p(x | z_0) over the 256 values sums to one for a fixed z_0 (both decoders), and the VDM decoder's
// probabilities follow Bayes' rule with a uniform prior over the values: p(v | z_0) proportional
// to N(z_0 / alpha_0; v, sigma_0^2 / alpha_0^2).
TEST(Vdm, DecodersAreNormalisedOverThe256Values) {
  for (const double g0 : {-6.0, -13.3, 2.0}) {  // windows of 58, 3 and all 256 values
    GammaSchedule g({GammaKind::Linear, g0, 5.0, 1});
    decoders_are_normalised(g, std::exp(g0 / 2));
  }
}

void decoders_are_normalised(const GammaSchedule& g, double ratio) {  // ratio = sigma_0 / alpha_0
  const auto values = torch::arange(256, torch::kFloat64) / 127.5 - 1.0;
  for (const double r : {-1.2, -0.31, 0.0, 0.4567, 0.999, 1.01}) {
    const auto x = values.reshape({256, 1});
    const auto noise = (r - x) / ratio;  // every x's draw lands on the same z_0 / alpha_0 = r
    for (const auto dec : {VdmDecoder::Vdm, VdmDecoder::Gaussian}) {
      const auto bits = vdm_recon_bpd(g, x, noise, dec);
      const double total = torch::exp2(-bits).sum().item<double>();
      EXPECT_NEAR(total, 1.0, 1e-9) << to_string(dec) << " r = " << r << " sigma_0/alpha_0 = " << ratio;
    }
    // Bayes by hand for one value.
    double norm = 0;
    for (int k = 0; k < 256; ++k) norm += std::exp(-0.5 * std::pow((r - (k / 127.5 - 1.0)) / ratio, 2));
    const double v = 100 / 127.5 - 1.0;
    const double p = std::exp(-0.5 * std::pow((r - v) / ratio, 2)) / norm;
    const auto bits = vdm_recon_bpd(g, torch::full({1, 1}, v, torch::kFloat64),
                                    torch::full({1, 1}, (r - v) / ratio, torch::kFloat64), VdmDecoder::Vdm);
    if (p > 1e-300) {  // else the probability underflows in the hand computation, not in the decoder's
      EXPECT_NEAR(bits.item<double>(), -std::log2(p), 1e-9 * std::max(1.0, -std::log2(p))) << r;
    }
  }
}

// The shape's gradient from one backward pass of the bound equals the gradient of the mean
// squared diffusion loss computed directly; the ends keep the bound's own gradient.
TEST(Vdm, VarianceObjectiveRoutesTheGradientOfTheSquaredLossToTheShape) {
  torch::manual_seed(8);
  GaussianData data;
  GammaSchedule g(spec_of(GammaKind::Learned, 16));
  randomize(g, 1.0);
  const auto x = data.draw(64);
  const auto t = draw_times(64, true);
  const auto eps = torch::randn_like(x);
  auto grads = [&](bool variance, bool square) {
    g.zero_grad();
    VdmOptions o;
    o.variance_objective = variance;
    const auto l = vdm_loss(g, data.exact_eps(), x, t, eps, eps, o).diffusion;
    (square ? l.pow(2).mean() : l.mean()).backward();
    std::map<std::string, torch::Tensor> out;
    for (const auto& p : g.named_parameters()) out[p.key()] = p.value().grad().clone();
    return out;
  };
  const auto trick = grads(true, false), squared = grads(false, true), plain = grads(false, false);
  for (const auto& [name, grad] : trick) {
    const bool end = name == "gamma0" || name == "gamma1";
    const auto& want = end ? plain.at(name) : squared.at(name);
    EXPECT_TRUE(torch::allclose(grad, want, 1e-5, 1e-9)) << name << ": " << grad << " vs " << want;
  }
}

// Trained on the variance objective alone (ends fixed), the learned shape lowers the measured
// variance of the per-example diffusion loss against the fixed line, and leaves its mean alone.
TEST(Vdm, LearnedShapeLowersTheLossVarianceAgainstTheFixedLine) {
  torch::manual_seed(9);
  GaussianData data;
  GammaSchedule line(spec_of(GammaKind::Linear));
  GammaSchedule learned(spec_of(GammaKind::Learned, 32));
  std::vector<torch::Tensor> shape_params;
  for (const auto& p : learned.named_parameters())
    if (p.key() != "gamma0" && p.key() != "gamma1") shape_params.push_back(p.value());
  torch::optim::Adam opt(shape_params, torch::optim::AdamOptions(3e-2));
  for (int step = 0; step < 300; ++step) {
    const auto x = data.draw(256);
    const auto eps = torch::randn_like(x);
    opt.zero_grad();
    vdm_loss(learned, data.exact_eps(), x, draw_times(256, true), eps, eps, {}).diffusion.mean().backward();
    opt.step();
  }
  auto stats = [&](const GammaSchedule& g) {
    torch::NoGradGuard no_grad;
    const auto x = data.draw(100000);
    const auto eps = torch::randn_like(x);
    const auto l = vdm_loss(g, data.exact_eps(), x, draw_times(100000, false), eps, eps, {}).diffusion;
    return std::make_pair(l.mean().item<double>(), l.var().item<double>());
  };
  const auto [m_line, v_line] = stats(line);
  const auto [m_learned, v_learned] = stats(learned);
  EXPECT_LT(v_learned, 0.5 * v_line) << "variance " << v_learned << " vs the line's " << v_line;
  // Means agree within 4 standard errors of the difference (the ends did not move).
  EXPECT_NEAR(m_learned, m_line, 4 * std::sqrt((v_line + v_learned) / 100000));
}

}  // namespace
}  // namespace diffuse

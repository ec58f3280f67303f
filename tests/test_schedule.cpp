#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>

#include "diffuse/error.h"
#include "diffuse/schedule.h"
#include "test_util.h"

using namespace diffuse;

namespace {
NoiseSchedule make(ScheduleKind kind, int64_t T) {
  ScheduleSpec s;
  s.kind = kind;
  s.timesteps = T;
  return NoiseSchedule::from_spec(s);
}
}  // namespace

// alpha_bar_T of DDPM's linear schedule has a closed form through the Gamma function:
// 1 - beta_k = c - k d with c = 1 - beta_1, d = (beta_T - beta_1)/(T - 1), so
// prod_{k=0}^{T-1} (c - k d) = d^T Gamma(c/d + 1) / Gamma(c/d - T + 1).
TEST(Schedule, LinearAlphaBarMatchesGammaClosedForm) {
  for (int64_t T : {1000, 4000, 100}) {
    const auto s = make(ScheduleKind::Linear, T);
    const double scale = 1000.0 / T, b0 = 1e-4 * scale, b1 = 0.02 * scale;
    const double c = 1.0 - b0, d = (b1 - b0) / (T - 1);
    for (int64_t t : {int64_t{0}, T / 3, T / 2, T - 1}) {
      const double n = static_cast<double>(t + 1);
      const double log_prod = n * std::log(d) + std::lgamma(c / d + 1.0) - std::lgamma(c / d - n + 1.0);
      // lgamma of arguments ~1e5 carries ~1e-10 absolute error, hence 1e-8.
      EXPECT_NEAR(std::log(s.alpha_bar()[t]), log_prod, 1e-8) << "T=" << T << " t=" << t;
    }
  }
  // Published: DDPM's linear schedule ends at alpha_bar_T ~= 4.04e-5 (sqrt ~= 0.00635), which is
  // why its prior term L_T is ~1e-5 bits/dim.
  const auto s = make(ScheduleKind::Linear, 1000);
  EXPECT_NEAR(s.alpha_bar().back(), 4.0358e-5, 0.001e-5);
  EXPECT_DOUBLE_EQ(s.betas().front(), 1e-4);
  EXPECT_DOUBLE_EQ(s.betas().back(), 0.02);
}

// Cosine: alpha_bar_t = f(t+1)/f(0) with f(u) = cos^2((u/T + s)/(1 + s) pi/2) wherever beta is
// under the 0.999 cap (Nichol & Dhariwal eq. 17).
TEST(Schedule, CosineMatchesDefinition) {
  const int64_t T = 1000;
  const auto s = make(ScheduleKind::Cosine, T);
  auto f = [&](double u) {
    const double c = std::cos((u / T + 0.008) / 1.008 * M_PI / 2);
    return c * c;
  };
  for (int64_t t = 0; t < T - 1; t += 37) EXPECT_NEAR(s.alpha_bar()[t], f(t + 1) / f(0), 1e-12) << t;
  EXPECT_DOUBLE_EQ(s.betas().back(), 0.999);  // the cap binds at the last step
  for (double b : s.betas()) EXPECT_LE(b, 0.999);
}

TEST(Schedule, OtherKindsAndZeroTerminalSnr) {
  auto sl = make(ScheduleKind::ScaledLinear, 1000);
  EXPECT_NEAR(sl.betas().front(), 0.00085, 1e-15);
  EXPECT_NEAR(sl.betas().back(), 0.012, 1e-15);
  EXPECT_NEAR(std::sqrt(sl.betas()[500]) - std::sqrt(sl.betas()[499]), (std::sqrt(0.012) - std::sqrt(0.00085)) / 999,
              1e-14);
  auto sg = make(ScheduleKind::Sigmoid, 1000);
  EXPECT_NEAR(sg.betas().front(), 1.0 / (1.0 + std::exp(6.0)) * (0.02 - 1e-4) + 1e-4, 1e-15);
  for (size_t i = 1; i < sg.betas().size(); ++i) EXPECT_GT(sg.betas()[i], sg.betas()[i - 1]);

  ScheduleSpec spec;
  spec.zero_terminal_snr = true;
  auto z = NoiseSchedule::from_spec(spec);
  auto base = make(ScheduleKind::Linear, 1000);
  EXPECT_NEAR(z.alpha_bar().back(), 0.0, 1e-15);
  EXPECT_NEAR(z.snr().back(), 0.0, 1e-15);
  EXPECT_NEAR(z.alpha_bar().front(), base.alpha_bar().front(), 1e-12);  // first value kept
  // Lin et al. (2024), Algorithm 1: sqrt(abar) shifted so the last is 0 and scaled so the first
  // is kept, at every t: sqrt(abar'_t) = (sqrt(abar_t) - sqrt(abar_T)) sqrt(abar_1) / (sqrt(abar_1) - sqrt(abar_T)).
  const double first = std::sqrt(base.alpha_bar().front()), last = std::sqrt(base.alpha_bar().back());
  for (size_t t = 0; t < base.alpha_bar().size(); ++t)
    EXPECT_NEAR(std::sqrt(z.alpha_bar()[t]), (std::sqrt(base.alpha_bar()[t]) - last) * first / (first - last), 1e-12)
        << "t = " << t;
}

TEST(Schedule, DerivedQuantitiesAreConsistent) {
  for (auto kind : {ScheduleKind::Linear, ScheduleKind::Cosine}) {
    const auto s = make(kind, 200);
    for (int64_t t = 0; t < 200; ++t) {
      const double ab = s.alpha_bar()[t];
      EXPECT_NEAR(s.sqrt_alpha_bar()[t] * s.sqrt_alpha_bar()[t], ab, 1e-14);
      EXPECT_NEAR(s.sqrt_one_minus_alpha_bar()[t] * s.sqrt_one_minus_alpha_bar()[t], 1 - ab, 1e-14);
      EXPECT_NEAR(std::exp(s.log_one_minus_alpha_bar()[t]), 1 - ab, 1e-14);
      EXPECT_NEAR(s.sqrt_recip_alpha_bar()[t] * s.sqrt_alpha_bar()[t], 1.0, 1e-12);
      EXPECT_NEAR(s.snr()[t], ab / (1 - ab), 1e-9 * (1 + s.snr()[t]));
      EXPECT_NEAR(std::exp(s.log_snr()[t]), s.snr()[t], 1e-9 * s.snr()[t]);
      EXPECT_DOUBLE_EQ(s.alpha_bar_prev()[t], t == 0 ? 1.0 : s.alpha_bar()[t - 1]);
      if (t > 0) {
        EXPECT_NEAR(std::exp(s.posterior_log_variance_clipped()[t]), s.posterior_variance()[t], 1e-15);
      }
    }
    EXPECT_EQ(s.posterior_variance()[0], 0.0);
    EXPECT_DOUBLE_EQ(s.posterior_log_variance_clipped()[0], std::log(s.posterior_variance()[1]));
  }
}

// improved-diffusion's space_timesteps, values worked out by hand from its definition.
TEST(Schedule, SpaceTimestepsMatchesImprovedDiffusion) {
  auto ddim = space_timesteps(1000, "ddim50");
  ASSERT_EQ(ddim.size(), 50u);
  for (size_t i = 0; i < ddim.size(); ++i) EXPECT_EQ(ddim[i], static_cast<int64_t>(20 * i));
  // "10": one section of 1000 steps, stride 999/9 = 111, rounded.
  auto ten = space_timesteps(1000, "10");
  std::vector<int64_t> want{0, 111, 222, 333, 444, 555, 666, 777, 888, 999};
  EXPECT_EQ(ten, want);
  // "2,3" over T=10: sections [0,5) and [5,10): strides 4 and 2.
  EXPECT_EQ(space_timesteps(10, "2,3"), (std::vector<int64_t>{0, 4, 5, 7, 9}));
  // Half-to-even rounding, as Python's round(): T=8, "3" -> stride 3.5 -> 0, round(3.5)=4, round(7)=7.
  EXPECT_EQ(space_timesteps(8, "3"), (std::vector<int64_t>{0, 4, 7}));
  // T=6, "5": stride 1.25 -> 0, 1.25, 2.5, 3.75, 5 -> 0, 1, 2 (half-even), 4, 5.
  EXPECT_EQ(space_timesteps(6, "5"), (std::vector<int64_t>{0, 1, 2, 4, 5}));
  EXPECT_EQ(space_timesteps(1000, "250").size(), 250u);
  EXPECT_THROW(space_timesteps(10, "ddim6"), UsageError);  // strides 1, 2 give 10, 5 steps: never 6
  EXPECT_THROW(space_timesteps(10, "11"), UsageError);
  EXPECT_THROW(space_timesteps(10, "abc"), UsageError);
}

// diffusers' spacings (DDIMScheduler.set_timesteps), by hand.
TEST(Schedule, DiffusersSpacings) {
  EXPECT_EQ(space_timesteps(1000, "leading:4"), (std::vector<int64_t>{0, 250, 500, 750}));
  EXPECT_EQ(space_timesteps(1000, "trailing:4"), (std::vector<int64_t>{249, 499, 749, 999}));
  EXPECT_EQ(space_timesteps(1000, "linspace:4"), (std::vector<int64_t>{0, 333, 666, 999}));
  EXPECT_EQ(space_timesteps(1000, "trailing:3"), (std::vector<int64_t>{332, 666, 999}));
  EXPECT_EQ(space_timesteps(100, "list:5,0,99"), (std::vector<int64_t>{0, 5, 99}));
  EXPECT_THROW(space_timesteps(100, "list:100"), UsageError);
}

TEST(Schedule, RespacedAlphaBarEqualsOriginalAtKeptSteps) {
  for (auto kind : {ScheduleKind::Linear, ScheduleKind::Cosine}) {
    const auto base = make(kind, 1000);
    for (const char* spec : {"ddim50", "250", "10,15,20", "trailing:25"}) {
      const auto kept = space_timesteps(1000, spec);
      const auto r = base.respace(spec);
      ASSERT_EQ(r.num_timesteps(), static_cast<int64_t>(kept.size()));
      for (size_t i = 0; i < kept.size(); ++i) {
        EXPECT_NEAR(r.alpha_bar()[i], base.alpha_bar()[kept[i]], 1e-13) << spec << " i=" << i;
        EXPECT_EQ(r.original_t()[i], kept[i]);
      }
    }
  }
}

TEST(Schedule, CustomBetasFromListAndFile) {
  test::TempDir dir;
  const auto path = dir.path() / "betas.txt";
  {
    std::ofstream f(path);
    f << "0.1, 0.2\n0.3\n";
  }
  ScheduleSpec spec;
  spec.kind = ScheduleKind::Custom;
  spec.betas_file = path.string();
  auto s = NoiseSchedule::from_spec(spec);
  ASSERT_EQ(s.num_timesteps(), 3);
  EXPECT_NEAR(s.alpha_bar()[2], 0.9 * 0.8 * 0.7, 1e-15);
  spec.betas_file = (dir.path() / "missing.txt").string();
  try {
    NoiseSchedule::from_spec(spec);
    FAIL() << "expected an error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("missing.txt"), std::string::npos);
  }
  spec.betas_file.clear();
  spec.betas = {0.5, 1.5};
  EXPECT_THROW(NoiseSchedule::from_spec(spec), UsageError);
}

TEST(Schedule, GatherReturnsCallerDtypeAndBroadcastShape) {
  const auto s = make(ScheduleKind::Linear, 1000);
  auto x = torch::zeros({3, 2, 4, 4}, torch::kFloat32);
  auto t = torch::tensor({0, 500, 999}, torch::kLong);
  auto g = s.gather(s.alpha_bar(), t, x);
  EXPECT_EQ(g.scalar_type(), torch::kFloat32);
  EXPECT_EQ(g.sizes(), (std::vector<int64_t>{3, 1, 1, 1}));
  EXPECT_FLOAT_EQ(g[1].item<float>(), static_cast<float>(s.alpha_bar()[500]));
  auto g64 = s.gather(s.alpha_bar(), t, x.to(torch::kFloat64));
  EXPECT_EQ(g64[2].item<double>(), s.alpha_bar()[999]);
}

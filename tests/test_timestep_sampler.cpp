#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "diffuse/error.h"
#include "diffuse/timestep_sampler.h"

using namespace diffuse;

TEST(TimestepSampler, UniformWeightsAreOne) {
  UniformTimestepSampler s(50);
  auto gen = at::detail::createCPUGenerator(7);
  auto d = s.sample(1000, torch::kCPU, gen);
  EXPECT_TRUE(torch::all(d.weights == 1.0f).item<bool>());
  EXPECT_GE(d.t.min().item<int64_t>(), 0);
  EXPECT_LE(d.t.max().item<int64_t>(), 49);
}

// After warm-up p(t) is proportional to sqrt(E[L_t^2]) (mixed with a little uniform), and the
// importance-weighted loss stays an unbiased estimate of the uniform mean over t.
TEST(TimestepSampler, ImportanceSamplerIsUnbiasedAndFollowsSecondMoment) {
  const int64_t T = 20;
  ImportanceTimestepSampler s(T, 10, 0.001);
  auto loss_of = [](int64_t t) { return 0.1 + 0.05 * t; };  // deterministic per-t losses
  EXPECT_FALSE(s.warmed_up());
  for (int rep = 0; rep < 10; ++rep) {
    auto t = torch::arange(T, torch::kLong);
    auto l = torch::empty({T}, torch::kFloat64);
    for (int64_t i = 0; i < T; ++i) l[i] = loss_of(i);
    s.update(t, l);
  }
  ASSERT_TRUE(s.warmed_up());
  auto p = s.probabilities();
  double z = 0;
  for (int64_t i = 0; i < T; ++i) z += loss_of(i);
  for (int64_t i = 0; i < T; ++i) EXPECT_NEAR(p[i].item<double>(), loss_of(i) / z * 0.999 + 0.001 / T, 1e-12);
  // Unbiasedness: E[w(t) L(t)] = (1/T) sum_t L(t). Monte Carlo with 5 SE tolerance.
  auto gen = at::detail::createCPUGenerator(11);
  auto d = s.sample(200000, torch::kCPU, gen);
  auto lt = 0.1 + 0.05 * d.t.to(torch::kFloat64);
  auto est = d.weights.to(torch::kFloat64) * lt;
  const double se = est.std().item<double>() / std::sqrt(200000.0);
  EXPECT_NEAR(est.mean().item<double>(), z / T, 5 * se);

  // State round trip.
  ImportanceTimestepSampler r(T, 10, 0.001);
  r.load_state(s.state(), "test");
  EXPECT_TRUE(torch::allclose(r.probabilities(), p));
}

// The weights are the root mean square of the last `history` losses at each t (improved-
// diffusion's LossSecondMomentResampler): losses that change every round and overflow the
// history tell that rule from a mean, a last value or a mean over everything seen.
TEST(TimestepSampler, ImportanceWeightsAreTheRmsOfTheLastHistoryLosses) {
  const int64_t T = 6, H = 4, rounds = 7;
  ImportanceTimestepSampler s(T, H, 0.01);
  auto loss = [](int64_t t, int64_t r) { return (0.2 + 0.1 * t) * (1.0 + r) * (r % 2 ? 2.5 : 1.0); };
  for (int64_t r = 0; r < rounds; ++r) {
    auto l = torch::empty({T}, torch::kFloat64);
    for (int64_t t = 0; t < T; ++t) l[t] = loss(t, r);
    EXPECT_EQ(s.warmed_up(), r >= H);
    s.update(torch::arange(T, torch::kLong), l);
  }
  std::vector<double> w(T);
  double z = 0;
  for (int64_t t = 0; t < T; ++t) {
    double sq = 0;
    for (int64_t r = rounds - H; r < rounds; ++r) sq += loss(t, r) * loss(t, r);
    w[t] = std::sqrt(sq / H);
    z += w[t];
  }
  const auto p = s.probabilities();
  for (int64_t t = 0; t < T; ++t) EXPECT_NEAR(p[t].item<double>(), w[t] / z * 0.99 + 0.01 / T, 1e-12) << t;
  // One t updated alone moves only its own history.
  s.update(torch::tensor({2}, torch::kLong), torch::tensor({100.0}, torch::kFloat64));
  double sq = 0;
  for (int64_t r = rounds - H + 1; r < rounds; ++r) sq += loss(2, r) * loss(2, r);
  w[2] = std::sqrt((sq + 100.0 * 100.0) / H);
  z = 0;
  for (auto v : w) z += v;
  const auto q = s.probabilities();
  for (int64_t t = 0; t < T; ++t) EXPECT_NEAR(q[t].item<double>(), w[t] / z * 0.99 + 0.01 / T, 1e-12) << t;
}

// A saved state is checked before any of it is used (issue 9): a count that is not an integer
// in 0..history (a negative one indexed the ring out of bounds), non-finite losses, or another
// shape are refused naming where the state came from, and the sampler keeps its own state.
TEST(TimestepSampler, ImportanceStateIsValidatedBeforeItIsLoaded) {
  const int64_t T = 4, H = 3;
  ImportanceTimestepSampler s(T, H, 0.001);
  auto good = torch::full({T, H + 1}, 0.5, torch::kFloat64);
  good.select(1, H).fill_(static_cast<double>(H));
  good[2][1] = 2.0;
  s.load_state(good, "checkpoint 'x.pt'");
  ASSERT_TRUE(s.warmed_up());
  const auto p = s.probabilities();
  auto with = [&](int64_t t, int64_t col, double v) {
    auto b = good.clone();
    b[t][col] = v;
    return b;
  };
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  const std::vector<std::pair<torch::Tensor, std::string>> bad = {
      {with(1, H, -1), "count for t = 1 is -1"},
      {with(1, H, H + 1), "not an integer in 0..3"},
      {with(3, H, 1.5), "count for t = 3 is 1.5"},
      {with(0, H, nan), "count for t = 0"},
      {with(2, 0, inf), "loss 0 of t = 2 is inf"},
      {with(0, 2, nan), "loss 2 of t = 0"},
      {torch::zeros({T, H + 2}, torch::kFloat64), "[4, 5]"},
      {torch::zeros({T, H + 1}, torch::kLong), "not floating point"},
      {torch::Tensor(), "shape"}};
  for (const auto& [state, what] : bad) {
    try {
      s.load_state(state, "checkpoint 'x.pt'");
      ADD_FAILURE() << "accepted; expected " << what;
    } catch (const UsageError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("checkpoint 'x.pt': timestep_sampler_state"), std::string::npos) << msg;
      EXPECT_NE(msg.find(what), std::string::npos) << msg;
    }
    EXPECT_TRUE(torch::equal(s.probabilities(), p)) << "a refused state changed the sampler (" << what << ")";
  }
}

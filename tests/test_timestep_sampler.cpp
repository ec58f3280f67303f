#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

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
  for (int64_t i = 0; i < T; ++i)
    EXPECT_NEAR(p[i].item<double>(), loss_of(i) / z * 0.999 + 0.001 / T, 1e-12);
  // Unbiasedness: E[w(t) L(t)] = (1/T) sum_t L(t). Monte Carlo with 5 SE tolerance.
  auto gen = at::detail::createCPUGenerator(11);
  auto d = s.sample(200000, torch::kCPU, gen);
  auto lt = 0.1 + 0.05 * d.t.to(torch::kFloat64);
  auto est = d.weights.to(torch::kFloat64) * lt;
  const double se = est.std().item<double>() / std::sqrt(200000.0);
  EXPECT_NEAR(est.mean().item<double>(), z / T, 5 * se);

  // State round trip.
  ImportanceTimestepSampler r(T, 10, 0.001);
  r.load_state(s.state());
  EXPECT_TRUE(torch::allclose(r.probabilities(), p));
}

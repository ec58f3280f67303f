#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "diffuse/eval/random.h"
#include "diffuse/eval/toy_metrics.h"

using namespace diffuse;

namespace {
torch::Generator seeded(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

double rbf_mmd2_loops(const torch::Tensor& X, const torch::Tensor& Y, double h) {
  auto x = X.accessor<double, 2>();
  auto y = Y.accessor<double, 2>();
  const int64_t n = X.size(0), m = Y.size(0), d = X.size(1);
  auto k = [&](auto a, auto b) {
    double s = 0;
    for (int64_t j = 0; j < d; ++j) s += (a[j] - b[j]) * (a[j] - b[j]);
    return std::exp(-s / (2 * h * h));
  };
  double sxx = 0, syy = 0, sxy = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      if (i != j) sxx += k(x[i], x[j]);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < m; ++j)
      if (i != j) syy += k(y[i], y[j]);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) sxy += k(x[i], y[j]);
  return sxx / (n * (n - 1.0)) + syy / (m * (m - 1.0)) - 2 * sxy / (double(n) * m);
}
}  // namespace

// Shifting a point set by m shifts every projection by theta.m, and sorted matching then gives
// W2^2 = (theta.m)^2 exactly, so SW2^2 = E_theta (theta.m)^2 = |m|^2 / 2 in 2-D. The only error is
// the Monte Carlo over P directions: sd of (theta.m)^2 is |m|^2 / sqrt(8), so SE = |m|^2 / sqrt(8 P).
TEST(EvalToy, SlicedWassersteinOfShiftedCopy) {
  auto a = torch::randn({300, 2}, seeded(1), torch::kFloat64);
  auto m = torch::tensor({1.5, -0.8}, torch::kFloat64);
  const double m2 = m.square().sum().item<double>();
  SlicedWassersteinOptions o;
  o.projections = 2000;
  const double sw = sliced_wasserstein2(a, a + m, o);
  EXPECT_NEAR(sw * sw, m2 / 2, 4 * m2 / std::sqrt(8.0 * o.projections));
  EXPECT_NEAR(sliced_wasserstein2(a, a, o), 0.0, 1e-12);
  // Order of the points does not matter; the seed makes it reproducible.
  auto perm = torch::randperm(300, seeded(2), torch::kLong);
  EXPECT_NEAR(sliced_wasserstein2(a.index_select(0, perm), a + m, o), sw, 1e-12);
  EXPECT_EQ(sliced_wasserstein2(a, a + m, o), sw);
  // float32 input works the same.
  EXPECT_NEAR(sliced_wasserstein2(a.to(torch::kFloat32), (a + m).to(torch::kFloat32), o), sw, 1e-5);
}

// Unequal sample sizes in 1-D (where every direction is +-1): a = {0, 1, 2}, b = {0, 3}. The step
// quantile functions differ by 0 on (0, 1/3], 1 on (1/3, 1/2], 2 on (1/2, 2/3], 1 on (2/3, 1]:
// W2^2 = 1/6 + 4/6 + 1/3 = 7/6.
TEST(EvalToy, SlicedWassersteinUnequalSizesExact) {
  auto a = torch::tensor({2.0, 0.0, 1.0}, torch::kFloat64).view({3, 1});
  auto b = torch::tensor({3.0, 0.0}, torch::kFloat64).view({2, 1});
  SlicedWassersteinOptions o;
  o.projections = 7;
  EXPECT_NEAR(std::pow(sliced_wasserstein2(a, b, o), 2), 7.0 / 6.0, 1e-12);
  EXPECT_NEAR(std::pow(sliced_wasserstein2(b, a, o), 2), 7.0 / 6.0, 1e-12);
  // Equal sizes in 1-D: sorted matching.
  auto c = torch::randn({9, 1}, seeded(3), torch::kFloat64), d = torch::randn({9, 1}, seeded(4), torch::kFloat64) * 2;
  auto sc = std::get<0>(c.view(-1).sort()), sd = std::get<0>(d.view(-1).sort());
  EXPECT_NEAR(std::pow(sliced_wasserstein2(c, d, o), 2), (sc - sd).square().mean().item<double>(), 1e-12);
}

TEST(EvalToy, RandomDirectionsAreUniformUnitVectors) {
  std::mt19937_64 rng(5);
  auto v = random_unit_vectors(rng, 20000, 2);
  EXPECT_LT((v.norm(2, 1) - 1).abs().max().item<double>(), 1e-12);
  // Uniform on the circle: E[x^2] = 1/2, E[x y] = 0 (SE about 0.0025 and 0.0025).
  EXPECT_NEAR(v.select(1, 0).square().mean().item<double>(), 0.5, 0.01);
  EXPECT_NEAR((v.select(1, 0) * v.select(1, 1)).mean().item<double>(), 0.0, 0.01);
  auto s = random_subset(rng, 10, 10);
  EXPECT_TRUE(torch::equal(std::get<0>(s.sort()), torch::arange(10, torch::kLong)));
}

// Unbiased MMD^2 against explicit loops, with a given bandwidth and the median heuristic.
TEST(EvalToy, MmdMatchesLoopsAndMedianHeuristic) {
  auto x = torch::randn({6, 2}, seeded(6), torch::kFloat64);
  auto y = torch::randn({5, 2}, seeded(7), torch::kFloat64) + 0.7;
  MmdOptions o;
  o.bandwidth = 0.8;
  auto r = mmd_rbf(x, y, o);
  EXPECT_NEAR(r.mmd2, rbf_mmd2_loops(x, y, 0.8), 1e-13);
  EXPECT_EQ(r.bandwidth, 0.8);
  // Median heuristic: the (lower) median of the 55 pairwise distances of the 11 pooled points.
  auto z = torch::cat({x, y}, 0);
  std::vector<double> dist;
  for (int64_t i = 0; i < 11; ++i)
    for (int64_t j = i + 1; j < 11; ++j) dist.push_back((z[i] - z[j]).norm().item<double>());
  std::sort(dist.begin(), dist.end());
  const double h = dist[(dist.size() - 1) / 2];
  auto rm = mmd_rbf(x, y);
  EXPECT_NEAR(rm.bandwidth, h, 1e-12);
  EXPECT_NEAR(rm.mmd2, rbf_mmd2_loops(x, y, h), 1e-12);
}

// Same distribution: the mean over independent repeats is 0 within 4 SE. Different: clearly > 0.
TEST(EvalToy, MmdNearZeroForSameDistribution) {
  const int reps = 30;
  std::vector<double> v;
  for (int r = 0; r < reps; ++r) {
    auto x = torch::randn({100, 2}, seeded(100 + r), torch::kFloat64);
    auto y = torch::randn({100, 2}, seeded(200 + r), torch::kFloat64);
    v.push_back(mmd_rbf(x, y).mmd2);
  }
  double mean = 0, ss = 0;
  for (double a : v) mean += a / reps;
  for (double a : v) ss += (a - mean) * (a - mean);
  const double se = std::sqrt(ss / (reps - 1) / reps);
  EXPECT_LT(std::abs(mean), 4 * se) << mean << " SE " << se;
  auto x = torch::randn({100, 2}, seeded(1), torch::kFloat64);
  auto y = torch::randn({100, 2}, seeded(2), torch::kFloat64) + torch::tensor({1.0, 0.0}, torch::kFloat64);
  EXPECT_GT(mmd_rbf(x, y).mmd2, 20 * se);
  EXPECT_THROW(mmd_rbf(x.narrow(0, 0, 1), y), std::invalid_argument);
}

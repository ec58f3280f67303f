#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "diffuse/error.h"
#include "diffuse/eval/precision_recall.h"

using namespace diffuse;

namespace {

torch::Tensor column(std::vector<double> v) { return torch::tensor(v, torch::kFloat64).unsqueeze(1); }

// The definition written out with loops and a sort: point q is inside the manifold of S when
// |q - s| <= (distance from s to its k-th nearest other point of S) for some s in S.
double share_inside_loops(const torch::Tensor& Q, const torch::Tensor& S, int64_t k) {
  auto q = Q.accessor<double, 2>();
  auto s = S.accessor<double, 2>();
  const int64_t nq = Q.size(0), ns = S.size(0), d = Q.size(1);
  auto dist = [d](auto a, auto b) {
    double t = 0;
    for (int64_t j = 0; j < d; ++j) t += (a[j] - b[j]) * (a[j] - b[j]);
    return std::sqrt(t);
  };
  std::vector<double> radius(static_cast<size_t>(ns));
  for (int64_t i = 0; i < ns; ++i) {
    std::vector<double> others;
    for (int64_t j = 0; j < ns; ++j)
      if (j != i) others.push_back(dist(s[i], s[j]));
    std::sort(others.begin(), others.end());
    radius[static_cast<size_t>(i)] = others[static_cast<size_t>(k - 1)];
  }
  int64_t inside = 0;
  for (int64_t a = 0; a < nq; ++a)
    for (int64_t i = 0; i < ns; ++i)
      if (dist(q[a], s[i]) <= radius[static_cast<size_t>(i)]) {
        ++inside;
        break;
      }
  return static_cast<double>(inside) / static_cast<double>(nq);
}

}  // namespace

// Worked by hand on a line with k = 1. Real {0, 1, 2, 3, 10}: radii 1, 1, 1, 1, 7.
// Samples {0.5, 5, 20, 2.9}: 0.5 and 2.9 sit in the unit balls, 5 in 10's ball of radius 7, 20
// in none: precision 3/4. Samples {0.5, 0.6, 2.9, 3.0} have radii 0.1 each: of the real points
// only 3 lies in one (|3 - 3.0| = 0), so recall is 1/5, while every sample is near a real point.
TEST(PrecisionRecall, WorkedExampleOnALine) {
  PrecisionRecallOptions o;
  o.k = 1;
  const auto real = column({0, 1, 2, 3, 10});
  EXPECT_TRUE(torch::allclose(knn_radii(real, 1), torch::tensor({1.0, 1.0, 1.0, 1.0, 7.0}, torch::kFloat64)));
  auto pr = precision_recall(real, column({0.5, 5, 20, 2.9}), o);
  EXPECT_DOUBLE_EQ(pr.precision, 0.75);
  pr = precision_recall(real, column({0.5, 0.6, 2.9, 3.0}), o);
  EXPECT_DOUBLE_EQ(pr.precision, 1.0);
  EXPECT_DOUBLE_EQ(pr.recall, 0.2);
}

// Against the definition computed with loops, on random 5-D sets of unequal sizes, for several k
// and a block smaller than the sets (so the blocked rows are stitched together).
TEST(PrecisionRecall, MatchesTheDefinitionComputedWithLoops) {
  auto g = at::make_generator<at::CPUGeneratorImpl>(7);
  const auto real = torch::randn({150, 5}, g, torch::kFloat64);
  const auto fake = 1.3 * torch::randn({110, 5}, g, torch::kFloat64) + 0.4;
  for (int64_t k : {1, 3, 5}) {
    PrecisionRecallOptions o;
    o.k = k;
    o.block = 32;
    const auto pr = precision_recall(real, fake, o);
    EXPECT_DOUBLE_EQ(pr.precision, share_inside_loops(fake, real, k)) << "k = " << k;
    EXPECT_DOUBLE_EQ(pr.recall, share_inside_loops(real, fake, k)) << "k = " << k;
    EXPECT_GT(pr.precision, 0.2);
    EXPECT_LT(pr.precision, 1.0);
  }
}

// What the metric is for: a model that drops one of two equally likely, well separated modes
// keeps its precision (its samples look real) and loses half its recall. Real: 1000 points, half
// around each of two centres 20 apart in 8-D; samples: 1000 around the first centre only. The real
// points of the dropped mode are all out of reach (20 apart versus radii of ~3), those of the kept
// mode are inside with the probability p that same-distribution points are, so recall = p / 2.
// At k = 3 a plain Python version of the definition gave precision 0.88 and recall 0.44 to 0.45
// on three other seeds; the bounds 0.8 and 0.4 to 0.5 leave several standard errors (each share
// has SE < 0.016 here).
TEST(PrecisionRecall, ADroppedModeCostsRecallNotPrecision) {
  auto g = at::make_generator<at::CPUGeneratorImpl>(11);
  auto shift = torch::zeros({1, 8}, torch::kFloat64);
  shift[0][0] = 20.0;
  const auto real =
      torch::cat({torch::randn({500, 8}, g, torch::kFloat64), torch::randn({500, 8}, g, torch::kFloat64) + shift});
  const auto fake = torch::randn({1000, 8}, g, torch::kFloat64);
  const auto pr = precision_recall(real, fake);
  EXPECT_GT(pr.precision, 0.8);
  EXPECT_GT(pr.recall, 0.4);
  EXPECT_LE(pr.recall, 0.5);
  // The same samples against the kept mode alone cover it about as well as they are covered.
  const auto one_mode = precision_recall(real.slice(0, 0, 500), fake.slice(0, 0, 500));
  EXPECT_GT(one_mode.recall, 0.8);
  EXPECT_NEAR(one_mode.recall, 2.0 * pr.recall, 0.1);
}

TEST(PrecisionRecall, RefusesSetsItCannotMeasure) {
  const auto a = torch::zeros({10, 4}, torch::kFloat64);
  auto refused = [](auto&& f, const char* needle) {
    try {
      f();
      ADD_FAILURE() << "accepted; expected an error naming '" << needle << "'";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  refused([&] { precision_recall(a, torch::zeros({10, 3}, torch::kFloat64)); }, "dimensions differ");
  refused([&] { precision_recall(a, torch::zeros({3, 4}, torch::kFloat64)); }, "3 points, need at least 4");
  refused([&] { precision_recall(a, torch::zeros({10}, torch::kFloat64)); }, "[N, D]");
  PrecisionRecallOptions o;
  o.k = 0;
  refused([&] { precision_recall(a, a, o); }, "k must be >= 1");
}

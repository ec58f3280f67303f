// FLOP counting against the closed forms of each operator, and the shape of the machine's
// ceilings (which ops, dtypes and the best-of rule; their speed is for scripts/bench.sh).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <set>

#include "diffuse/flops.h"

using namespace diffuse;

TEST(Flops, CountsConvolutionsAndMatrixProductsByTheirClosedForms) {
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({2, 3, 8, 8});
  // Each output position multiplies-adds every weight once: 2 * N * H_out * W_out * numel(w).
  EXPECT_DOUBLE_EQ(count_flops([&] { torch::conv2d(x, torch::randn({4, 3, 3, 3}), {}, 1, 1); }), 2.0 * 2 * 64 * 108);
  EXPECT_DOUBLE_EQ(count_flops([&] { torch::conv2d(x, torch::randn({4, 3, 3, 3}), {}, 2); }), 2.0 * 2 * 9 * 108);
  EXPECT_DOUBLE_EQ(count_flops([&] { torch::mm(torch::randn({5, 7}), torch::randn({7, 3})); }), 2.0 * 5 * 7 * 3);
  EXPECT_DOUBLE_EQ(count_flops([&] {
                     torch::bmm(torch::randn({2, 5, 7}), torch::randn({2, 7, 3}));
                   }),
                   2.0 * 2 * 5 * 7 * 3);
  EXPECT_DOUBLE_EQ(count_flops([&] {
                     torch::addmm(torch::zeros({4, 8}), torch::randn({4, 6}), torch::randn({6, 8}));
                   }),
                   2.0 * 4 * 6 * 8);
  EXPECT_DOUBLE_EQ(count_flops([&] { torch::relu(x); }), 0.0);  // only products are counted
}

TEST(Flops, CeilingsCoverEachOpAndDtypeAndTheBestIsTheirMaximum) {
  const auto ceilings = measure_ceilings(/*cuda=*/false, /*seconds=*/0.01);
  std::set<std::string> seen;
  for (const auto& c : ceilings) {
    EXPECT_TRUE(std::isfinite(c.gflops) && c.gflops > 0) << c.op << " " << c.dtype << " " << c.backend;
    seen.insert(c.op + " " + c.dtype);
  }
  EXPECT_EQ(seen, (std::set<std::string>{"matmul fp32", "matmul bf16", "conv3x3 fp32", "conv3x3 bf16"}));
  for (const std::string dtype : {"fp32", "bf16"}) {
    double best = 0;
    for (const auto& c : ceilings)
      if (c.dtype == dtype) best = std::max(best, c.gflops);
    const Ceiling* which = nullptr;
    EXPECT_EQ(best_ceiling(ceilings, dtype, &which), best);
    ASSERT_NE(which, nullptr);
    EXPECT_EQ(which->dtype, dtype);
    EXPECT_EQ(which->gflops, best);
  }
  EXPECT_EQ(best_ceiling(ceilings, "fp64"), 0.0);
}

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <random>

#include "diffuse/rng.h"
#include "diffuse/shape_string.h"

#include <torch/torch.h>

using namespace diffuse;

// SplitMix64 from state 0 (the generator adds the increment, then mixes): the first outputs of
// the published reference generator.
TEST(Rng, SplitMix64MatchesTheReferenceSequence) {
  const std::array<uint64_t, 3> want{0xe220a8397b1dcdafULL, 0x6e789e6aa1b965f4ULL, 0x06c45d188009454fULL};
  uint64_t state = 0;
  for (uint64_t w : want) {
    EXPECT_EQ(splitmix64(state), w);
    state += 0x9e3779b97f4a7c15ULL;
  }
}

// A power of two divides 2^64: every draw is accepted, so the result is the draw mod n and one
// draw is used per call.
TEST(Rng, UniformBelowAPowerOfTwoTakesEveryDraw) {
  std::mt19937_64 a(11), b(11);
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(uniform_below(a, 8), b() % 8);
  EXPECT_EQ(uniform_below(a, uint64_t{1} << 63), b() % (uint64_t{1} << 63));
  EXPECT_EQ(a(), b());
}

// n = 2^63 + 1: 2^64 mod n = 2^63 - 1, so draws of 2^63 + 1 and above are redrawn (about half).
TEST(Rng, UniformBelowRedrawsAboveTheLastWholeMultiple) {
  const uint64_t n = (uint64_t{1} << 63) + 1;
  std::mt19937_64 a(5), b(5);
  int redrawn = 0;
  for (int i = 0; i < 2000; ++i) {
    uint64_t r = b();
    while (r >= n) r = b(), ++redrawn;  // the one multiple of n that fits is n itself
    EXPECT_EQ(uniform_below(a, n), r);
  }
  EXPECT_GT(redrawn, 1700);  // expected ~2000: each draw is redrawn with probability ~1/2
  EXPECT_LT(redrawn, 2300);
  EXPECT_THROW(uniform_below(a, 0), std::invalid_argument);
}

// Uniformity for a small n: chi-square over 7 cells, 70,000 draws. With 6 degrees of freedom the
// statistic exceeds 22.46 with probability 0.001.
TEST(Rng, UniformBelowIsUniform) {
  std::mt19937_64 rng(2026);
  std::array<int, 7> count{};
  const int draws = 70000;
  for (int i = 0; i < draws; ++i) ++count[uniform_below(rng, 7)];
  double chi2 = 0;
  for (int c : count) chi2 += std::pow(c - draws / 7.0, 2) / (draws / 7.0);
  EXPECT_LT(chi2, 22.46);
}

TEST(ShapeString, OneFormatForSizesAndTensors) {
  EXPECT_EQ(shape_string(std::vector<int64_t>{1, 28, 28}), "[1, 28, 28]");
  EXPECT_EQ(shape_string(std::vector<int64_t>{}), "[]");
  EXPECT_EQ(shape_string(torch::zeros({2, 3, 4})), "[2, 3, 4]");
  EXPECT_EQ(shape_string(torch::Tensor()), "undefined");
}

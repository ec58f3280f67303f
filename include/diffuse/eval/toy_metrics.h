// Sample-based distances for low-dimensional toy data (2-D point clouds), where samples from
// the true distribution are at hand: sliced Wasserstein-2 and the kernel MMD.
#pragma once

#include <torch/types.h>

#include <cstdint>

namespace diffuse {

struct SlicedWassersteinOptions {
  int64_t projections = 1000;  // random directions, uniform on the unit sphere
  uint64_t seed = 0;
};

// SW_2(a, b) = ( E_theta W_2^2(theta.a, theta.b) )^(1/2) over random unit directions theta, for
// point sets a [N, D] and b [M, D]. Each 1-D W_2^2 is exact for the two empirical measures:
// the integral over u in (0, 1) of (F_a^-1(u) - F_b^-1(u))^2 with the step quantile functions,
// which for N == M is sorted matching, (1/N) sum_i (a_(i) - b_(i))^2. Computed in float64.
double sliced_wasserstein2(const torch::Tensor& a, const torch::Tensor& b, const SlicedWassersteinOptions& opts = {});

struct MmdOptions {
  // Gaussian RBF kernel k(x, y) = exp(-|x - y|^2 / (2 h^2)) with h = bandwidth; h <= 0 picks the
  // median heuristic: h = median of the pairwise distances in the pooled sample.
  double bandwidth = 0.0;
  int64_t median_max_points = 2000;  // the median uses at most this many pooled points (a seeded random subset)
  uint64_t seed = 0;
};

struct MmdResult {
  double mmd2 = 0;       // unbiased estimate of MMD^2 (can be slightly negative)
  double bandwidth = 0;  // the h used
};

// Unbiased MMD^2 (Gretton et al. 2012, eq. 3) between x [N, D] and y [M, D] (N, M >= 2):
//   sum_{i != j} k(x_i, x_j) / (N(N-1)) + sum_{i != j} k(y_i, y_j) / (M(M-1)) - 2 mean_ij k(x_i, y_j).
// Kernel sums run in row blocks, so memory stays O(block * (N + M)).
MmdResult mmd_rbf(const torch::Tensor& x, const torch::Tensor& y, const MmdOptions& opts = {});

}  // namespace diffuse

#include "diffuse/eval/toy_metrics.h"

#include <fmt/format.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "diffuse/error.h"
#include "diffuse/eval/random.h"

namespace diffuse {

namespace {

void check_points(const torch::Tensor& p, const char* what, const char* name, int64_t min_n) {
  if (!p.defined() || p.dim() != 2 || p.size(1) < 1)
    throw std::invalid_argument(fmt::format("{}: {} must be points [N, D], got [{}]", what, name,
                                            p.defined() ? fmt::format("{}", fmt::join(p.sizes(), ", ")) : ""));
  if (p.size(0) < min_n)
    throw std::invalid_argument(fmt::format("{}: {} needs at least {} points, got {}", what, name, min_n, p.size(0)));
  if (!torch::isfinite(p).all().item<bool>())
    throw std::invalid_argument(fmt::format("{}: {} has non-finite coordinates", what, name));
}

// The pieces of (0, 1] on which both step quantile functions are constant: sample index into
// a, into b, and the piece's length. Positions are integers in units of 1 / (N M), so exact.
struct QuantilePieces {
  torch::Tensor ia, ib, w;
};

QuantilePieces quantile_pieces(int64_t n, int64_t m, const torch::Device& device) {
  std::vector<int64_t> ia, ib;
  std::vector<double> w;
  ia.reserve(static_cast<size_t>(n + m));
  ib.reserve(static_cast<size_t>(n + m));
  w.reserve(static_cast<size_t>(n + m));
  const double total = static_cast<double>(n) * static_cast<double>(m);
  int64_t i = 0, j = 0, prev = 0;
  while (i < n && j < m) {
    const int64_t next_a = (i + 1) * m, next_b = (j + 1) * n;  // ends of a's i-th and b's j-th step
    const int64_t next = std::min(next_a, next_b);
    ia.push_back(i);
    ib.push_back(j);
    w.push_back(static_cast<double>(next - prev) / total);
    prev = next;
    if (next_a == next) ++i;
    if (next_b == next) ++j;
  }
  auto lo = torch::TensorOptions().dtype(torch::kLong);
  return {torch::tensor(ia, lo).to(device), torch::tensor(ib, lo).to(device),
          torch::tensor(w, torch::TensorOptions().dtype(torch::kFloat64)).to(device)};
}

// Sum of k(a_i, b_j) = exp(-gamma |a_i - b_j|^2) over all pairs, leaving out i == j when a is b.
// |a - b|^2 = |a|^2 + |b|^2 - 2 a.b turns the work into a matmul; the caller centres the data, so
// the cancellation error stays ~1e-16 of the squared spread.
torch::Tensor rbf_sum(const torch::Tensor& a, const torch::Tensor& b, double gamma, bool same) {
  const int64_t n = a.size(0);
  const int64_t rows = std::max<int64_t>(1, (int64_t{1} << 22) / std::max<int64_t>(1, b.size(0)));
  auto na = a.square().sum(1), nb = b.square().sum(1);
  auto bt = b.transpose(0, 1);
  auto total = torch::zeros({}, a.options());
  for (int64_t r0 = 0; r0 < n; r0 += rows) {
    const int64_t r = std::min(rows, n - r0);
    auto d2 = torch::addmm(na.narrow(0, r0, r).unsqueeze(1) + nb.unsqueeze(0), a.narrow(0, r0, r), bt, 1.0, -2.0);
    auto k = d2.clamp_min_(0.0).mul_(-gamma).exp_();
    total += k.sum();
    if (same) total -= k.diagonal(r0).sum();  // entries (i, r0 + i): the pairs with themselves
  }
  return total;
}

// Sorts each row of a [P, N] float64 tensor. On the CPU a plain std::sort per row (in parallel)
// is several times faster than torch::sort, which also produces the indices we do not need.
torch::Tensor sort_rows(const torch::Tensor& x) {
  if (!x.is_cpu()) return std::get<0>(x.sort(1));
  auto y = x.contiguous().clone();
  const int64_t P = y.size(0), N = y.size(1);
  double* base = y.data_ptr<double>();
  at::parallel_for(0, P, 16, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) std::sort(base + p * N, base + (p + 1) * N);
  });
  return y;
}

}  // namespace

double sliced_wasserstein2(const torch::Tensor& a, const torch::Tensor& b, const SlicedWassersteinOptions& opts) {
  check_points(a, "sliced_wasserstein2", "a", 1);
  check_points(b, "sliced_wasserstein2", "b", 1);
  if (a.size(1) != b.size(1))
    throw std::invalid_argument(fmt::format("sliced_wasserstein2: dimensions differ ({} vs {})", a.size(1), b.size(1)));
  if (opts.projections < 1)
    throw UsageError(fmt::format("sliced Wasserstein: projections must be >= 1, got {}", opts.projections));
  torch::NoGradGuard no_grad;
  const auto dev = a.device();
  const int64_t n = a.size(0), m = b.size(0), P = opts.projections;
  auto x = a.to(torch::kFloat64);
  auto y = b.to(dev, torch::kFloat64);
  std::mt19937_64 rng(opts.seed);
  auto theta = random_unit_vectors(rng, P, a.size(1), dev);  // [P, D]
  auto pieces = quantile_pieces(n, m, dev);
  const int64_t K = pieces.w.size(0);
  // Projections in chunks so the [chunk, K] gathered differences stay around 4M doubles.
  const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 22) / std::max<int64_t>(1, std::max(K, n + m)));
  auto total = torch::zeros({}, x.options());
  for (int64_t p0 = 0; p0 < P; p0 += chunk) {
    auto th = theta.narrow(0, p0, std::min(chunk, P - p0));
    auto sx = sort_rows(th.matmul(x.transpose(0, 1)));  // [c, N] sorted projections
    auto sy = sort_rows(th.matmul(y.transpose(0, 1)));
    auto d = sx.index_select(1, pieces.ia) - sy.index_select(1, pieces.ib);
    total += (d.square() * pieces.w).sum();
  }
  return std::sqrt(std::max(0.0, total.item<double>() / static_cast<double>(P)));
}

MmdResult mmd_rbf(const torch::Tensor& x, const torch::Tensor& y, const MmdOptions& opts) {
  check_points(x, "mmd_rbf", "x", 2);
  check_points(y, "mmd_rbf", "y", 2);
  if (x.size(1) != y.size(1))
    throw std::invalid_argument(fmt::format("mmd_rbf: dimensions differ ({} vs {})", x.size(1), y.size(1)));
  if (!std::isfinite(opts.bandwidth))
    throw UsageError(fmt::format("MMD: bandwidth {} is not a finite number", opts.bandwidth));
  torch::NoGradGuard no_grad;
  const auto dev = x.device();
  // Centred on the pooled mean (MMD is translation invariant), for the matmul form of |a - b|^2.
  auto a = x.to(torch::kFloat64);
  auto b = y.to(dev, torch::kFloat64);
  auto centre = (a.sum(0) + b.sum(0)) / static_cast<double>(a.size(0) + b.size(0));
  a = a - centre;
  b = b - centre;
  MmdResult r;
  r.bandwidth = opts.bandwidth;
  if (r.bandwidth <= 0) {
    auto pooled = torch::cat({a, b}, 0);
    if (opts.median_max_points >= 2 && pooled.size(0) > opts.median_max_points) {
      std::mt19937_64 rng(opts.seed);
      pooled = pooled.index_select(0, random_subset(rng, pooled.size(0), opts.median_max_points, dev));
    }
    r.bandwidth = torch::pdist(pooled).median().item<double>();
    if (!(r.bandwidth > 0))
      throw std::invalid_argument(
          "mmd_rbf: the median pairwise distance is 0 (most points coincide); give a bandwidth");
  }
  const double gamma = 1.0 / (2.0 * r.bandwidth * r.bandwidth);
  const double n = static_cast<double>(a.size(0)), m = static_cast<double>(b.size(0));
  auto v = rbf_sum(a, a, gamma, true) / (n * (n - 1.0)) + rbf_sum(b, b, gamma, true) / (m * (m - 1.0)) -
           2.0 * rbf_sum(a, b, gamma, false) / (n * m);
  r.mmd2 = v.item<double>();
  return r;
}

}  // namespace diffuse

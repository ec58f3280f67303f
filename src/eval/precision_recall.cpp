#include "diffuse/eval/precision_recall.h"

#include <torch/torch.h>

#include <fmt/format.h>

#include "diffuse/error.h"

namespace diffuse {
namespace {

void check_points(const torch::Tensor& x, const char* what, int64_t min_rows) {
  if (!x.defined() || x.dim() != 2)
    throw UsageError(fmt::format("precision/recall: {} must be a [N, D] feature matrix", what));
  if (x.size(0) < min_rows)
    throw UsageError(fmt::format("precision/recall: {} has {} points, need at least {}", what, x.size(0), min_rows));
}

// Squared Euclidean distances [A, B] in float64: |a|^2 + |b|^2 - 2 a.b, clamped at 0 against
// round-off (exact zeros for identical rows are not needed: a ball contains its own centre).
torch::Tensor squared_distances(const torch::Tensor& a, const torch::Tensor& b) {
  auto aa = a.pow(2).sum(1, true);
  auto bb = b.pow(2).sum(1).unsqueeze(0);
  return (aa + bb - 2.0 * a.matmul(b.t())).clamp_min(0.0);
}

torch::Tensor as_f64(const torch::Tensor& x) { return x.to(torch::kFloat64).contiguous(); }

}  // namespace

torch::Tensor knn_radii(const torch::Tensor& support, int64_t k, int64_t block) {
  if (k < 1) throw UsageError(fmt::format("precision/recall: k must be >= 1, got {}", k));
  check_points(support, "the support set", k + 1);
  torch::NoGradGuard no_grad;
  auto s = as_f64(support);
  const int64_t n = s.size(0);
  auto radii = torch::empty({n}, s.options());
  for (int64_t b = 0; b < n; b += block) {
    const int64_t e = std::min(n, b + block);
    auto d2 = squared_distances(s.slice(0, b, e), s);
    // Each row holds the point itself at distance 0: the k-th other point is the (k+1)-th smallest.
    auto kth = std::get<0>(d2.topk(k + 1, 1, /*largest=*/false, /*sorted=*/true)).select(1, k);
    radii.slice(0, b, e).copy_(kth.sqrt());
  }
  return radii;
}

torch::Tensor inside_manifold(const torch::Tensor& queries, const torch::Tensor& support, const torch::Tensor& radii,
                              int64_t block) {
  check_points(queries, "the query set", 0);
  check_points(support, "the support set", 1);
  if (queries.size(1) != support.size(1))
    throw UsageError(
        fmt::format("precision/recall: the feature dimensions differ ({} vs {})", queries.size(1), support.size(1)));
  if (radii.dim() != 1 || radii.size(0) != support.size(0))
    throw UsageError("precision/recall: one radius per support point is needed");
  torch::NoGradGuard no_grad;
  auto q = as_f64(queries), s = as_f64(support);
  auto r2 = as_f64(radii).pow(2).unsqueeze(0);
  const int64_t n = q.size(0);
  auto inside = torch::empty({n}, q.options().dtype(torch::kBool));
  for (int64_t b = 0; b < n; b += block) {
    const int64_t e = std::min(n, b + block);
    inside.slice(0, b, e).copy_((squared_distances(q.slice(0, b, e), s) <= r2).any(1));
  }
  return inside;
}

PrecisionRecall precision_recall(const torch::Tensor& real, const torch::Tensor& fake,
                                 const PrecisionRecallOptions& opts) {
  check_points(real, "the real set", opts.k + 1);
  check_points(fake, "the sample set", opts.k + 1);
  PrecisionRecall pr;
  auto share = [](const torch::Tensor& inside) { return inside.to(torch::kFloat64).mean().item<double>(); };
  pr.precision = share(inside_manifold(fake, real, knn_radii(real, opts.k, opts.block), opts.block));
  pr.recall = share(inside_manifold(real, fake, knn_radii(fake, opts.k, opts.block), opts.block));
  return pr;
}

}  // namespace diffuse

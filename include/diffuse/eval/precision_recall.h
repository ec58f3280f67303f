// Improved precision and recall of a generative model (Kynkaanniemi et al. 2019): how many
// samples fall inside the real images' feature manifold (precision: samples that look real) and
// how many real images fall inside the samples' manifold (recall: how much of the data the model
// covers). 1 - precision counts the samples off the data's manifold, the broken ones.
#pragma once

#include <torch/types.h>

#include <cstdint>

namespace diffuse {

struct PrecisionRecallOptions {
  int64_t k = 3;         // the manifold is the union of balls reaching each point's k-th neighbour
  int64_t block = 1024;  // distance rows computed at once: memory O(block * N)
};

struct PrecisionRecall {
  double precision = 0;  // share of samples inside the real manifold
  double recall = 0;     // share of real points inside the samples' manifold
};

// Radius of each support point's ball: the distance to its k-th nearest other point of `support`
// ([N, D], N > k), float64 [N].
torch::Tensor knn_radii(const torch::Tensor& support, int64_t k, int64_t block = 1024);

// Whether each query row lies in some support ball: |q - s_i| <= radii_i for some i. Bool [Q].
torch::Tensor inside_manifold(const torch::Tensor& queries, const torch::Tensor& support, const torch::Tensor& radii,
                              int64_t block = 1024);

// Precision and recall of `fake` [M, D] against `real` [N, D], both with more than k rows, in
// float64. The manifolds' radii shrink as their point counts grow, so compare figures measured
// with equal counts (the evaluator draws as many reference points as there are samples).
PrecisionRecall precision_recall(const torch::Tensor& real, const torch::Tensor& fake,
                                 const PrecisionRecallOptions& opts = {});

}  // namespace diffuse

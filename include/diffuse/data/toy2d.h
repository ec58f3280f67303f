// 2-D toy distributions for diffusion experiments, generated from a seed.
//
// Each is centred (its exact mean subtracted) and scaled by one scalar so the average
// per-coordinate variance is exactly 1 ((Var x + Var y) / 2 = 1, shape preserved):
//  - swiss_roll: t = 1.5 pi (1 + 2u), u ~ U(0,1); (t cos t, t sin t) + N(0, 0.5^2 I).
//    E[t cos t] = 2, E[t sin t] = 2 / (3 pi), E[t^2] = 9.75 pi^2 (closed forms over t).
//  - two_moons: scikit-learn's make_moons with noise 0.1: (cos t, sin t) or
//    (1 - cos t, 1/2 - sin t), t ~ U(0, pi), each moon with probability 1/2; label = moon.
//    Mean (1/2, 1/4); Var x = 3/4 + 0.01, Var y = 1/2 - 4/pi^2 + (2/pi - 1/4)^2 + 0.01.
//  - 8gaussians: centres r (cos k pi/4, sin k pi/4), k = 0..7, std r/8 (FFJORD's 4 : 0.5
//    ratio); r^2 (1/2 + 1/64) = 1 makes the variance exactly 1. Label = k.
//  - checkerboard: uniform on the 8 "black" squares ((i + j) even) of a 4x4 board on
//    [-2,2]^2 (FFJORD's), scaled by sqrt(3)/2: each coordinate is uniform on [-sqrt 3, sqrt 3].
// The generator is SplitMix64 with Box-Muller normals, so samples are identical on every
// platform and standard library.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>

#include "diffuse/config.h"
#include "diffuse/data/dataset.h"

namespace diffuse {

struct ToySamples {
  torch::Tensor x;       // float32 [n, 2]
  torch::Tensor labels;  // int64 [n]: component (8gaussians) or moon (two_moons), else -1
};

// n fresh points from the true distribution (for evaluation), float32 [n, 2].
torch::Tensor sample_toy(ToyKind kind, int64_t n, uint64_t seed);
// The same points (same kind, n, seed) with their labels.
ToySamples sample_toy_labeled(ToyKind kind, int64_t n, uint64_t seed);

// Classes the toy distribution has labels for: 8 (8gaussians), 2 (two_moons), else 0.
int64_t toy_num_classes(ToyKind kind);

// The mean and scale used to standardize (raw = x * scale + mean), for tests and plots.
struct ToyNormalization {
  double mean_x, mean_y, scale;
};
ToyNormalization toy_normalization(ToyKind kind);

// A fixed set of `size` points drawn once from (kind, seed) at construction; the stream is
// independent of sample_toy(kind, n, seed)'s.
class Toy2dDataset : public Dataset {
 public:
  Toy2dDataset(ToyKind kind, int64_t size, uint64_t seed, bool labels = true);

  int64_t size() const override { return size_; }
  Example get(int64_t index) const override;
  int64_t num_classes() const override { return labels_ ? toy_num_classes(kind_) : 0; }
  std::vector<int64_t> shape() const override { return {2}; }
  std::string describe() const override;

  const torch::Tensor& points() const { return samples_.x; }

 private:
  ToyKind kind_;
  int64_t size_;
  bool labels_;
  ToySamples samples_;
};

}  // namespace diffuse

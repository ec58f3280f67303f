// Reproducible Gaussian noise for sampling: sample i of a run depends only on (seed, i), whatever
// the batch size, the split into batches or the device.
//
// Each (seed, sample index, draw number) names its own stream: a 64-bit key from a splitmix64
// hash, then a splitmix64 sequence turned into N(0, 1) values by Marsaglia's polar method, in
// float64 on the CPU, stored as float32 and moved to the device. (LibTorch's CPU generator
// seeds mt19937 with 32 bits only, so per-sample generators would collide after ~1e5 samples;
// this also keeps the values identical across LibTorch versions.)
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace diffuse {

class NoiseSource {
 public:
  // `indices`: the global index of each sample of this batch; `sample_shape`: one sample's shape
  // (e.g. {C, H, W}). Tensors come back as [B, sample_shape...] in `dtype` on `device`.
  NoiseSource(uint64_t seed, std::vector<int64_t> indices, std::vector<int64_t> sample_shape,
              torch::Device device = torch::kCPU, torch::ScalarType dtype = torch::kFloat32);
  // Given draws instead of generated ones (draws[0] is x_T, draws[k] the k-th per-step noise),
  // to feed a sampler another program's noise; a draw past the end is an std::out_of_range.
  static NoiseSource supplied(std::vector<torch::Tensor> draws);
  // Samples first, first + 1, ..., first + count - 1.
  static NoiseSource range(uint64_t seed, int64_t first, int64_t count, std::vector<int64_t> sample_shape,
                           torch::Device device = torch::kCPU, torch::ScalarType dtype = torch::kFloat32);

  // x_T (draw 0): the same tensor on every call.
  torch::Tensor initial() const { return draw(0); }
  // Per-step noise: draws 1, 2, ... in order.
  torch::Tensor next() { return draw(++taken_); }
  // Draw k of every sample (0 = x_T).
  torch::Tensor draw(uint64_t k) const;
  // How many next() calls so far; reset() starts again at draw 1.
  uint64_t taken() const { return taken_; }
  void reset() { taken_ = 0; }

  int64_t batch_size() const { return static_cast<int64_t>(indices_.size()); }
  const std::vector<int64_t>& indices() const { return indices_; }
  const std::vector<int64_t>& sample_shape() const { return sample_shape_; }
  torch::Device device() const { return device_; }
  torch::ScalarType dtype() const { return dtype_; }

  // The stream key of one (seed, index, draw).
  static uint64_t stream_key(uint64_t seed, int64_t index, uint64_t draw);
  // n standard normal values of one stream (computed in float64, stored as float32).
  static void fill_normal(uint64_t key, float* out, int64_t n);

 private:
  uint64_t seed_;
  std::vector<int64_t> indices_, sample_shape_;
  torch::Device device_;
  torch::ScalarType dtype_;
  int64_t numel_per_sample_ = 1;
  uint64_t taken_ = 0;
  std::vector<torch::Tensor> supplied_;
};

}  // namespace diffuse

#include "diffuse/samplers/noise_source.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <stdexcept>
#include <string>

namespace diffuse {

namespace {

// splitmix64 (Steele, Lea & Flood 2014): the Weyl increment and the output mixer.
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

struct SplitMix64 {
  uint64_t state;
  uint64_t next() { return mix64(state += kGolden); }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
};

}  // namespace

NoiseSource::NoiseSource(uint64_t seed, std::vector<int64_t> indices, std::vector<int64_t> sample_shape,
                         torch::Device device, torch::ScalarType dtype)
    : seed_(seed),
      indices_(std::move(indices)),
      sample_shape_(std::move(sample_shape)),
      device_(device),
      dtype_(dtype) {
  if (indices_.empty()) throw std::invalid_argument("NoiseSource: no sample indices");
  for (auto d : sample_shape_) {
    if (d < 1) throw std::invalid_argument("NoiseSource: sample shape dimensions must be >= 1");
    numel_per_sample_ *= d;
  }
  if (!c10::isFloatingType(dtype_)) throw std::invalid_argument("NoiseSource: dtype must be floating point");
}

NoiseSource NoiseSource::range(uint64_t seed, int64_t first, int64_t count, std::vector<int64_t> sample_shape,
                               torch::Device device, torch::ScalarType dtype) {
  if (count < 1) throw std::invalid_argument("NoiseSource::range: count must be >= 1");
  std::vector<int64_t> idx(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) idx[static_cast<size_t>(i)] = first + i;
  return NoiseSource(seed, std::move(idx), std::move(sample_shape), device, dtype);
}

NoiseSource NoiseSource::supplied(std::vector<torch::Tensor> draws) {
  if (draws.empty()) throw std::invalid_argument("NoiseSource::supplied: no draws");
  const auto& first = draws.front();
  auto sample_shape = first.sizes().vec();
  const int64_t batch = sample_shape.at(0);
  sample_shape.erase(sample_shape.begin());
  std::vector<int64_t> idx(static_cast<size_t>(batch));
  for (int64_t i = 0; i < batch; ++i) idx[static_cast<size_t>(i)] = i;
  NoiseSource n(0, std::move(idx), std::move(sample_shape), first.device(), first.scalar_type());
  for (const auto& d : draws)
    if (d.sizes() != first.sizes()) throw std::invalid_argument("NoiseSource::supplied: draws of different shapes");
  n.supplied_ = std::move(draws);
  return n;
}

uint64_t NoiseSource::stream_key(uint64_t seed, int64_t index, uint64_t draw) {
  uint64_t h = mix64(seed + kGolden);
  h = mix64(h ^ mix64(static_cast<uint64_t>(index) + 2 * kGolden));
  return mix64(h ^ mix64(draw + 3 * kGolden));
}

void NoiseSource::fill_normal(uint64_t key, float* out, int64_t n) {
  SplitMix64 g{key};
  for (int64_t k = 0; k < n; k += 2) {
    // Marsaglia's polar method: a point uniform in the unit disc gives two independent normals.
    double u, v, s;
    do {
      u = 2.0 * g.uniform() - 1.0;
      v = 2.0 * g.uniform() - 1.0;
      s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    const double f = std::sqrt(-2.0 * std::log(s) / s);
    out[k] = static_cast<float>(u * f);
    if (k + 1 < n) out[k + 1] = static_cast<float>(v * f);
  }
}

torch::Tensor NoiseSource::draw(uint64_t k) const {
  if (!supplied_.empty()) {
    if (k >= supplied_.size())
      throw std::out_of_range("NoiseSource: draw " + std::to_string(k) + " of " + std::to_string(supplied_.size()) +
                              " supplied");
    return supplied_[k];
  }
  std::vector<int64_t> shape{batch_size()};
  shape.insert(shape.end(), sample_shape_.begin(), sample_shape_.end());
  auto opts = torch::TensorOptions().dtype(torch::kFloat32);
  // Pinned host memory lets the copy to a GPU run asynchronously.
  if (device_.is_cuda()) opts = opts.pinned_memory(true);
  auto host = torch::empty(shape, opts);
  float* data = host.data_ptr<float>();
  const int64_t n = numel_per_sample_;
  at::parallel_for(0, batch_size(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      fill_normal(stream_key(seed_, indices_[static_cast<size_t>(i)], k), data + i * n, n);
  });
  if (device_.is_cpu() && dtype_ == torch::kFloat32) return host;
  return host.to(device_, dtype_, /*non_blocking=*/device_.is_cuda());
}

}  // namespace diffuse

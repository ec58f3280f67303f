#include "diffuse/eval/random.h"

#include <torch/torch.h>

#include <cmath>
#include <numeric>
#include <stdexcept>
#include <vector>

namespace diffuse {

torch::Device draw_device(const torch::Generator& gen, const torch::Tensor& like) {
  return gen.defined() ? gen.device() : like.device();
}

c10::optional<torch::Generator> optional_generator(const torch::Generator& gen) {
  return gen.defined() ? c10::optional<torch::Generator>(gen) : c10::nullopt;
}

torch::Tensor normal_like(const torch::Generator& gen, const torch::Tensor& like) {
  return torch::randn(like.sizes(), optional_generator(gen), like.options().device(draw_device(gen, like)))
      .to(like.device());
}

torch::Tensor random_subset(std::mt19937_64& rng, int64_t n, int64_t m, const torch::Device& device) {
  if (m < 0 || m > n) throw std::invalid_argument("random_subset: need 0 <= m <= n");
  std::vector<int64_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), int64_t{0});
  for (int64_t i = 0; i < m; ++i) {
    const auto j = i + static_cast<int64_t>(uniform_below(rng, static_cast<uint64_t>(n - i)));
    std::swap(idx[static_cast<size_t>(i)], idx[static_cast<size_t>(j)]);
  }
  idx.resize(static_cast<size_t>(m));
  return torch::tensor(idx, torch::TensorOptions().dtype(torch::kLong)).to(device);
}

torch::Tensor random_unit_vectors(std::mt19937_64& rng, int64_t count, int64_t dim, const torch::Device& device) {
  if (count < 0 || dim < 1) throw std::invalid_argument("random_unit_vectors: need count >= 0 and dim >= 1");
  constexpr double kTwoPi = 6.283185307179586476925;
  // A double in (0, 1] from the top 53 bits, so log() never sees 0.
  auto uniform = [&rng]() { return (static_cast<double>(rng() >> 11) + 1.0) * 0x1.0p-53; };
  std::vector<double> v(static_cast<size_t>(count * dim));
  for (int64_t i = 0; i < count; ++i) {
    double* row = v.data() + i * dim;
    double norm2 = 0;
    do {
      norm2 = 0;
      for (int64_t j = 0; j < dim; j += 2) {
        const double r = std::sqrt(-2.0 * std::log(uniform())), a = kTwoPi * uniform();
        row[j] = r * std::cos(a);
        if (j + 1 < dim) row[j + 1] = r * std::sin(a);
      }
      for (int64_t j = 0; j < dim; ++j) norm2 += row[j] * row[j];
    } while (norm2 < 1e-300);
    const double inv = 1.0 / std::sqrt(norm2);
    for (int64_t j = 0; j < dim; ++j) row[j] *= inv;
  }
  return torch::from_blob(v.data(), {count, dim}, torch::kFloat64).clone().to(device);
}

}  // namespace diffuse

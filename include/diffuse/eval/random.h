// Reproducible random draws for evaluation. Noise for the bounds comes from a torch generator
// drawn on its own device. The metrics' draws (KID subsets, sliced-Wasserstein projections) come
// from a seeded std::mt19937_64 with our own bounded-integer and normal transforms, so
// a seed gives the same numbers on every platform and LibTorch version (std's distributions and
// torch's generators both leave that unspecified).
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <random>

#include "diffuse/rng.h"

namespace diffuse {

// Torch draws happen on the generator's device (a CPU generator cannot feed CUDA kernels), or on
// like's device with the default generator when gen is undefined; then they move to like's.
torch::Device draw_device(const torch::Generator& gen, const torch::Tensor& like);
// gen as the optional generator torch's random functions take (none when undefined).
c10::optional<torch::Generator> optional_generator(const torch::Generator& gen);

// Standard normal noise shaped like `like`, in its dtype, drawn by `gen` on the generator's device
// (the default generator on like's device when gen is undefined) and moved to like's device, so
// one seed gives the same noise whatever device the data is on.
torch::Tensor normal_like(const torch::Generator& gen, const torch::Tensor& like);

// m distinct indices drawn uniformly from [0, n) (a partial Fisher-Yates shuffle), int64 [m] on
// `device`. Requires 0 <= m <= n.
torch::Tensor random_subset(std::mt19937_64& rng, int64_t n, int64_t m, const torch::Device& device = torch::kCPU);

// count directions drawn uniformly from the unit sphere in `dim` dimensions: float64 [count, dim]
// (normalised standard normal vectors; normals by Box-Muller).
torch::Tensor random_unit_vectors(std::mt19937_64& rng, int64_t count, int64_t dim,
                                  const torch::Device& device = torch::kCPU);

}  // namespace diffuse

#include "diffuse/data/synthetic.h"

#include <torch/torch.h>

#include <fmt/format.h>

#include "diffuse/rng.h"

namespace diffuse {

SyntheticDataset::SyntheticDataset(int64_t size, int64_t channels, int64_t image_size, int64_t num_classes,
                                   uint64_t seed)
    : size_(size), channels_(channels), image_size_(image_size), num_classes_(num_classes), seed_(seed) {}

Example SyntheticDataset::get(int64_t index) const {
  check_index(index);
  // A SplitMix64 stream per image from (seed, index): the same image for the same index on any
  // thread.
  auto x = torch::empty({channels_, image_size_, image_size_}, torch::kFloat32);
  float* p = x.data_ptr<float>();
  uint64_t s = seed_ * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(index) * 0xBF58476D1CE4E5B9ULL;
  for (int64_t i = 0; i < x.numel(); ++i, s += 0x9E3779B97F4A7C15ULL)
    p[i] = static_cast<float>(splitmix64(s) & 0xFF) / 127.5f - 1.0f;
  return {x, num_classes_ > 0 ? index % num_classes_ : -1};
}

std::string SyntheticDataset::describe() const {
  return fmt::format("synthetic: {} x [{},{},{}] random 8-bit images", size_, channels_, image_size_, image_size_);
}

}  // namespace diffuse

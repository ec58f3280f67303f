// Synthetic images for benchmarks and smoke tests: deterministic random 8-bit pixels, no disk.
#pragma once

#include "diffuse/data/dataset.h"

namespace diffuse {

class SyntheticDataset : public Dataset {
 public:
  // `size` images of channels x image_size x image_size; label i % num_classes.
  SyntheticDataset(int64_t size, int64_t channels, int64_t image_size, int64_t num_classes, uint64_t seed);
  int64_t size() const override { return size_; }
  Example get(int64_t index) const override;
  int64_t num_classes() const override { return num_classes_; }
  std::vector<int64_t> shape() const override { return {channels_, image_size_, image_size_}; }
  std::string describe() const override;

 private:
  int64_t size_, channels_, image_size_, num_classes_;
  uint64_t seed_;
};

}  // namespace diffuse

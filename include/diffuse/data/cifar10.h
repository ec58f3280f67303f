// CIFAR-10, binary version (https://www.cs.toronto.edu/~kriz/cifar.html): records of 3073
// bytes, one label byte (0..9) then 1024 red, 1024 green and 1024 blue pixels (32x32,
// row-major). Split "train" reads data_batch_1.bin .. data_batch_5.bin, "test" test_batch.bin,
// from `path` or its cifar-10-batches-bin/ subdirectory; a path to a single .bin file reads
// just that file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "diffuse/data/dataset.h"
#include "diffuse/data/image_transform.h"

namespace diffuse {

constexpr int64_t kCifarRecordBytes = 3073;

// The batch files of a split; UsageError naming the directory and missing file.
std::vector<std::string> find_cifar10_files(const std::string& path, const std::string& split);

class Cifar10Dataset : public Dataset {
 public:
  // Every file must be a non-empty multiple of 3073 bytes with labels in 0..9; UsageError
  // naming the file otherwise.
  Cifar10Dataset(const std::vector<std::string>& files, const ImageOptions& options, std::string split = "");

  int64_t size() const override { return count_; }
  Example get(int64_t index) const override;
  int64_t num_classes() const override { return labels_ ? 10 : 0; }
  std::vector<int64_t> shape() const override { return transform_.out_shape(); }
  std::string describe() const override;
  std::string fingerprint() const override { return fingerprint_; }

 private:
  std::vector<std::string> buffers_;  // one per file
  std::vector<int64_t> starts_;       // first record index of each file, plus the total
  int64_t count_ = 0;
  bool labels_ = true;
  ImageTransform transform_;
  std::string split_, fingerprint_;
};

}  // namespace diffuse

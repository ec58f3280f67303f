// MNIST and Fashion-MNIST in the IDX format (http://yann.lecun.com/exdb/mnist/), gzipped or
// plain: <dir>/train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz] for split "train",
// t10k-... for split "test" (the "train-images.idx3-ubyte" spelling is accepted too).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "diffuse/data/dataset.h"
#include "diffuse/data/image_transform.h"

namespace diffuse {

// A parsed IDX file of unsigned bytes.
struct IdxArray {
  std::vector<int64_t> dims;  // e.g. {60000, 28, 28}
  std::string bytes;          // the whole (decompressed) file
  size_t data_offset = 0;     // where the elements start in `bytes`
  const uint8_t* data() const { return reinterpret_cast<const uint8_t*>(bytes.data()) + data_offset; }
};

// Reads and validates an IDX file: magic number 00 00 08 <ndim>, element type unsigned byte,
// and a size that matches the header exactly. UsageError naming the file and the problem.
IdxArray read_idx(const std::string& path);
// The same for bytes already in memory; `name` is the file named in errors.
IdxArray parse_idx(std::string bytes, const std::string& name);

struct IdxFiles {
  std::string images;
  std::string labels;
};
// Finds the split's files in `dir`; UsageError naming the directory and the names tried.
// Without need_labels a missing label file leaves `labels` empty.
IdxFiles find_idx_files(const std::string& dir, const std::string& split, bool need_labels = true);

class IdxDataset : public Dataset {
 public:
  // `name` ("mnist", "fashion-mnist") is for describe(). Labels must lie in [0, num_classes);
  // files.labels is not read when options.labels is false.
  IdxDataset(const IdxFiles& files, const ImageOptions& options, std::string name, int64_t num_classes = 10);

  int64_t size() const override { return count_; }
  Example get(int64_t index) const override;
  int64_t num_classes() const override { return labels_.empty() ? 0 : num_classes_; }
  std::vector<int64_t> shape() const override { return transform_.out_shape(); }
  std::string describe() const override;
  std::string fingerprint() const override { return fingerprint_; }

  const std::vector<uint8_t>& labels() const { return labels_; }  // empty when labels are off

 private:
  IdxArray images_;
  std::vector<uint8_t> labels_;
  int64_t count_ = 0, height_ = 0, width_ = 0, num_classes_ = 10;
  ImageTransform transform_;
  std::string name_, source_, fingerprint_;
};

}  // namespace diffuse

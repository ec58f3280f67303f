// The dataset abstraction: a finite, indexable collection of examples, read concurrently by the
// loader's worker threads. Images come out float32 [C,H,W] scaled to [-1,1] (x / 127.5 - 1);
// toy points come out float32 [D].
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "diffuse/config.h"

namespace diffuse {

struct Example {
  torch::Tensor x;     // float32 [C,H,W] in [-1,1], or [D] for toy points
  int64_t label = -1;  // class index, -1 when the dataset has no labels (or they are off)
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  // Thread-safe: called concurrently from loader workers. Throws std::out_of_range for a bad
  // index and UsageError (naming the file) for content that cannot be decoded.
  virtual Example get(int64_t index) const = 0;
  // Number of classes (labels are 0..K-1), 0 when examples carry no label.
  virtual int64_t num_classes() const { return 0; }
  // Shape of every example's x. The default decodes example 0.
  virtual std::vector<int64_t> shape() const;
  // One line for logs, e.g. "fashion-mnist train: 60000 x [1,32,32] (from 28x28), 10 classes".
  virtual std::string describe() const;
  // What identifies the examples, so that a resume can tell the data changed under a run: a
  // content hash ("fnv1a64:<16 hex digits>"), or "" when the examples are a function of the
  // config alone (toy, synthetic). May read every example once; later calls are free.
  virtual std::string fingerprint() const { return ""; }

 protected:
  void check_index(int64_t index) const;  // throws std::out_of_range
};

// The first `limit` examples of another dataset (what data.limit selects).
class LimitedDataset : public Dataset {
 public:
  LimitedDataset(std::shared_ptr<const Dataset> base, int64_t limit);
  int64_t size() const override { return size_; }
  Example get(int64_t index) const override;
  int64_t num_classes() const override { return base_->num_classes(); }
  std::vector<int64_t> shape() const override { return base_->shape(); }
  std::string describe() const override;
  std::string fingerprint() const override { return base_->fingerprint(); }

 private:
  std::shared_ptr<const Dataset> base_;
  int64_t size_;
};

// Image geometry and label options shared by the image datasets.
struct ImageOptions {
  int64_t image_size = 0;  // 0 = native; else center-crop to a square, then resize (see image_transform.h)
  int64_t channels = 0;    // 0 = native; 1 = grey, 3 = RGB
  bool labels = true;      // read labels where the dataset has them
};

// Builds the dataset cfg describes: kind, path, split (train | test), image_size, channels,
// class_labels, skip_bad_files, limit; toy2d uses toy and toy_size, with its points drawn from
// `seed` (a stream independent of sample_toy's for the same seed). Bad values and unreadable
// files throw UsageError naming the key or file.
std::shared_ptr<Dataset> make_dataset(const DataConfig& cfg, uint64_t seed = 0);

// The first min(limit, size) examples (limit 0 = all) stacked, [N, ...], images snapped to the
// 8-bit grid (resizing may have moved pixels off it); their labels into `labels` when asked ([N]
// int64, -1 where the dataset has none).
torch::Tensor load_examples(const Dataset& ds, int64_t limit, torch::Tensor* labels = nullptr);

}  // namespace diffuse

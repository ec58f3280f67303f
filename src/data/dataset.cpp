#include "diffuse/data/dataset.h"

#include <fmt/format.h>

#include <stdexcept>

#include "diffuse/data/cifar10.h"
#include "diffuse/data/idx.h"
#include "diffuse/data/image_folder.h"
#include "diffuse/data/synthetic.h"
#include "diffuse/data/toy2d.h"
#include "diffuse/error.h"
#include "diffuse/shape_string.h"

namespace diffuse {

std::vector<int64_t> Dataset::shape() const {
  if (size() == 0) return {};
  const auto s = get(0).x.sizes();
  return {s.begin(), s.end()};
}

std::string Dataset::describe() const { return fmt::format("{} examples of shape {}", size(), shape_string(shape())); }

void Dataset::check_index(int64_t index) const {
  if (index < 0 || index >= size())
    throw std::out_of_range(fmt::format("dataset index {} out of range [0, {})", index, size()));
}

LimitedDataset::LimitedDataset(std::shared_ptr<const Dataset> base, int64_t limit)
    : base_(std::move(base)), size_(std::min(limit, base_->size())) {
  if (limit < 0) throw UsageError(fmt::format("data.limit must be >= 0, got {}", limit));
}

Example LimitedDataset::get(int64_t index) const {
  check_index(index);
  return base_->get(index);
}

std::string LimitedDataset::describe() const { return fmt::format("{} (first {} used)", base_->describe(), size_); }

std::shared_ptr<Dataset> make_dataset(const DataConfig& cfg, uint64_t seed) {
  if (cfg.split != "train" && cfg.split != "test") throw_not_one_of("data.split", cfg.split, {"train", "test"});
  if (cfg.image_size < 0)
    throw UsageError(fmt::format("data.image_size must be >= 0 (0 = native), got {}", cfg.image_size));
  if (cfg.channels != 0 && cfg.channels != 1 && cfg.channels != 3)
    throw UsageError(fmt::format("data.channels must be 0 (native), 1 or 3, got {}", cfg.channels));
  if (cfg.limit < 0) throw UsageError(fmt::format("data.limit must be >= 0 (0 = all), got {}", cfg.limit));

  ImageOptions image;
  image.image_size = cfg.image_size;
  image.channels = cfg.channels;
  image.labels = cfg.class_labels;

  std::shared_ptr<Dataset> ds;
  switch (cfg.dataset) {
    case DatasetKind::FashionMnist:
    case DatasetKind::Mnist:
      ds = std::make_shared<IdxDataset>(find_idx_files(cfg.path, cfg.split, cfg.class_labels), image,
                                        to_string(cfg.dataset));
      break;
    case DatasetKind::Cifar10:
      ds = std::make_shared<Cifar10Dataset>(find_cifar10_files(cfg.path, cfg.split), image, cfg.split);
      break;
    case DatasetKind::ImageFolder: {
      ImageFolderOptions opt;
      opt.image = image;
      opt.skip_bad_files = cfg.skip_bad_files;
      ds = std::make_shared<ImageFolderDataset>(cfg.path, opt);
      break;
    }
    case DatasetKind::Toy2d:
      if (cfg.toy_size < 1) throw UsageError(fmt::format("data.toy_size must be >= 1, got {}", cfg.toy_size));
      // The test split is a different fixed draw from the training points.
      ds = std::make_shared<Toy2dDataset>(cfg.toy, cfg.toy_size, cfg.split == "test" ? ~seed : seed, cfg.class_labels);
      break;
    case DatasetKind::Synthetic:
      // Random images for benchmarks: 32x32 RGB unless data.image_size / data.channels say otherwise.
      ds = std::make_shared<SyntheticDataset>(10000, cfg.channels ? cfg.channels : 3,
                                              cfg.image_size ? cfg.image_size : 32, cfg.class_labels ? 10 : 0,
                                              cfg.split == "test" ? ~seed : seed);
      break;
  }
  if (cfg.limit > 0 && cfg.limit < ds->size()) ds = std::make_shared<LimitedDataset>(ds, cfg.limit);
  return ds;
}

torch::Tensor load_examples(const Dataset& ds, int64_t limit, torch::Tensor* labels) {
  const int64_t n = limit > 0 ? std::min(limit, ds.size()) : ds.size();
  std::vector<torch::Tensor> xs;
  std::vector<int64_t> ys;
  xs.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    auto e = ds.get(i);
    xs.push_back(e.x);
    ys.push_back(e.label);
  }
  if (labels) *labels = torch::tensor(ys, torch::kLong);
  auto x = torch::stack(xs);
  if (x.dim() == 4) x = torch::round((x + 1.0) * 127.5).clamp(0, 255) / 127.5 - 1.0;
  return x;
}

}  // namespace diffuse

#include "diffuse/data/cifar10.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>

#include "diffuse/data/file_bytes.h"
#include "diffuse/error.h"
#include "diffuse/hash.h"
#include "diffuse/shape_string.h"

namespace diffuse {

std::vector<std::string> find_cifar10_files(const std::string& path, const std::string& split) {
  namespace fs = std::filesystem;
  std::vector<std::string> names;
  if (split == "train") {
    for (int i = 1; i <= 5; ++i) names.push_back(fmt::format("data_batch_{}.bin", i));
  } else if (split == "test") {
    names.push_back("test_batch.bin");
  } else {
    throw_not_one_of("data.split", split, {"train", "test"});
  }
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) return {path};
  if (!fs::is_directory(path, ec))
    throw UsageError(
        fmt::format("data.path '{}' does not exist (expected the CIFAR-10 binary batches directory)", path));
  fs::path dir(path);
  if (!fs::exists(dir / names[0], ec) && fs::is_directory(dir / "cifar-10-batches-bin", ec))
    dir /= "cifar-10-batches-bin";
  std::vector<std::string> files;
  for (const auto& n : names) {
    const fs::path p = dir / n;
    if (!fs::is_regular_file(p, ec))
      throw UsageError(
          fmt::format("CIFAR-10 {} file '{}' is missing (a {} split needs {})", split, p.string(), split, join(names)));
    files.push_back(p.string());
  }
  return files;
}

Cifar10Dataset::Cifar10Dataset(const std::vector<std::string>& files, const ImageOptions& options, std::string split)
    : labels_(options.labels), split_(std::move(split)) {
  if (files.empty()) throw UsageError("CIFAR-10: no batch files given");
  starts_.push_back(0);
  for (const auto& f : files) {
    std::string b = read_file_maybe_gzip(f);
    const auto n = static_cast<int64_t>(b.size());
    if (n == 0 || n % kCifarRecordBytes != 0)
      throw UsageError(fmt::format(
          "'{}' is not a CIFAR-10 binary batch: {} bytes is not a multiple of the "
          "{}-byte record (1 label + 3x32x32 pixels){}",
          f, n, kCifarRecordBytes,
          n > 0 ? fmt::format("; {} whole records and {} bytes over", n / kCifarRecordBytes, n % kCifarRecordBytes)
                : std::string()));
    const int64_t records = n / kCifarRecordBytes;
    const auto* p = reinterpret_cast<const uint8_t*>(b.data());
    for (int64_t r = 0; r < records; ++r)
      if (p[r * kCifarRecordBytes] > 9)
        throw UsageError(fmt::format("'{}': record {} has label {}, outside 0..9 (not a CIFAR-10 batch?)", f, r,
                                     p[r * kCifarRecordBytes]));
    buffers_.push_back(std::move(b));
    starts_.push_back(starts_.back() + records);
  }
  count_ = starts_.back();
  uint64_t h = kFnv1aOffsetBasis;
  for (const auto& b : buffers_) h = fnv1a64(b.data(), b.size(), h);
  fingerprint_ = fingerprint_string(h);
  transform_ = ImageTransform(3, 32, 32, options.image_size, options.channels);
}

Example Cifar10Dataset::get(int64_t index) const {
  check_index(index);
  const auto file = std::upper_bound(starts_.begin(), starts_.end(), index) - starts_.begin() - 1;
  const auto* rec =
      reinterpret_cast<const uint8_t*>(buffers_[file].data()) + (index - starts_[file]) * kCifarRecordBytes;
  Example e;
  e.x = transform_.apply(rec + 1);
  e.label = labels_ ? rec[0] : -1;
  return e;
}

std::string Cifar10Dataset::describe() const {
  return fmt::format("cifar10 {}: {} x {} (from 32x32), {}", split_, count_, shape_string(shape()),
                     labels_ ? "10 classes" : "unlabelled");
}

}  // namespace diffuse

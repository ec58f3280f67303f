#include "diffuse/data/idx.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <filesystem>

#include "diffuse/data/file_bytes.h"
#include "diffuse/error.h"
#include "diffuse/hash.h"
#include "diffuse/shape_string.h"

namespace diffuse {

namespace {

uint32_t read_be32(const std::string& b, size_t at) {
  const auto* p = reinterpret_cast<const uint8_t*>(b.data() + at);
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | uint32_t(p[3]);
}

std::string dims_string(const std::vector<int64_t>& dims) { return fmt::format("{}", fmt::join(dims, "x")); }

struct IdxHeader {
  std::vector<int64_t> dims;
  size_t size = 0;     // bytes of header
  uint64_t count = 0;  // elements (bytes) of data it promises
};

// Magic number, element type and dimensions, from the first bytes of an IDX file.
IdxHeader parse_header(const std::string& bytes, const std::string& name) {
  const size_t n = bytes.size();
  if (n < 4)
    throw UsageError(fmt::format("'{}' is not an IDX file: {} bytes, shorter than the 4-byte magic number", name, n));
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  if (p[0] != 0 || p[1] != 0 || p[3] < 1 || p[3] > 4)
    throw UsageError(
        fmt::format("'{}' is not an IDX file: bad magic number 0x{:08x} (expected 0x00000803 for "
                    "images or 0x00000801 for labels)",
                    name, read_be32(bytes, 0)));
  if (p[2] != 0x08)
    throw UsageError(
        fmt::format("'{}': IDX element type 0x{:02x} is not supported (only 0x08, unsigned byte)", name, p[2]));
  const int ndim = p[3];
  IdxHeader h;
  h.size = 4 + 4 * static_cast<size_t>(ndim);
  if (n < h.size)
    throw UsageError(fmt::format("'{}' is truncated: {} bytes, shorter than its {}-dimensional IDX header ({} bytes)",
                                 name, n, ndim, h.size));
  for (int d = 0; d < ndim; ++d) h.dims.push_back(read_be32(bytes, 4 + 4 * static_cast<size_t>(d)));
  // Checked before each multiplication, so the product cannot wrap (and then pass the size check).
  constexpr uint64_t kMaxElements = uint64_t{1} << 40;
  h.count = 1;
  for (const int64_t v : h.dims) {
    if (v != 0 && h.count > kMaxElements / static_cast<uint64_t>(v))
      throw UsageError(fmt::format("'{}': implausible IDX dimensions {}: more than 2^40 elements (a corrupt header?)",
                                   name, dims_string(h.dims)));
    h.count *= static_cast<uint64_t>(v);
  }
  return h;
}

}  // namespace

IdxArray parse_idx(std::string bytes, const std::string& name) {
  const IdxHeader h = parse_header(bytes, name);
  const size_t n = bytes.size();
  IdxArray a;
  a.dims = h.dims;
  const uint64_t expected = h.size + h.count;
  if (n < expected)
    throw UsageError(fmt::format("'{}' is truncated: its header promises {} = {} bytes of data, the file has {}", name,
                                 dims_string(a.dims), h.count, n - h.size));
  if (n > expected)
    throw UsageError(fmt::format("'{}' has {} bytes more than its header's {} = {} bytes of data", name, n - expected,
                                 dims_string(a.dims), h.count));
  a.bytes = std::move(bytes);
  a.data_offset = h.size;
  return a;
}

IdxArray read_idx(const std::string& path) {
  std::string bytes = read_file_bytes(path);
  if (is_gzip(bytes)) {
    // Inflate no more than the header says the file holds (a margin more, so that a few stray
    // bytes get parse_idx's message): a gzip bomb is refused before it fills memory.
    constexpr size_t kMaxHeader = 4 + 4 * 4, kMargin = 64 << 10;
    const IdxHeader h = parse_header(gunzip_head(bytes, path, kMaxHeader), path);
    bytes = gunzip(bytes, path, std::min<uint64_t>(h.size + h.count + kMargin, kMaxDecompressedBytes));
  }
  return parse_idx(std::move(bytes), path);
}

IdxFiles find_idx_files(const std::string& dir, const std::string& split, bool need_labels) {
  namespace fs = std::filesystem;
  std::string prefix;
  if (split == "train") prefix = "train";
  else if (split == "test") prefix = "t10k";
  else throw_not_one_of("data.split", split, {"train", "test"});
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw UsageError(
        fmt::format("data.path '{}' is not a directory (expected the IDX files of MNIST/Fashion-MNIST)", dir));
  auto find = [&](const std::string& what, const std::string& idx, bool required) {
    std::vector<std::string> tried;
    for (const std::string sep : {"-", "."}) {
      for (const std::string ext : {"", ".gz"}) {
        const std::string file = prefix + "-" + what + sep + idx + "-ubyte" + ext;
        const fs::path p = fs::path(dir) / file;
        if (fs::is_regular_file(p, ec)) return p.string();
        tried.push_back(file);
      }
    }
    if (!required) return std::string();
    throw UsageError(fmt::format("no {} {} file in '{}' (tried {})", split, what, dir, join(tried)));
  };
  return {find("images", "idx3", true), find("labels", "idx1", need_labels)};
}

IdxDataset::IdxDataset(const IdxFiles& files, const ImageOptions& options, std::string name, int64_t num_classes)
    : num_classes_(num_classes), name_(std::move(name)), source_(files.images) {
  images_ = read_idx(files.images);
  if (images_.dims.size() != 3)
    throw UsageError(fmt::format("'{}': expected an image file with 3 dimensions (count x height x width), got {}",
                                 files.images, dims_string(images_.dims)));
  count_ = images_.dims[0];
  height_ = images_.dims[1];
  width_ = images_.dims[2];
  if (count_ == 0 || height_ == 0 || width_ == 0)
    throw UsageError(fmt::format("'{}' holds no images ({})", files.images, dims_string(images_.dims)));
  if (options.labels) {
    const IdxArray lab = read_idx(files.labels);
    if (lab.dims.size() != 1)
      throw UsageError(
          fmt::format("'{}': expected a label file with 1 dimension, got {}", files.labels, dims_string(lab.dims)));
    if (lab.dims[0] != count_)
      throw UsageError(
          fmt::format("'{}' has {} labels but '{}' has {} images", files.labels, lab.dims[0], files.images, count_));
    labels_.assign(lab.data(), lab.data() + count_);
    for (int64_t i = 0; i < count_; ++i)
      if (labels_[i] >= num_classes_)
        throw UsageError(fmt::format("'{}': label {} of example {} is outside 0..{}", files.labels, labels_[i], i,
                                     num_classes_ - 1));
  }
  transform_ = ImageTransform(1, height_, width_, options.image_size, options.channels);
  uint64_t h = fnv1a64(images_.data(), static_cast<size_t>(count_ * height_ * width_));
  fingerprint_ = fingerprint_string(fnv1a64(labels_.data(), labels_.size(), h));
}

Example IdxDataset::get(int64_t index) const {
  check_index(index);
  Example e;
  e.x = transform_.apply(images_.data() + index * height_ * width_);
  e.label = labels_.empty() ? -1 : labels_[index];
  return e;
}

std::string IdxDataset::describe() const {
  return fmt::format("{} ({}): {} x {} (from {}x{}), {}", name_, source_, count_, shape_string(shape()), height_,
                     width_, labels_.empty() ? std::string("unlabelled") : fmt::format("{} classes", num_classes_));
}

}  // namespace diffuse

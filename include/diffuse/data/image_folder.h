// A folder of images (PNG, JPEG, BMP; found recursively, decoded with stb_image), e.g. a
// reference set for FID or a custom training set.
//
// Labels: with class_labels on and images in subfolders, the first path component under the
// root is the class; sorted class names map to 0..K-1 (torchvision's ImageFolder rule). Images
// directly in the root then are an error (set class_labels: false to use every image
// unlabelled). Without subfolders the images carry no label.
//
// Geometry: every image is center-cropped to a square and resized to image_size with the
// antialiased bilinear filter of image_transform.h. image_size 0 takes the shorter side of the
// first image (in sorted order); channels 0 takes the first image's (grey -> 1, else 3). Alpha
// is dropped (not composited).
//
// Bad files: every file's header is checked at construction; an undecodable file is a
// UsageError naming it. With skip_bad_files every file is fully decoded once at construction
// (in parallel) and the bad ones are left out, counted, and logged (spdlog warning).
//
// Change: each file's size and modification time are noted when the folder is listed, and
// get() refuses a file whose size or time differ (UsageError naming it), so that a dataset
// replaced under a running job stops it instead of silently feeding it other images. The
// fingerprint is a hash of the relative paths and sizes (reading every image would take too
// long for large folders).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "diffuse/data/dataset.h"

namespace diffuse {

struct ImageFolderOptions {
  ImageOptions image;
  bool skip_bad_files = false;
  int64_t threads = 0;  // for the skip_bad_files decode pass; 0 = hardware concurrency
  // File names (no directory) never taken as images, e.g. the grid `diffuse sample` writes
  // beside the samples it measures.
  std::vector<std::string> ignore_names;
};

// Lower-case extensions taken as images.
const std::vector<std::string>& image_folder_extensions();  // .png .jpg .jpeg .bmp

class ImageFolderDataset : public Dataset {
 public:
  ImageFolderDataset(const std::string& root, const ImageFolderOptions& options);

  int64_t size() const override { return static_cast<int64_t>(files_.size()); }
  Example get(int64_t index) const override;
  int64_t num_classes() const override { return static_cast<int64_t>(class_names_.size()); }
  std::vector<int64_t> shape() const override { return {channels_, image_size_, image_size_}; }
  std::string describe() const override;
  std::string fingerprint() const override { return fingerprint_; }

  const std::string& file(int64_t index) const;  // absolute-or-as-given path
  const std::vector<std::string>& class_names() const { return class_names_; }
  int64_t bad_files() const { return static_cast<int64_t>(bad_files_.size()); }
  const std::vector<std::string>& bad_file_paths() const { return bad_files_; }

 private:
  std::string root_;
  std::vector<std::string> files_;
  std::vector<int64_t> labels_;  // empty when unlabelled
  std::vector<std::string> class_names_;
  std::vector<std::string> bad_files_;
  struct Stamp {
    int64_t size = 0, mtime_ns = 0;
  };
  std::vector<Stamp> stamps_;  // per file, as listed
  int64_t image_size_ = 0, channels_ = 0;
  std::string fingerprint_;
};

}  // namespace diffuse

#include "diffuse/data/image_folder.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <set>
#include <thread>

#include "diffuse/data/file_bytes.h"
#include "diffuse/runtime.h"
#include "diffuse/data/image_transform.h"
#include "diffuse/error.h"
#include "diffuse/hash.h"
#include "diffuse/image_io.h"
#include "diffuse/shape_string.h"

namespace diffuse {

namespace fs = std::filesystem;

const std::vector<std::string>& image_folder_extensions() {
  static const std::vector<std::string> exts = {".png", ".jpg", ".jpeg", ".bmp"};
  return exts;
}

namespace {

bool is_image_name(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  const auto& exts = image_folder_extensions();
  return std::find(exts.begin(), exts.end(), ext) != exts.end();
}

// Size and modification time, or {-1, -1} when the file cannot be stat'ed.
struct FileStat {
  int64_t size = -1, mtime_ns = -1;
};
FileStat stat_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return {};
  return {static_cast<int64_t>(st.st_size), static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
}

// Decoded pixels with alpha dropped: uint8 [1 or 3, H, W].
torch::Tensor decode_without_alpha(const std::string& path) {
  const auto img = decode_image(read_file_bytes(path), path);
  const int64_t c = img.size(0);
  if (c == 1 || c == 3) return img;
  return img.narrow(0, 0, c >= 3 ? 3 : 1).contiguous();
}

}  // namespace

ImageFolderDataset::ImageFolderDataset(const std::string& root, const ImageFolderOptions& options) : root_(root) {
  std::error_code ec;
  if (!fs::is_directory(root, ec))
    throw UsageError(fmt::format("data.path '{}' is not a directory (expected a folder of images)", root));

  std::vector<fs::path> rel;
  auto it = fs::recursive_directory_iterator(
      root, fs::directory_options::follow_directory_symlink | fs::directory_options::skip_permission_denied, ec);
  if (ec) throw UsageError(fmt::format("cannot list '{}': {}", root, ec.message()));
  for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) throw UsageError(fmt::format("cannot list '{}': {}", root, ec.message()));
    if (!it->is_regular_file(ec) || !is_image_name(it->path())) continue;
    const auto name = it->path().filename().string();
    if (std::find(options.ignore_names.begin(), options.ignore_names.end(), name) != options.ignore_names.end())
      continue;
    rel.push_back(it->path().lexically_relative(root));
  }
  if (ec) throw UsageError(fmt::format("cannot list '{}': {}", root, ec.message()));
  if (rel.empty())
    throw UsageError(fmt::format("no images ({}) found under '{}'", join(image_folder_extensions(), " "), root));
  std::sort(rel.begin(), rel.end(),
            [](const fs::path& a, const fs::path& b) { return a.generic_string() < b.generic_string(); });

  std::vector<int64_t> labels;
  if (options.image.labels) {
    std::set<std::string> classes;
    const fs::path* top_level = nullptr;
    for (const auto& r : rel) {
      if (std::distance(r.begin(), r.end()) >= 2) classes.insert(r.begin()->string());
      else if (!top_level) top_level = &r;
    }
    if (!classes.empty()) {
      if (top_level)
        throw UsageError(
            fmt::format("image folder '{}': '{}' is not in a class subfolder while other images are "
                        "(set data.class_labels: false to use all images without labels)",
                        root, top_level->string()));
      class_names_.assign(classes.begin(), classes.end());
      for (const auto& r : rel)
        labels.push_back(std::lower_bound(class_names_.begin(), class_names_.end(), r.begin()->string()) -
                         class_names_.begin());
    }
  }
  std::vector<std::string> paths;
  paths.reserve(rel.size());
  for (const auto& r : rel) paths.push_back((fs::path(root) / r).string());

  // Which files decode. Without skip_bad_files a header check catches non-images early and a
  // file corrupt further in fails in get(), naming it; with it, one full decode of each file.
  std::vector<char> bad(paths.size(), 0);
  std::vector<std::string> reasons(paths.size());
  if (options.skip_bad_files) {
    int64_t threads = options.threads > 0 ? options.threads : available_cores();
    threads = std::min<int64_t>(threads, static_cast<int64_t>(paths.size()));
    auto check = [&](int64_t first) {
      for (size_t i = first; i < paths.size(); i += threads) {
        try {
          decode_without_alpha(paths[i]);
        } catch (const std::exception& e) {
          bad[i] = 1;
          reasons[i] = e.what();
        }
      }
    };
    std::vector<std::thread> pool;
    for (int64_t t = 1; t < threads; ++t) pool.emplace_back(check, t);
    check(0);
    for (auto& t : pool) t.join();
  } else {
    for (const auto& p : paths) image_info(p);
  }
  for (size_t i = 0; i < paths.size(); ++i) {
    if (bad[i]) {
      bad_files_.push_back(paths[i]);
      continue;
    }
    files_.push_back(paths[i]);
    if (!labels.empty()) labels_.push_back(labels[i]);
  }
  if (!bad_files_.empty()) {
    size_t first_bad = std::find(bad.begin(), bad.end(), 1) - bad.begin();
    spdlog::warn("image folder '{}': skipped {} of {} files that do not decode (first: {})", root, bad_files_.size(),
                 paths.size(), reasons[first_bad]);
  }
  if (files_.empty())
    throw UsageError(fmt::format("image folder '{}': none of its {} image files decode", root, paths.size()));

  uint64_t h = kFnv1aOffsetBasis;
  for (const auto& f : files_) {
    const FileStat st = stat_file(f);
    stamps_.push_back({st.size, st.mtime_ns});
    const auto rel_name = fs::path(f).lexically_relative(root).generic_string();
    h = fnv1a64(rel_name.c_str(), rel_name.size() + 1, h);
    h = fnv1a64(&st.size, sizeof st.size, h);
  }
  fingerprint_ = fingerprint_string(h);

  const ImageInfo first = image_info(files_[0]);
  image_size_ = options.image.image_size > 0 ? options.image.image_size : std::min(first.width, first.height);
  channels_ = options.image.channels > 0 ? options.image.channels : (first.channels >= 3 ? 3 : 1);
}

const std::string& ImageFolderDataset::file(int64_t index) const {
  check_index(index);
  return files_[index];
}

Example ImageFolderDataset::get(int64_t index) const {
  check_index(index);
  const FileStat now = stat_file(files_[index]);
  const Stamp& then = stamps_[index];
  if (now.size != then.size || now.mtime_ns != then.mtime_ns)
    throw UsageError(
        fmt::format("'{}' changed after the image folder was listed ({}); the data is no longer what "
                    "this job started with",
                    files_[index],
                    now.size < 0            ? std::string("it is gone")
                    : now.size != then.size ? fmt::format("{} bytes, was {}", now.size, then.size)
                                            : std::string("modified since")));
  const auto img = decode_without_alpha(files_[index]);
  const ImageTransform transform(img.size(0), img.size(1), img.size(2), image_size_, channels_);
  Example e;
  e.x = transform.apply(img.data_ptr<uint8_t>());
  e.label = labels_.empty() ? -1 : labels_[index];
  return e;
}

std::string ImageFolderDataset::describe() const {
  std::string s =
      fmt::format("folder '{}': {} x {}, {}", root_, files_.size(), shape_string(shape()),
                  class_names_.empty() ? std::string("unlabelled") : fmt::format("{} classes", class_names_.size()));
  if (!bad_files_.empty()) s += fmt::format(", {} undecodable files skipped", bad_files_.size());
  return s;
}

}  // namespace diffuse

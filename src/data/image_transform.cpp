#include "diffuse/data/image_transform.h"

#include <fmt/format.h>

#include <array>
#include <cmath>

#include "diffuse/data/dataset.h"
#include "diffuse/error.h"
#include "diffuse/shape_string.h"

namespace diffuse {

namespace {

// BT.601 luma weights (PIL's convert("L")).
constexpr double kLumaR = 0.299, kLumaG = 0.587, kLumaB = 0.114;

// p / 127.5 - 1 for every byte value, computed once in double and rounded to float.
const std::array<float, 256>& unit_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int i = 0; i < 256; ++i) t[i] = static_cast<float>(i / 127.5 - 1.0);
    return t;
  }();
  return table;
}

}  // namespace

torch::Tensor resize_weights(int64_t in_size, int64_t crop_offset, int64_t crop_size, int64_t out_size) {
  if (in_size < 1 || out_size < 1 || crop_size < 1 || crop_offset < 0 || crop_offset + crop_size > in_size)
    throw std::invalid_argument(fmt::format("resize_weights: bad sizes (in {}, crop {}+{}, out {})", in_size,
                                            crop_offset, crop_size, out_size));
  auto w = torch::zeros({out_size, in_size}, torch::kFloat64);
  auto acc = w.accessor<double, 2>();
  const double scale = static_cast<double>(crop_size) / static_cast<double>(out_size);
  // Triangle filter of half-width 1 output pixel, i.e. max(scale, 1) input pixels.
  const double support = std::max(scale, 1.0);
  const double inv = 1.0 / support;
  const int64_t lo_limit = crop_offset, hi_limit = crop_offset + crop_size;
  for (int64_t i = 0; i < out_size; ++i) {
    const double center = crop_offset + (i + 0.5) * scale;
    const int64_t lo = std::max(static_cast<int64_t>(std::floor(center - support + 0.5)), lo_limit);
    const int64_t hi = std::min(static_cast<int64_t>(std::floor(center + support + 0.5)), hi_limit);
    double total = 0.0;
    for (int64_t j = lo; j < hi; ++j) {
      const double v = std::max(0.0, 1.0 - std::abs((j + 0.5 - center) * inv));
      acc[i][j] = v;
      total += v;
    }
    if (total > 0.0) {
      for (int64_t j = lo; j < hi; ++j) acc[i][j] /= total;
    } else {  // unreachable for a triangle filter of this support; keep the nearest pixel
      const int64_t j = std::clamp(static_cast<int64_t>(std::floor(center)), lo_limit, hi_limit - 1);
      acc[i][j] = 1.0;
    }
  }
  return w;
}

ImageTransform::ImageTransform(int64_t in_channels, int64_t in_height, int64_t in_width, int64_t out_size,
                               int64_t out_channels)
    : in_channels_(in_channels), in_height_(in_height), in_width_(in_width) {
  if (in_channels != 1 && in_channels != 3)
    throw UsageError(fmt::format("images must have 1 or 3 channels, got {}", in_channels));
  if (in_height < 1 || in_width < 1)
    throw UsageError(fmt::format("image has an empty size {}x{}", in_height, in_width));
  if (out_channels != 0 && out_channels != 1 && out_channels != 3)
    throw UsageError(fmt::format("channels must be 0 (native), 1 or 3, got {}", out_channels));
  if (out_size < 0) throw UsageError(fmt::format("image_size must be >= 0, got {}", out_size));
  out_channels_ = out_channels == 0 ? in_channels : out_channels;
  if (out_size == 0 || (in_height == out_size && in_width == out_size)) {
    out_height_ = in_height;
    out_width_ = in_width;
    resize_ = false;
    return;
  }
  out_height_ = out_width_ = out_size;
  resize_ = true;
  const int64_t side = std::min(in_height, in_width);
  auto taps = [](const torch::Tensor& dense, double scale) {
    Taps t;
    const int64_t n_out = dense.size(0), n_in = dense.size(1);
    auto acc = dense.accessor<double, 2>();
    for (int64_t i = 0; i < n_out; ++i) {
      int64_t lo = 0, hi = n_in - 1;
      while (lo < n_in - 1 && acc[i][lo] == 0.0) ++lo;
      while (hi > lo && acc[i][hi] == 0.0) --hi;
      t.first.push_back(lo);
      t.count.push_back(hi - lo + 1);
      t.max_taps = std::max(t.max_taps, hi - lo + 1);
    }
    t.weights.assign(n_out * t.max_taps, 0.0f);
    for (int64_t i = 0; i < n_out; ++i)
      for (int64_t k = 0; k < t.count[i]; ++k)
        t.weights[i * t.max_taps + k] = static_cast<float>(acc[i][t.first[i] + k] * scale);
    return t;
  };
  const int64_t row0 = (in_height - side) / 2, col0 = (in_width - side) / 2;
  rows_ = taps(resize_weights(in_height, row0, side, out_size), 1.0 / 127.5);
  cols_ = taps(resize_weights(in_width, col0, side, out_size), 1.0);
  row_lo_ = row0;
  row_hi_ = row0 + side;
}

torch::Tensor ImageTransform::apply(const torch::Tensor& image_u8) const {
  if (image_u8.scalar_type() != torch::kUInt8 || image_u8.dim() != 3 || image_u8.size(0) != in_channels_ ||
      image_u8.size(1) != in_height_ || image_u8.size(2) != in_width_)
    throw std::invalid_argument(fmt::format("ImageTransform: expected uint8 [{},{},{}], got {} {}", in_channels_,
                                            in_height_, in_width_, c10::toString(image_u8.scalar_type()),
                                            shape_string(image_u8.sizes().vec())));
  const auto cpu = image_u8.cpu().contiguous();
  return apply(cpu.data_ptr<uint8_t>());
}

torch::Tensor ImageTransform::apply(const uint8_t* pixels) const {
  const int64_t plane = in_height_ * in_width_;
  if (!resize_) {
    // Direct conversion: one allocation, one pass.
    auto out = torch::empty({out_channels_, out_height_, out_width_}, torch::kFloat32);
    float* o = out.data_ptr<float>();
    const auto& table = unit_table();
    if (in_channels_ == out_channels_) {
      for (int64_t i = 0; i < in_channels_ * plane; ++i) o[i] = table[pixels[i]];
    } else if (in_channels_ == 1) {  // grey -> RGB
      for (int64_t i = 0; i < plane; ++i) o[i] = o[i + plane] = o[i + 2 * plane] = table[pixels[i]];
    } else {  // RGB -> grey
      const uint8_t *r = pixels, *g = pixels + plane, *b = pixels + 2 * plane;
      for (int64_t i = 0; i < plane; ++i)
        o[i] = static_cast<float>((kLumaR * r[i] + kLumaG * g[i] + kLumaB * b[i]) / 127.5 - 1.0);
    }
    return out;
  }
  // Separable resize with sparse taps: columns first over the rows the crop uses, then rows.
  const int64_t planes = in_channels_ == 3 && out_channels_ == 1 ? 1 : in_channels_;
  const int64_t rows = row_hi_ - row_lo_, s_w = out_width_, s_h = out_height_;
  std::vector<float> luma;
  if (planes != in_channels_) {  // RGB -> grey before resizing (both are linear)
    luma.resize(rows * in_width_);
    const uint8_t *r = pixels + row_lo_ * in_width_, *g = r + plane, *b = g + plane;
    for (int64_t i = 0; i < rows * in_width_; ++i)
      luma[i] = static_cast<float>(kLumaR * r[i] + kLumaG * g[i] + kLumaB * b[i]);
  }
  std::vector<float> tmp(rows * s_w);
  auto out = torch::empty({out_channels_, s_h, s_w}, torch::kFloat32);
  float* o = out.data_ptr<float>();
  for (int64_t c = 0; c < planes; ++c) {
    for (int64_t y = 0; y < rows; ++y) {
      float* t = tmp.data() + y * s_w;
      if (luma.empty()) {
        const uint8_t* src = pixels + c * plane + (row_lo_ + y) * in_width_;
        for (int64_t x = 0; x < s_w; ++x) {
          const float* w = cols_.weights.data() + x * cols_.max_taps;
          const uint8_t* p = src + cols_.first[x];
          float acc = 0.0f;
          for (int64_t k = 0; k < cols_.count[x]; ++k) acc += w[k] * p[k];
          t[x] = acc;
        }
      } else {
        const float* src = luma.data() + y * in_width_;
        for (int64_t x = 0; x < s_w; ++x) {
          const float* w = cols_.weights.data() + x * cols_.max_taps;
          const float* p = src + cols_.first[x];
          float acc = 0.0f;
          for (int64_t k = 0; k < cols_.count[x]; ++k) acc += w[k] * p[k];
          t[x] = acc;
        }
      }
    }
    float* dst = o + c * s_h * s_w;
    for (int64_t y = 0; y < s_h; ++y) {
      const float* w = rows_.weights.data() + y * rows_.max_taps;
      float* d = dst + y * s_w;
      for (int64_t x = 0; x < s_w; ++x) d[x] = -1.0f;
      for (int64_t k = 0; k < rows_.count[y]; ++k) {
        const float wk = w[k];
        const float* t = tmp.data() + (rows_.first[y] - row_lo_ + k) * s_w;
        for (int64_t x = 0; x < s_w; ++x) d[x] += wk * t[x];
      }
    }
  }
  if (in_channels_ == 1 && out_channels_ == 3) {
    std::copy(o, o + s_h * s_w, o + s_h * s_w);
    std::copy(o, o + s_h * s_w, o + 2 * s_h * s_w);
  }
  return out;
}

}  // namespace diffuse

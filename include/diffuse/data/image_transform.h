// Image geometry and colour conversion shared by every image dataset:
//   uint8 [C,H,W] -> center-crop to a square -> resize to S x S -> grey/RGB -> float [-1,1].
//
// Resizing is antialiased bilinear (a triangle filter whose support widens with the
// downscaling factor), the same filter as PIL's BILINEAR and torch's
// interpolate(mode=bilinear, align_corners=false, antialias=true): for upscaling it is plain
// bilinear, for downscaling every input pixel contributes (no aliasing). Only pixels inside
// the crop contribute, so it equals cropping first and resizing the crop. The crop keeps the
// central min(H,W) rows/columns, starting at floor((H - W) / 2).
//
// Grey from RGB uses the ITU-R BT.601 luma weights 0.299 R + 0.587 G + 0.114 B (PIL's
// convert("L")); RGB from grey replicates the plane. Pixels map to x / 127.5 - 1, so 0 -> -1
// and 255 -> 1 exactly.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace diffuse {

class ImageTransform {
 public:
  ImageTransform() = default;
  // out_size 0 keeps the native geometry (no crop, no resize, even when not square);
  // out_channels 0 keeps in_channels. in_channels must be 1 or 3 (drop alpha before).
  ImageTransform(int64_t in_channels, int64_t in_height, int64_t in_width, int64_t out_size, int64_t out_channels);

  // `pixels`: planar uint8 [C,H,W], contiguous. Returns a new float32 [C',S,S] tensor.
  torch::Tensor apply(const uint8_t* pixels) const;
  torch::Tensor apply(const torch::Tensor& image_u8) const;  // checks shape and dtype

  std::vector<int64_t> out_shape() const { return {out_channels_, out_height_, out_width_}; }
  bool resizes() const { return resize_; }

 private:
  int64_t in_channels_ = 0, in_height_ = 0, in_width_ = 0;
  int64_t out_channels_ = 0, out_height_ = 0, out_width_ = 0;
  bool resize_ = false;
  // The separable filter as sparse taps: output i reads `count` inputs from `first`, with
  // weights at taps[i * max_taps ...] (the row weights carry the 1/127.5 of the [-1,1] map).
  struct Taps {
    std::vector<int64_t> first, count;
    std::vector<float> weights;
    int64_t max_taps = 0;
  };
  Taps rows_, cols_;
  int64_t row_lo_ = 0, row_hi_ = 0;  // input rows any output reads
};

// The 1-D resampling matrix [out_size, in_size] (float64, rows sum to 1) that maps the window
// [crop_offset, crop_offset + crop_size) of a signal of length in_size onto out_size samples
// with the antialiased bilinear filter described above.
torch::Tensor resize_weights(int64_t in_size, int64_t crop_offset, int64_t crop_size, int64_t out_size);

}  // namespace diffuse

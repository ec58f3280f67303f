// Image output and input: [-1,1] tensors to 8-bit pixels, sample grids, PNG files that carry
// their own description in tEXt/iTXt chunks (written atomically), and decoding with stb_image.
#pragma once

#include <torch/types.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

namespace diffuse {

// [-1,1] float -> uint8 with v = (x + 1) * 127.5 rounded half up (floor(v + 0.5)) and clamped
// to [0,255]: -1 -> 0, 0 -> 128, 1 -> 255, and k / 127.5 - 1 -> k for every k in 0..255.
// NaN maps to 128. Any shape, any device; uint8 input is returned unchanged.
torch::Tensor to_uint8(const torch::Tensor& x);

// Tiles images [N,C,H,W] into one [C, rows (H + p) + p, cols (W + p) + p] image, row-major,
// `nrow` images per row (0 = ceil(sqrt(N))), `padding` pixels of pad_value around and between
// them (torchvision's make_grid layout). Keeps the input's dtype and device (for uint8 input
// the pad value goes through to_uint8).
torch::Tensor make_grid(const torch::Tensor& images, int64_t nrow = 0, int64_t padding = 2, double pad_value = -1.0);

// PNG bytes of an image [C,H,W] (C = 1, 2, 3, 4: grey, grey+alpha, RGB, RGBA), uint8 or float
// in [-1,1], with one text chunk per entry after IHDR: tEXt for ASCII values, iTXt (UTF-8)
// otherwise. Keywords must be 1-79 printable ASCII characters without leading, trailing or
// double spaces (the PNG rule); values must not contain NUL. UsageError otherwise.
std::string encode_png(const torch::Tensor& image, const std::map<std::string, std::string>& text = {});

// encode_png written atomically to `path` (temporary file, fsync, rename). Errors name the path.
void save_png(const std::string& path, const torch::Tensor& image, const std::map<std::string, std::string>& text = {});

// make_grid then save_png.
void save_grid(const std::string& path, const torch::Tensor& images, int64_t nrow = 0,
               const std::map<std::string, std::string>& text = {}, int64_t padding = 2);

// The tEXt, zTXt and iTXt entries of a PNG file (tEXt's Latin-1 converted to UTF-8; a repeated
// keyword keeps its last value). UsageError naming the path for a non-PNG, truncated file or
// a text chunk with a bad CRC.
std::map<std::string, std::string> read_png_text(const std::string& path);

// Decodes a PNG, JPEG or BMP file to uint8 [C,H,W]; channels 0 keeps the file's (1 grey,
// 2 grey+alpha, 3 RGB, 4 RGBA), 1..4 converts (stb_image's conversion). Other formats are not
// read. UsageError naming the file when it cannot be read or decoded, or when its header claims
// more than it can hold (see set_image_decode_floor, and JPEG Huffman tables larger than the
// format allows).
torch::Tensor load_image(const std::string& path, int64_t channels = 0);
// The same for bytes in memory; `name` is used in errors.
torch::Tensor decode_image(const std::string& bytes, const std::string& name, int64_t channels = 0);

// Decoding refuses a header that claims more pixels than its file can hold: beyond a floor that
// any image may reach (16 MiB decoded by default), an image must come from a file of at least
// 1/1100 of its decoded size. The fuzz harness lowers the floor so that each execution stays
// short. Returns the previous floor; not meant to change while images are being decoded.
size_t set_image_decode_floor(size_t bytes);

struct ImageInfo {
  int64_t width = 0, height = 0, channels = 0;
};
// Reads just the header. UsageError naming the file when it is not a decodable image.
ImageInfo image_info(const std::string& path);

}  // namespace diffuse

#include "diffuse/image_io.h"

#include <zlib.h>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "diffuse/data/dataset.h"
#include "diffuse/data/file_bytes.h"
#include "diffuse/error.h"
#include "diffuse/shape_string.h"

// stb's PNG writer compresses with zlib (faster and smaller than its built-in deflate).
static unsigned char* diffuse_stbiw_zlib_compress(unsigned char* data, int data_len, int* out_len, int quality) {
  uLongf size = compressBound(static_cast<uLong>(data_len));
  auto* out = static_cast<unsigned char*>(std::malloc(size));
  if (!out) return nullptr;
  if (compress2(out, &size, data, static_cast<uLong>(data_len), std::clamp(quality, 1, 9)) != Z_OK) {
    std::free(out);
    return nullptr;
  }
  *out_len = static_cast<int>(size);
  return out;
}

// This file owns the stb implementations for the whole program.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#define STBIW_ZLIB_COMPRESS diffuse_stbiw_zlib_compress
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
// Only the decoders image datasets use. Debian's stb_image (2022-09) has known memory-safety
// bugs in its GIF and PSD decoders (CVE-2023-45661 to -45667), its TGA reader takes almost any
// bytes for a header (fuzzing found a 21-byte "TGA" of 8224x8224 pixels) and its PNM header
// parser overflows int on long numbers (found by fuzzing): those formats are not read at all.
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
// stb_image copies zero bytes from a null pointer when a PNG chunk is empty (stbi__getn), which
// is undefined behaviour (UBSan reports it; found by fuzzing, tests/fuzz/regressions/image/):
// its memcpy calls go through one that does nothing for zero bytes.
static void* diffuse_stb_memcpy(void* dst, const void* src, size_t n) { return n ? std::memcpy(dst, src, n) : dst; }
#define memcpy diffuse_stb_memcpy
#include <stb_image.h>
#include <stb_image_write.h>
#undef memcpy
#pragma GCC diagnostic pop

namespace diffuse {

namespace {

constexpr unsigned char kPngSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

// A header's width and height decide how much a decode allocates (w * h * channels bytes): a
// file of a few bytes can ask for gigabytes, so sizes beyond these are refused before decoding.
// No codec stb reads packs pixels more densely than deflate's limit of about 1032:1 (PNG; JPEG,
// RLE and LZW pack less), so more decoded bytes than kMaxDecodeRatio times the file (beyond a
// floor every small image fits under) means a crafted or truncated header: stb would fill the
// missing data with zeros, at the cost of the whole allocation and its processing.
constexpr int kMaxImageSide = 16384;
constexpr double kMaxDecodeRatio = 1100.0;
std::atomic<size_t> g_decode_floor_bytes{size_t{16} * 1024 * 1024};

void check_image_size(const std::string& name, int w, int h, int channels, size_t file_bytes) {
  if (w > kMaxImageSide || h > kMaxImageSide)
    throw UsageError(fmt::format("'{}' is {}x{} pixels: images larger than {}x{} are refused (a corrupt header?)", name,
                                 w, h, kMaxImageSide, kMaxImageSide));
  const double decoded = static_cast<double>(w) * h * std::max(channels, 1);
  const auto floor = static_cast<double>(g_decode_floor_bytes.load(std::memory_order_relaxed));
  if (decoded > floor + kMaxDecodeRatio * static_cast<double>(file_bytes))
    throw UsageError(
        fmt::format("'{}' ({} bytes) claims {}x{} pixels, {:.0f} MB decoded: more than any image codec "
                    "packs into {} bytes (a corrupt or truncated header?)",
                    name, file_bytes, w, h, decoded / 1e6, file_bytes));
}

// stb_image builds a JPEG Huffman table from the 16 code counts of a DHT segment without
// checking that they total at most 256, the size of its tables (upstream fixed it in 2.28):
// a crafted table writes past them (found by fuzzing: tests/fuzz/regressions/image/). Every DHT
// segment stb would read is checked first, following the markers as stb does: fill bytes
// skipped, segments by their length, the tables of one segment while its length lasts (a byte
// past the end reads as 0, as stb's does). `get` returns the next byte or -1 at the end; `skip`
// moves past n bytes. With `header_only` the walk stops at the frame header (SOF0-2), where
// stbi_info stops.
template <class Get, class Skip>
void check_jpeg_huffman_tables(Get get, Skip skip, bool header_only, const std::string& name) {
  // Start of image, after any 0xFF fill bytes (as stb's marker reader takes it), or not a JPEG.
  if (get() != 0xFF) return;
  int soi = get();
  while (soi == 0xFF) soi = get();
  if (soi != 0xD8) return;
  const auto byte = [&] { return std::max(get(), 0); };
  for (;;) {
    int c = get();
    if (c < 0) return;
    if (c != 0xFF) continue;  // stb looks for the next marker
    int m = get();
    while (m == 0xFF) m = get();
    if (m < 0) return;
    if (m == 0x00 || m == 0x01 || (m >= 0xD0 && m <= 0xD8)) continue;  // no length
    if (m == 0xD9) return;                                             // end of image
    if (header_only && m >= 0xC0 && m <= 0xC2) return;
    const int hi = get(), lo = get();
    if (lo < 0) return;
    const int64_t length = (int64_t{hi} << 8 | lo) - 2;
    if (m != 0xC4) {
      if (length > 0) skip(static_cast<size_t>(length));
      continue;
    }
    for (int64_t left = length; left > 0;) {
      byte();  // table class and id
      int64_t codes = 0;
      for (int i = 0; i < 16; ++i) codes += byte();
      if (codes > 256)
        throw UsageError(
            fmt::format("'{}' is a corrupt JPEG: a Huffman table declares {} codes (at most 256)", name, codes));
      skip(static_cast<size_t>(codes));
      left -= 17 + codes;
    }
  }
}

void check_jpeg_bytes(const std::string& bytes, const std::string& name) {
  size_t at = 0;
  check_jpeg_huffman_tables(
      [&] { return at < bytes.size() ? static_cast<int>(static_cast<unsigned char>(bytes[at++])) : -1; },
      [&](size_t n) { at = n > bytes.size() - at ? bytes.size() : at + n; }, /*header_only=*/false, name);
}

void check_jpeg_file(std::FILE* f, const std::string& name) {
  check_jpeg_huffman_tables(
      [&] { return std::fgetc(f); },
      [&](size_t n) { std::fseek(f, static_cast<long>(std::min<size_t>(n, size_t{1} << 30)), SEEK_CUR); },
      /*header_only=*/true, name);
}

void put_be32(std::string& out, uint32_t v) {
  out.push_back(static_cast<char>(v >> 24));
  out.push_back(static_cast<char>(v >> 16));
  out.push_back(static_cast<char>(v >> 8));
  out.push_back(static_cast<char>(v));
}

uint32_t get_be32(const std::string& b, size_t at) {
  const auto* p = reinterpret_cast<const uint8_t*>(b.data() + at);
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | uint32_t(p[3]);
}

// length, type, data, CRC-32 of type + data (PNG spec, section 5.3).
std::string png_chunk(const char type[4], const std::string& data) {
  std::string c;
  put_be32(c, static_cast<uint32_t>(data.size()));
  c.append(type, 4);
  c += data;
  uLong crc = crc32(0L, reinterpret_cast<const Bytef*>(c.data() + 4), static_cast<uInt>(4 + data.size()));
  put_be32(c, static_cast<uint32_t>(crc));
  return c;
}

void check_keyword(const std::string& k) {
  bool ok = !k.empty() && k.size() <= 79 && k.front() != ' ' && k.back() != ' ' && k.find("  ") == std::string::npos;
  for (unsigned char c : k) ok = ok && c >= 32 && c <= 126;
  if (!ok)
    throw UsageError(
        fmt::format("PNG text keyword '{}' is invalid: keywords are 1-79 printable ASCII characters "
                    "without leading, trailing or double spaces",
                    k));
}

bool is_ascii(const std::string& s) {
  for (unsigned char c : s)
    if (c >= 0x80) return false;
  return true;
}

std::string latin1_to_utf8(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back(static_cast<char>(0xc0 | (c >> 6)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3f)));
    }
  }
  return out;
}

torch::Tensor to_hwc_u8(const torch::Tensor& image) {
  if (image.dim() != 3 || image.size(0) < 1 || image.size(0) > 4 || image.size(1) < 1 || image.size(2) < 1)
    throw UsageError(fmt::format("an image to save must be [C,H,W] with C in 1..4 and H, W >= 1, got {}",
                                 shape_string(image.sizes().vec())));
  if (image.size(1) > (1 << 24) || image.size(2) > (1 << 24))
    throw UsageError(fmt::format("image {} is too large for PNG", shape_string(image.sizes().vec())));
  return to_uint8(image).permute({1, 2, 0}).contiguous().cpu();
}

}  // namespace

torch::Tensor to_uint8(const torch::Tensor& x) {
  if (x.scalar_type() == torch::kUInt8) return x;
  // floor((x + 1) * 127.5 + 0.5), clamped: round half up. The truncating cast is floor here
  // because the value is already clamped to >= 0.
  auto v = x.to(torch::kFloat32).add(1.0).mul_(127.5).add_(0.5).clamp_(0.0, 255.0);
  v = torch::nan_to_num(v, 128.0);
  return v.to(torch::kUInt8);
}

torch::Tensor make_grid(const torch::Tensor& images, int64_t nrow, int64_t padding, double pad_value) {
  if (images.dim() != 4 || images.size(0) < 1)
    throw UsageError(
        fmt::format("make_grid needs images [N,C,H,W] with N >= 1, got {}", shape_string(images.sizes().vec())));
  if (nrow < 0 || padding < 0)
    throw UsageError(fmt::format("make_grid: nrow ({}) and padding ({}) must be >= 0", nrow, padding));
  const int64_t n = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
  const int64_t cols =
      std::min(n, nrow > 0 ? nrow : static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(n)))));
  const int64_t rows = (n + cols - 1) / cols;
  const int64_t cell_h = h + padding, cell_w = w + padding;
  torch::Tensor grid;
  if (images.scalar_type() == torch::kUInt8)
    grid = torch::full({c, rows * cell_h + padding, cols * cell_w + padding},
                       to_uint8(torch::tensor(pad_value)).item<uint8_t>(), images.options());
  else grid = torch::full({c, rows * cell_h + padding, cols * cell_w + padding}, pad_value, images.options());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = i / cols, col = i % cols;
    grid.narrow(1, r * cell_h + padding, h).narrow(2, col * cell_w + padding, w).copy_(images[i]);
  }
  return grid;
}

std::string encode_png(const torch::Tensor& image, const std::map<std::string, std::string>& text) {
  for (const auto& [k, v] : text) {
    check_keyword(k);
    if (v.find('\0') != std::string::npos)
      throw UsageError(fmt::format("PNG text value of '{}' contains a NUL byte", k));
  }
  const auto hwc = to_hwc_u8(image);
  const int h = static_cast<int>(hwc.size(0)), w = static_cast<int>(hwc.size(1)), c = static_cast<int>(hwc.size(2));
  int len = 0;
  unsigned char* mem = stbi_write_png_to_mem(hwc.data_ptr<uint8_t>(), w * c, w, h, c, &len);
  if (!mem) throw std::runtime_error(fmt::format("PNG encoding of a {}x{}x{} image failed", c, h, w));
  std::string png(reinterpret_cast<const char*>(mem), static_cast<size_t>(len));
  STBIW_FREE(mem);
  // Text chunks go right after IHDR (signature 8 bytes + IHDR chunk 4 + 4 + 13 + 4 = 33).
  if (png.size() < 33 || png.compare(12, 4, "IHDR") != 0 || get_be32(png, 8) != 13)
    throw std::runtime_error("PNG encoder produced an unexpected layout");
  std::string chunks;
  for (const auto& [k, v] : text) {
    if (is_ascii(v)) {
      chunks += png_chunk("tEXt", k + '\0' + v);
    } else {
      // iTXt: keyword, NUL, compression flag 0, method 0, empty language tag and translated
      // keyword (each NUL-terminated), then the UTF-8 text.
      std::string data = k;
      data.push_back('\0');
      data.push_back('\0');
      data.push_back('\0');
      data.push_back('\0');
      data.push_back('\0');
      chunks += png_chunk("iTXt", data + v);
    }
  }
  png.insert(33, chunks);
  return png;
}

void save_png(const std::string& path, const torch::Tensor& image, const std::map<std::string, std::string>& text) {
  std::string png;
  try {
    png = encode_png(image, text);
  } catch (const UsageError& e) {
    throw UsageError(fmt::format("cannot save '{}': {}", path, e.what()));
  }
  write_file_atomic(path, png);
}

void save_grid(const std::string& path, const torch::Tensor& images, int64_t nrow,
               const std::map<std::string, std::string>& text, int64_t padding) {
  save_png(path, make_grid(images, nrow, padding), text);
}

std::map<std::string, std::string> read_png_text(const std::string& path) {
  const std::string b = read_file_bytes(path);
  if (b.size() < 8 || std::memcmp(b.data(), kPngSignature, 8) != 0)
    throw UsageError(fmt::format("'{}' is not a PNG file (bad signature)", path));
  std::map<std::string, std::string> out;
  size_t pos = 8;
  for (;;) {
    if (pos + 12 > b.size()) throw UsageError(fmt::format("'{}' is truncated (no IEND chunk)", path));
    const uint32_t len = get_be32(b, pos);
    const std::string type = b.substr(pos + 4, 4);
    if (len > b.size() - pos - 12)
      throw UsageError(fmt::format("'{}' is truncated: chunk {} at byte {} claims {} bytes, {} remain", path, type, pos,
                                   len, b.size() - pos - 12));
    if (type == "IEND") break;
    if (type == "tEXt" || type == "zTXt" || type == "iTXt") {
      const uint32_t stored = get_be32(b, pos + 8 + len);
      const uLong crc = crc32(0L, reinterpret_cast<const Bytef*>(b.data() + pos + 4), len + 4);
      if (stored != static_cast<uint32_t>(crc))
        throw UsageError(fmt::format("'{}': {} chunk at byte {} has a bad CRC", path, type, pos));
      const std::string data = b.substr(pos + 8, len);
      const size_t nul = data.find('\0');
      if (nul == std::string::npos || nul == 0)
        throw UsageError(fmt::format("'{}': {} chunk at byte {} has no keyword", path, type, pos));
      const std::string key = latin1_to_utf8(data.substr(0, nul));
      const std::string chunk_name = fmt::format("{} (the {} chunk '{}')", path, type, key);
      if (type == "tEXt") {
        out[key] = latin1_to_utf8(data.substr(nul + 1));
      } else if (type == "zTXt") {
        if (nul + 2 > data.size() || data[nul + 1] != 0)
          throw UsageError(fmt::format("'{}': bad zTXt chunk", chunk_name));
        out[key] = latin1_to_utf8(zlib_decompress(data.data() + nul + 2, data.size() - nul - 2, chunk_name));
      } else {  // iTXt
        if (nul + 3 > data.size()) throw UsageError(fmt::format("'{}': bad iTXt chunk", chunk_name));
        const bool compressed = data[nul + 1] != 0;
        const size_t lang_end = data.find('\0', nul + 3);
        const size_t tkey_end = lang_end == std::string::npos ? lang_end : data.find('\0', lang_end + 1);
        if (tkey_end == std::string::npos) throw UsageError(fmt::format("'{}': bad iTXt chunk", chunk_name));
        const std::string body = data.substr(tkey_end + 1);
        out[key] = compressed ? zlib_decompress(body.data(), body.size(), chunk_name) : body;
      }
    }
    pos += 12 + len;
  }
  return out;
}

torch::Tensor decode_image(const std::string& bytes, const std::string& name, int64_t channels) {
  if (channels < 0 || channels > 4)
    throw std::invalid_argument(fmt::format("decode_image: channels must be 0..4, got {}", channels));
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max()))
    throw UsageError(fmt::format("'{}' is too large to decode ({} bytes)", name, bytes.size()));
  check_jpeg_bytes(bytes, name);
  int w = 0, h = 0, c = 0;
  const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
  if (stbi_info_from_memory(data, static_cast<int>(bytes.size()), &w, &h, &c))
    check_image_size(name, w, h, std::max<int>(c, static_cast<int>(channels)), bytes.size());
  unsigned char* px =
      stbi_load_from_memory(data, static_cast<int>(bytes.size()), &w, &h, &c, static_cast<int>(channels));
  if (!px) throw UsageError(fmt::format("cannot decode image '{}': {}", name, stbi_failure_reason()));
  const int64_t cc = channels > 0 ? channels : c;
  torch::Tensor out;
  try {
    // clone, not contiguous(): for one channel the permuted view is already contiguous and
    // would still point into stb's buffer.
    out = torch::from_blob(px, {h, w, cc}, torch::kUInt8).permute({2, 0, 1}).clone(at::MemoryFormat::Contiguous);
  } catch (...) {
    stbi_image_free(px);
    throw;
  }
  stbi_image_free(px);
  return out;
}

size_t set_image_decode_floor(size_t bytes) { return g_decode_floor_bytes.exchange(bytes); }

torch::Tensor load_image(const std::string& path, int64_t channels) {
  return decode_image(read_file_bytes(path), path, channels);
}

ImageInfo image_info(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw UsageError(fmt::format("cannot open '{}': {}", path, std::strerror(errno)));
  int w = 0, h = 0, c = 0;
  int ok = 0;
  try {
    check_jpeg_file(f, path);
    std::rewind(f);
    ok = stbi_info_from_file(f, &w, &h, &c);
  } catch (...) {
    std::fclose(f);
    throw;
  }
  std::fclose(f);
  if (!ok) throw UsageError(fmt::format("'{}' is not a decodable image: {}", path, stbi_failure_reason()));
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  check_image_size(path, w, h, c, ec ? 0 : static_cast<size_t>(size));
  return {w, h, c};
}

}  // namespace diffuse

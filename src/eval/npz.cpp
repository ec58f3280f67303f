#include "diffuse/eval/npz.h"

#include <fmt/format.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

#include "diffuse/data/file_bytes.h"
#include "diffuse/error.h"

namespace diffuse {

namespace {

uint16_t u16(const std::string& b, size_t p) {
  return static_cast<uint16_t>(static_cast<uint8_t>(b[p]) | static_cast<uint8_t>(b[p + 1]) << 8);
}
uint32_t u32(const std::string& b, size_t p) { return u16(b, p) | static_cast<uint32_t>(u16(b, p + 2)) << 16; }
uint64_t u64(const std::string& b, size_t p) { return u32(b, p) | static_cast<uint64_t>(u32(b, p + 4)) << 32; }

std::string read_all(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError(fmt::format("{} '{}' cannot be opened", what, path));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw UsageError(fmt::format("{} '{}' could not be read", what, path));
  return bytes;
}

// The value text after 'key': in the .npy header dict.
std::string header_value(const std::string& header, const std::string& key, const std::string& origin) {
  const auto k = header.find("'" + key + "'");
  if (k == std::string::npos) throw UsageError(fmt::format("{}: .npy header has no '{}': {}", origin, key, header));
  auto p = header.find(':', k);
  if (p == std::string::npos) throw UsageError(fmt::format("{}: malformed .npy header: {}", origin, header));
  ++p;
  while (p < header.size() && header[p] == ' ') ++p;
  if (p < header.size() && header[p] == '(') return header.substr(p + 1, header.find(')', p) - p - 1);
  if (p < header.size() && header[p] == '\'') return header.substr(p + 1, header.find('\'', p + 1) - p - 1);
  return header.substr(p, header.find_first_of(",}", p) - p);
}

}  // namespace

torch::Tensor parse_npy(const std::string& b, const std::string& origin) {
  if (b.size() < 10 || b.compare(0, 6, "\x93NUMPY") != 0)
    throw UsageError(fmt::format("{}: not a .npy array (no \\x93NUMPY magic)", origin));
  const int major = static_cast<uint8_t>(b[6]);
  size_t hlen, start;
  if (major == 1) hlen = u16(b, 8), start = 10;
  else if ((major == 2 || major == 3) && b.size() >= 12) hlen = u32(b, 8), start = 12;
  else throw UsageError(fmt::format("{}: unsupported .npy version {}", origin, major));
  if (start + hlen > b.size()) throw UsageError(fmt::format("{}: truncated .npy header", origin));
  const std::string header = b.substr(start, hlen);
  const std::string descr = header_value(header, "descr", origin);
  const bool fortran = header_value(header, "fortran_order", origin).find("True") != std::string::npos;
  std::vector<int64_t> shape;
  {
    const std::string s = header_value(header, "shape", origin);
    size_t p = 0;
    while (p < s.size()) {
      const auto q = s.find(',', p);
      std::string item = s.substr(p, q == std::string::npos ? std::string::npos : q - p);
      const auto a = item.find_first_not_of(" L"), e = item.find_last_not_of(" L");
      if (a != std::string::npos) {
        try {
          shape.push_back(std::stoll(item.substr(a, e - a + 1)));
        } catch (const std::exception&) {
          throw UsageError(fmt::format("{}: bad shape in .npy header: {}", origin, header));
        }
      }
      if (q == std::string::npos) break;
      p = q + 1;
    }
  }
  torch::ScalarType type;
  size_t item;
  const bool little = !descr.empty() && (descr[0] == '<' || descr[0] == '|' || descr[0] == '=');
  const std::string code = descr.size() > 1 ? descr.substr(1) : "";
  if (little && code == "f8") type = torch::kFloat64, item = 8;
  else if (little && code == "f4") type = torch::kFloat32, item = 4;
  else if (little && code == "i8") type = torch::kLong, item = 8;
  else if (little && code == "i4") type = torch::kInt, item = 4;
  else if (little && code == "u1") type = torch::kByte, item = 1;  // images, as image_sample.py saves them
  else
    throw UsageError(
        fmt::format("{}: unsupported .npy dtype '{}' (expected little-endian f8, f4, i8, i4 or u1)", origin, descr));
  const size_t data = start + hlen;
  // The element count, bounded by the data present before each multiplication (it cannot wrap).
  for (auto d : shape)
    if (d < 0) throw UsageError(fmt::format("{}: negative dimension in .npy header", origin));
  const bool empty = std::find(shape.begin(), shape.end(), 0) != shape.end();
  uint64_t count = empty ? 0 : 1;
  for (auto d : shape) {
    if (empty) break;
    if (count > (b.size() - data) / item / static_cast<uint64_t>(d))
      throw UsageError(fmt::format("{}: .npy shape ({}) of {} needs more than the {} bytes of data there are", origin,
                                   fmt::join(shape, ", "), descr, b.size() - data));
    count *= static_cast<uint64_t>(d);
  }
  // An empty array holds no data, but LibTorch still derives strides from the other sizes,
  // and their product must not overflow there.
  uint64_t span = 1;
  for (auto d : shape) {
    if (d == 0) continue;
    if (span > (uint64_t{1} << 62) / static_cast<uint64_t>(d))
      throw UsageError(fmt::format("{}: .npy shape ({}) is empty, but its other dimensions multiply past 2^62", origin,
                                   fmt::join(shape, ", ")));
    span *= static_cast<uint64_t>(d);
  }
  if (b.size() - data != static_cast<size_t>(count) * item)
    throw UsageError(fmt::format("{}: .npy data has {} bytes, shape ({}) of {} needs {}", origin, b.size() - data,
                                 fmt::join(shape, ", "), descr, static_cast<size_t>(count) * item));
  // Fortran order: the bytes are the transpose laid out in C order.
  std::vector<int64_t> stored(shape);
  if (fortran) std::reverse(stored.begin(), stored.end());
  auto t = torch::empty(stored, torch::TensorOptions().dtype(type));
  if (count > 0) std::memcpy(t.data_ptr(), b.data() + data, static_cast<size_t>(count) * item);
  if (fortran && t.dim() > 1) {
    std::vector<int64_t> perm(static_cast<size_t>(t.dim()));
    for (int64_t i = 0; i < t.dim(); ++i) perm[static_cast<size_t>(i)] = t.dim() - 1 - i;
    t = t.permute(perm).contiguous();
  }
  return t;
}

bool is_npz_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string head(30, '\0');
  if (!in.read(head.data(), 30) || !is_zip(head)) return false;
  std::string name(u16(head, 26), '\0');
  if (!in.read(name.data(), static_cast<std::streamsize>(name.size()))) return false;
  return name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0;
}

std::map<std::string, torch::Tensor> read_npz(const std::string& path) {
  const std::string b = read_all(path, ".npz file");
  std::map<std::string, torch::Tensor> out;
  size_t pos = 0;
  // Walk the local file headers (ZIP spec 4.3.7); numpy writes seekable archives, so every
  // header carries its final sizes (in a ZIP64 extra field when they are 0xFFFFFFFF).
  while (pos + 4 <= b.size() && u32(b, pos) == 0x04034b50u) {
    if (pos + 30 > b.size()) throw UsageError(fmt::format(".npz file '{}' is truncated", path));
    const uint16_t flags = u16(b, pos + 6), method = u16(b, pos + 8);
    const uint32_t crc = u32(b, pos + 14);
    uint64_t csize = u32(b, pos + 18), usize = u32(b, pos + 22);
    const size_t nlen = u16(b, pos + 26), xlen = u16(b, pos + 28);
    if (pos + 30 + nlen + xlen > b.size()) throw UsageError(fmt::format(".npz file '{}' is truncated", path));
    const std::string name = b.substr(pos + 30, nlen);
    const std::string origin = fmt::format(".npz file '{}', entry '{}'", path, name);
    if (csize == 0xFFFFFFFFu || usize == 0xFFFFFFFFu) {
      bool found = false;
      const size_t extra_end = pos + 30 + nlen + xlen;
      for (size_t x = pos + 30 + nlen; x + 4 <= extra_end;) {
        const uint16_t id = u16(b, x), len = u16(b, x + 2);
        if (x + 4 + len > extra_end)
          throw UsageError(fmt::format("{}: extra field 0x{:04x} claims {} bytes, {} remain in the header's extra data",
                                       origin, id, len, extra_end - x - 4));
        if (id == 0x0001) {
          size_t f = x + 4;
          if (usize == 0xFFFFFFFFu && f + 8 <= x + 4 + len) usize = u64(b, f), f += 8;
          if (csize == 0xFFFFFFFFu && f + 8 <= x + 4 + len) csize = u64(b, f);
          found = true;
        }
        x += 4 + len;
      }
      if (!found) throw UsageError(fmt::format("{}: ZIP64 sizes missing", origin));
    }
    if (flags & 0x1) throw UsageError(fmt::format("{}: encrypted entries are not supported", origin));
    if ((flags & 0x8) && csize == 0)
      throw UsageError(fmt::format("{}: streamed zip entries (sizes after the data) are not supported", origin));
    const size_t data = pos + 30 + nlen + xlen;
    if (csize > b.size() - data) throw UsageError(fmt::format("{}: entry runs past the end of the file", origin));
    std::string payload;
    if (method == 0) payload = b.substr(data, csize);
    else if (method == 8 && usize / 1032 > csize)  // deflate expands at most 1032:1
      throw UsageError(
          fmt::format("{}: {} compressed bytes cannot inflate to the {} bytes the entry claims", origin, csize, usize));
    else if (method == 8) payload = inflate_raw(b.data() + data, csize, usize, origin);
    else throw UsageError(fmt::format("{}: unsupported compression method {}", origin, method));
    if (payload.size() != usize) throw UsageError(fmt::format("{}: size mismatch", origin));
    if (crc32(0L, reinterpret_cast<const Bytef*>(payload.data()), static_cast<uInt>(payload.size())) != crc)
      throw UsageError(fmt::format("{}: CRC mismatch (corrupt file)", origin));
    std::string key = name;
    if (key.size() > 4 && key.compare(key.size() - 4, 4, ".npy") == 0) key.resize(key.size() - 4);
    out[key] = parse_npy(payload, origin);
    pos = data + csize;
  }
  if (out.empty()) throw UsageError(fmt::format(".npz file '{}' holds no arrays (not a zip archive?)", path));
  return out;
}

}  // namespace diffuse

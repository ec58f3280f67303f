// Byte-level writers for tests and fuzz seeds: NumPy .npy payloads, zip archives laid out as
// np.savez writes them, zlib deflate, and a plain (non-atomic, fast) file write.
#pragma once

#include <zlib.h>

#include <cstdint>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace diffuse::test_bytes {

inline void put16(std::string& s, uint16_t v) { s += char(v & 0xff), s += char(v >> 8); }
inline void put32(std::string& s, uint32_t v) { put16(s, v & 0xffff), put16(s, v >> 16); }
inline void put64(std::string& s, uint64_t v) { put32(s, v & 0xffffffffu), put32(s, v >> 32); }

// zlib's deflate of `in`: window_bits -15 raw (zip entries), 15 zlib, 31 gzip.
inline std::string deflate_bytes(const std::string& in, int window_bits) {
  z_stream z{};
  deflateInit2(&z, 6, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&z, in.size()) + 32, '\0');  // + room for a gzip header
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  deflate(&z, Z_FINISH);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

// A .npy v1.0 file as numpy writes it: magic, version, header dict padded with spaces to a
// multiple of 64 bytes and ended by '\n', then the raw little-endian data.
inline std::string npy(const std::string& descr, bool fortran, const std::vector<int64_t>& shape, const void* data,
                       size_t bytes) {
  std::string sh;
  for (auto d : shape) sh += std::to_string(d) + ", ";
  if (shape.size() > 1) sh.resize(sh.size() - 2);
  std::string header =
      "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") + ", 'shape': (" + sh + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string out = "\x93NUMPY";
  out += char(1), out += char(0);
  put16(out, static_cast<uint16_t>(header.size()));
  out += header;
  out.append(static_cast<const char*>(data), bytes);
  return out;
}

// A zip archive laid out as Python's zipfile writes np.savez files (force_zip64: the 32-bit
// size fields hold 0xFFFFFFFF and a ZIP64 extra field carries the sizes), with a central
// directory at the end (which the reader does not need).
inline std::string zip(const std::vector<std::pair<std::string, std::string>>& entries, bool deflate,
                       bool corrupt_crc = false) {
  std::string out, central;
  for (const auto& [name, payload] : entries) {
    const std::string data = deflate ? deflate_bytes(payload, -MAX_WBITS) : payload;
    uint32_t crc = crc32(0L, reinterpret_cast<const Bytef*>(payload.data()), static_cast<uInt>(payload.size()));
    if (corrupt_crc) crc ^= 1;
    const uint32_t offset = static_cast<uint32_t>(out.size());
    put32(out, 0x04034b50u);
    put16(out, 45), put16(out, 0), put16(out, deflate ? 8 : 0), put16(out, 0), put16(out, 0x21);
    put32(out, crc), put32(out, 0xFFFFFFFFu), put32(out, 0xFFFFFFFFu);
    put16(out, static_cast<uint16_t>(name.size())), put16(out, 20);
    out += name;
    put16(out, 1), put16(out, 16), put64(out, payload.size()), put64(out, data.size());
    out += data;
    put32(central, 0x02014b50u);
    put16(central, 45), put16(central, 45), put16(central, 0), put16(central, deflate ? 8 : 0);
    put16(central, 0), put16(central, 0x21), put32(central, crc);
    put32(central, static_cast<uint32_t>(data.size())), put32(central, static_cast<uint32_t>(payload.size()));
    put16(central, static_cast<uint16_t>(name.size())), put16(central, 0), put16(central, 0);
    put16(central, 0), put16(central, 0), put32(central, 0), put32(central, offset);
    central += name;
  }
  const uint32_t cd_offset = static_cast<uint32_t>(out.size());
  out += central;
  put32(out, 0x06054b50u);
  put16(out, 0), put16(out, 0), put16(out, static_cast<uint16_t>(entries.size())),
      put16(out, static_cast<uint16_t>(entries.size()));
  put32(out, static_cast<uint32_t>(central.size())), put32(out, cd_offset), put16(out, 0);
  return out;
}

// Plain write, no fsync: fuzz targets write a file per execution.
inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

}  // namespace diffuse::test_bytes

#include "diffuse/zip_archive.h"

#include <fmt/format.h>
#include <zlib.h>

#include <algorithm>
#include <set>
#include <utility>

#include "diffuse/data/file_bytes.h"
#include "diffuse/error.h"

namespace diffuse {

namespace {

constexpr uint32_t kEndOfDirectory = 0x06054b50u, kZip64End = 0x06064b50u, kZip64Locator = 0x07064b50u,
                   kDirectoryEntry = 0x02014b50u, kLocalHeader = 0x04034b50u;

// Little-endian fields at checked positions: a read past `end` is the caller's UsageError.
struct Reader {
  const std::string& b;
  const std::string& origin;
  void need(uint64_t pos, uint64_t n, const char* what) const {
    if (pos > b.size() || n > b.size() - pos)
      throw UsageError(fmt::format("zip archive '{}': the {} at byte {} runs past the end of the file ({} bytes)",
                                   origin, what, pos, b.size()));
  }
  uint64_t le(uint64_t pos, int n) const {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = v << 8 | static_cast<uint8_t>(b[pos + static_cast<uint64_t>(i)]);
    return v;
  }
  uint16_t u16(uint64_t p) const { return static_cast<uint16_t>(le(p, 2)); }
  uint32_t u32(uint64_t p) const { return static_cast<uint32_t>(le(p, 4)); }
  uint64_t u64(uint64_t p) const { return le(p, 8); }
};

struct Directory {
  uint64_t count = 0, offset = 0, size = 0;
};

// The end-of-central-directory record is the last one in the file: it sits in the final
// 22 + 65535 bytes (its comment is at most 65535 bytes long).
Directory find_directory(const Reader& r) {
  const auto& b = r.b;
  if (b.size() < 22)
    throw UsageError(fmt::format("zip archive '{}' is too short ({} bytes) to be one", r.origin, b.size()));
  const uint64_t lowest = b.size() > 22 + 65535 ? b.size() - 22 - 65535 : 0;
  for (uint64_t p = b.size() - 22 + 1; p-- > lowest;) {
    if (r.u32(p) != kEndOfDirectory || p + 22 + r.u16(p + 20) != b.size()) continue;
    Directory d{r.u16(p + 10), r.u32(p + 16), r.u32(p + 12)};
    if (r.u16(p + 4) != 0 || r.u16(p + 6) != 0 || r.u16(p + 8) != r.u16(p + 10))
      throw UsageError(fmt::format("zip archive '{}' spans several disks, which is not supported", r.origin));
    const bool zip64 = d.count == 0xFFFF || d.offset == 0xFFFFFFFFu || d.size == 0xFFFFFFFFu;
    if (!zip64) return d;
    if (p < 20 || r.u32(p - 20) != kZip64Locator)
      throw UsageError(fmt::format("zip archive '{}': ZIP64 sizes without a ZIP64 locator", r.origin));
    const uint64_t z = r.u64(p - 20 + 8);
    r.need(z, 56, "ZIP64 end of central directory");
    if (r.u32(z) != kZip64End || z + 56 > p - 20)
      throw UsageError(fmt::format("zip archive '{}': no ZIP64 end of central directory at byte {}", r.origin, z));
    return {r.u64(z + 32), r.u64(z + 48), r.u64(z + 40)};
  }
  throw UsageError(
      fmt::format("zip archive '{}' has no end of central directory record (truncated, or not a zip "
                  "file)",
                  r.origin));
}

// The ZIP64 extended-information extra field replaces, in this order, each 32-bit field that
// holds 0xFFFFFFFF (APPNOTE 4.5.3).
void apply_zip64_extra(const Reader& r, uint64_t x, uint64_t end, ZipEntry& e, uint64_t& local,
                       const std::string& what) {
  while (x + 4 <= end) {
    const uint16_t id = r.u16(x), len = r.u16(x + 2);
    if (x + 4 + len > end)
      throw UsageError(fmt::format("{}: extra field 0x{:04x} claims {} bytes, {} remain", what, id, len, end - x - 4));
    if (id == 0x0001) {
      uint64_t f = x + 4;
      const uint64_t stop = x + 4 + len;
      for (uint64_t* v : {&e.size, &e.compressed_size, &local}) {
        if (*v != 0xFFFFFFFFu) continue;
        if (f + 8 > stop) throw UsageError(fmt::format("{}: ZIP64 extra field is too short", what));
        *v = r.u64(f);
        f += 8;
      }
    }
    x += 4 + len;
  }
}

ZipEntry read_entry(const Reader& r, uint64_t& p, uint64_t directory_end) {
  r.need(p, 46, "central directory entry");
  if (p + 46 > directory_end || r.u32(p) != kDirectoryEntry)
    throw UsageError(fmt::format("zip archive '{}': bad central directory entry at byte {}", r.origin, p));
  ZipEntry e;
  const uint16_t flags = r.u16(p + 8);
  e.method = r.u16(p + 10);
  e.crc32 = r.u32(p + 16);
  e.compressed_size = r.u32(p + 20);
  e.size = r.u32(p + 24);
  const uint64_t nlen = r.u16(p + 28), xlen = r.u16(p + 30), clen = r.u16(p + 32);
  uint64_t local = r.u32(p + 42);
  if (p + 46 + nlen + xlen + clen > directory_end)
    throw UsageError(
        fmt::format("zip archive '{}': central directory entry at byte {} runs past the directory", r.origin, p));
  e.name = r.b.substr(p + 46, nlen);
  const std::string what = fmt::format("zip archive '{}', entry '{}'", r.origin, e.name);
  apply_zip64_extra(r, p + 46 + nlen, p + 46 + nlen + xlen, e, local, what);
  p += 46 + nlen + xlen + clen;
  if (flags & 0x1) throw UsageError(fmt::format("{}: encrypted entries are not supported", what));
  if (e.method != 0 && e.method != 8)
    throw UsageError(fmt::format("{}: compression method {} (expected 0, stored, or 8, deflate)", what, e.method));
  r.need(local, 30, "local header");
  if (r.u32(local) != kLocalHeader) throw UsageError(fmt::format("{}: no local header at byte {}", what, local));
  const uint64_t lnlen = r.u16(local + 26), lxlen = r.u16(local + 28);
  r.need(local + 30, lnlen + lxlen, "local header");
  if (r.b.compare(local + 30, lnlen, e.name) != 0)
    throw UsageError(fmt::format("{}: the local header names another entry", what));
  e.data_offset = local + 30 + lnlen + lxlen;
  r.need(e.data_offset, e.compressed_size, "entry data");
  if (e.method == 0 && e.compressed_size != e.size)
    throw UsageError(
        fmt::format("{}: stored entry with {} compressed and {} uncompressed bytes", what, e.compressed_size, e.size));
  if (e.method == 8 && e.size / 1032 > e.compressed_size)  // deflate expands at most 1032:1
    throw UsageError(fmt::format("{}: {} compressed bytes cannot inflate to the {} bytes the entry claims", what,
                                 e.compressed_size, e.size));
  return e;
}

}  // namespace

ZipArchive::ZipArchive(const std::string& bytes, std::string origin) : bytes_(bytes), origin_(std::move(origin)) {
  const Reader r{bytes_, origin_};
  const Directory d = find_directory(r);
  r.need(d.offset, d.size, "central directory");
  if (d.count > d.size / 46)
    throw UsageError(fmt::format("zip archive '{}': {} entries cannot fit in a {}-byte central directory", origin_,
                                 d.count, d.size));
  entries_.reserve(static_cast<size_t>(d.count));
  std::set<std::string> names;
  uint64_t p = d.offset;
  for (uint64_t i = 0; i < d.count; ++i) {
    entries_.push_back(read_entry(r, p, d.offset + d.size));
    if (!names.insert(entries_.back().name).second)
      throw UsageError(fmt::format("zip archive '{}' holds two entries named '{}'", origin_, entries_.back().name));
  }
}

const ZipEntry* ZipArchive::find(const std::string& name) const {
  const auto it = std::find_if(entries_.begin(), entries_.end(), [&](const ZipEntry& e) { return e.name == name; });
  return it == entries_.end() ? nullptr : &*it;
}

std::string ZipArchive::read(const ZipEntry& e) const {
  const std::string what = fmt::format("zip archive '{}', entry '{}'", origin_, e.name);
  std::string out = e.method == 0 ? bytes_.substr(e.data_offset, e.compressed_size)
                                  : inflate_raw(bytes_.data() + e.data_offset, e.compressed_size, e.size, what);
  uLong crc = crc32(0L, Z_NULL, 0);
  for (size_t done = 0; done < out.size();) {
    const size_t n = std::min<size_t>(out.size() - done, size_t{1} << 30);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(out.data() + done), static_cast<uInt>(n));
    done += n;
  }
  if (crc != e.crc32) throw UsageError(fmt::format("{}: CRC mismatch (corrupt file)", what));
  return out;
}

}  // namespace diffuse

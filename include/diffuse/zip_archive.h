// A zip archive read through its central directory (APPNOTE.TXT 4.3.12-4.3.16, with ZIP64), as
// PyTorch writes torch.save files: local headers carry no sizes (flag bit 3; the sizes are in
// the central directory), entries are stored and padded to 64-byte alignment by an extra field.
// Every count, offset and size is checked against the file before it is used, so a crafted
// archive gets a UsageError naming it, never a read out of bounds.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace diffuse {

struct ZipEntry {
  std::string name;
  uint64_t data_offset = 0;  // of the entry's (compressed) bytes in the archive
  uint64_t compressed_size = 0;
  uint64_t size = 0;    // uncompressed
  uint16_t method = 0;  // 0 stored, 8 deflate
  uint32_t crc32 = 0;
};

class ZipArchive {
 public:
  // `bytes` is the whole archive and must outlive this object; `origin` names it in errors.
  ZipArchive(const std::string& bytes, std::string origin);

  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(const std::string& name) const;  // nullptr when absent
  // The entry's bytes, inflated and checked against its CRC-32.
  std::string read(const ZipEntry& entry) const;
  const std::string& origin() const { return origin_; }

 private:
  const std::string& bytes_;
  std::string origin_;
  std::vector<ZipEntry> entries_;
};

}  // namespace diffuse

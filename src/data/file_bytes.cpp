#include "diffuse/data/file_bytes.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <thread>

#include <fmt/format.h>

#include "diffuse/error.h"

namespace diffuse {

namespace {

// Feeds `in` through an inflate stream set up with `window_bits` (15 + 16: gzip, 15: zlib).
// A gzip file may hold several members one after another (gzip's own rule).
std::string inflate_all(const char* in, size_t in_size, int window_bits, size_t size_hint,
                        const std::string& name, const char* what) {
  z_stream zs{};
  if (inflateInit2(&zs, window_bits) != Z_OK) throw std::runtime_error("zlib: inflateInit2 failed");
  std::string out;
  out.resize(std::max<size_t>(size_hint, 1 << 16));
  size_t in_pos = 0, out_pos = 0;
  constexpr size_t kChunk = size_t{1} << 30;  // z_stream counts are 32-bit
  auto fail = [&](const std::string& msg) {
    inflateEnd(&zs);
    throw UsageError(fmt::format("'{}': {}", name, msg));
  };
  for (;;) {
    if (zs.avail_in == 0 && in_pos < in_size) {
      const size_t n = std::min(in_size - in_pos, kChunk);
      zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in + in_pos));
      zs.avail_in = static_cast<uInt>(n);
      in_pos += n;
    }
    if (out_pos == out.size()) out.resize(out.size() * 2);
    const size_t room = std::min(out.size() - out_pos, kChunk);
    zs.next_out = reinterpret_cast<Bytef*>(&out[out_pos]);
    zs.avail_out = static_cast<uInt>(room);
    const int ret = inflate(&zs, Z_NO_FLUSH);
    out_pos += room - zs.avail_out;
    const bool input_done = zs.avail_in == 0 && in_pos == in_size;
    if (ret == Z_STREAM_END) {
      if (input_done) break;
      const bool another_member = window_bits > 15 && zs.avail_in >= 2 && zs.next_in[0] == 0x1f && zs.next_in[1] == 0x8b;
      if (!another_member)
        fail(fmt::format("unexpected data after the end of the {} stream", what));
      inflateReset(&zs);
    } else if (ret == Z_OK) {
      continue;
    } else if (ret == Z_BUF_ERROR) {
      if (input_done) fail(fmt::format("truncated {} stream (data ends before the stream does)", what));
    } else {
      fail(fmt::format("corrupt {} data ({})", what, zs.msg ? zs.msg : zError(ret)));
    }
  }
  inflateEnd(&zs);
  out.resize(out_pos);
  return out;
}

}  // namespace

std::string read_file_bytes(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw UsageError(fmt::format("cannot open '{}': {}", path, std::strerror(errno)));
  struct stat st {};
  if (::fstat(::fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
    std::fclose(f);
    throw UsageError(fmt::format("cannot read '{}': it is a directory", path));
  }
  std::string out;
  if (st.st_size > 0) out.reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  const bool error = std::ferror(f);
  const int err = errno;
  std::fclose(f);
  if (error) throw UsageError(fmt::format("error reading '{}': {}", path, std::strerror(err)));
  return out;
}

bool is_gzip(const std::string& bytes) {
  return bytes.size() >= 2 && static_cast<uint8_t>(bytes[0]) == 0x1f && static_cast<uint8_t>(bytes[1]) == 0x8b;
}

std::string gunzip(const std::string& compressed, const std::string& name) {
  // ISIZE, the last 4 bytes, is the uncompressed size mod 2^32: a good first allocation.
  size_t hint = 0;
  if (compressed.size() >= 18) {
    const auto* p = reinterpret_cast<const uint8_t*>(compressed.data() + compressed.size() - 4);
    hint = uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
    hint = std::min<size_t>(hint + 1, compressed.size() * 1100 + 1);  // deflate expands at most ~1032x
  }
  return inflate_all(compressed.data(), compressed.size(), 15 + 16, hint, name, "gzip");
}

std::string zlib_decompress(const char* data, size_t size, const std::string& name) {
  return inflate_all(data, size, 15, size * 4, name, "zlib");
}

std::string read_file_maybe_gzip(const std::string& path) {
  std::string bytes = read_file_bytes(path);
  if (is_gzip(bytes)) return gunzip(bytes, path);
  return bytes;
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  namespace fs = std::filesystem;
  static std::atomic<uint64_t> counter{0};
  const fs::path target(path);
  fs::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  const fs::path tmp = dir / fmt::format(".{}.tmp.{}.{}", target.filename().string(), ::getpid(), counter++);
  auto fail = [&](const std::string& step, int err, bool remove) {
    if (remove) ::unlink(tmp.c_str());
    throw std::runtime_error(fmt::format("cannot write '{}': {}: {}", path, step, std::strerror(err)));
  };
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) fail(fmt::format("cannot create temporary file '{}'", tmp.string()), errno, false);
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      fail("write failed", err, true);
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    fail("fsync failed", err, true);
  }
  if (::close(fd) != 0) fail("close failed", errno, true);
  if (::rename(tmp.c_str(), target.c_str()) != 0) fail("rename failed", errno, true);
  // Make the rename itself durable.
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace diffuse

#include "diffuse/data/file_bytes.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <regex>
#include <stdexcept>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "diffuse/error.h"

namespace diffuse {

namespace {

// Feeds `in` through an inflate stream set up with `window_bits` (15 + 16: gzip, 15: zlib).
// A gzip file may hold several members one after another (gzip's own rule). Output beyond
// `max_out` bytes is an error, or with `head` the end: the first max_out bytes are returned.
std::string inflate_all(const char* in, size_t in_size, int window_bits, size_t size_hint, size_t max_out, bool head,
                        const std::string& name, const char* what) {
  z_stream zs{};
  if (inflateInit2(&zs, window_bits) != Z_OK) throw std::runtime_error("zlib: inflateInit2 failed");
  const size_t cap = head ? max_out : max_out + 1;  // one byte past the limit shows there is more
  std::string out;
  out.resize(std::min(std::max<size_t>(size_hint, 1 << 16), cap));
  size_t in_pos = 0, out_pos = 0;
  constexpr size_t kChunk = size_t{1} << 30;  // z_stream counts are 32-bit
  auto fail = [&](const std::string& msg) {
    inflateEnd(&zs);
    throw UsageError(fmt::format("'{}': {}", name, msg));
  };
  auto too_long = [&] {
    fail(
        fmt::format("the {} data decompresses to more than {} bytes, the most expected here (a corrupt file, or a "
                    "decompression bomb)",
                    what, max_out));
  };
  for (;;) {
    if (zs.avail_in == 0 && in_pos < in_size) {
      const size_t n = std::min(in_size - in_pos, kChunk);
      zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in + in_pos));
      zs.avail_in = static_cast<uInt>(n);
      in_pos += n;
    }
    if (out_pos == out.size()) {
      if (out_pos >= cap) {
        if (head) break;
        too_long();
      }
      out.resize(std::min(out.size() * 2, cap));
    }
    const size_t room = std::min(out.size() - out_pos, kChunk);
    zs.next_out = reinterpret_cast<Bytef*>(&out[out_pos]);
    zs.avail_out = static_cast<uInt>(room);
    const int ret = inflate(&zs, Z_NO_FLUSH);
    out_pos += room - zs.avail_out;
    const bool input_done = zs.avail_in == 0 && in_pos == in_size;
    if (ret == Z_STREAM_END) {
      if (input_done) break;
      const bool another_member =
          window_bits > 15 && zs.avail_in >= 2 && zs.next_in[0] == 0x1f && zs.next_in[1] == 0x8b;
      if (!another_member) fail(fmt::format("unexpected data after the end of the {} stream", what));
      inflateReset(&zs);
    } else if (ret == Z_OK) {
      continue;
    } else if (ret == Z_BUF_ERROR) {
      if (input_done) fail(fmt::format("truncated {} stream (data ends before the stream does)", what));
    } else {
      fail(fmt::format("corrupt {} data ({})", what, zs.msg ? zs.msg : zError(ret)));
    }
  }
  if (out_pos > max_out) too_long();  // the stream ended just as it passed the limit
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

bool is_zip(const std::string& bytes) { return bytes.compare(0, 4, "PK\x03\x04") == 0; }

std::string gunzip(const std::string& compressed, const std::string& name, size_t max_size) {
  // ISIZE, the last 4 bytes, is the uncompressed size mod 2^32: a good first allocation.
  size_t hint = 0;
  if (compressed.size() >= 18) {
    const auto* p = reinterpret_cast<const uint8_t*>(compressed.data() + compressed.size() - 4);
    hint = uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
    hint = std::min<size_t>(hint + 1, compressed.size() * 1100 + 1);  // deflate expands at most ~1032x
  }
  return inflate_all(compressed.data(), compressed.size(), 15 + 16, hint, max_size, false, name, "gzip");
}

std::string gunzip_head(const std::string& compressed, const std::string& name, size_t n) {
  return inflate_all(compressed.data(), compressed.size(), 15 + 16, n, n, true, name, "gzip");
}

std::string zlib_decompress(const char* data, size_t size, const std::string& name, size_t max_size) {
  return inflate_all(data, size, 15, size * 4, max_size, false, name, "zlib");
}

std::string inflate_raw(const char* data, size_t compressed_size, size_t size, const std::string& name) {
  std::string out = inflate_all(data, compressed_size, -15, size, size, false, name, "deflate");
  if (out.size() != size)
    throw UsageError(fmt::format("'{}': the deflate data gives {} bytes, {} expected", name, out.size(), size));
  return out;
}

std::string read_file_maybe_gzip(const std::string& path, size_t max_size) {
  std::string bytes = read_file_bytes(path);
  if (is_gzip(bytes)) return gunzip(bytes, path, max_size);
  return bytes;
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  namespace fs = std::filesystem;
  static std::atomic<uint64_t> counter{0};
  const fs::path target(path);
  fs::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  // The name carries the writer's pid, so remove_stale_temporaries can tell a leftover of a killed
  // writer from a file being written.
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

void require_writable_directory(const std::string& dir, const std::string& option) {
  const std::string probe = (std::filesystem::path(dir) / fmt::format(".write-probe.tmp.{}.0", ::getpid())).string();
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) throw UsageError(fmt::format("'{}' ({}) is not writable: {}", dir, option, std::strerror(errno)));
  ::close(fd);
  ::unlink(probe.c_str());
}

void check_output_dir(const std::string& dir, const std::string& option) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path p = fs::absolute(dir, ec);
  while (!p.empty() && !fs::exists(p, ec) && p != p.parent_path()) p = p.parent_path();
  if (!fs::is_directory(p, ec))
    throw UsageError(fmt::format("{} '{}' cannot be a directory: '{}' is a file", option, dir, p.string()));
  require_writable_directory(p.string(), option + " '" + dir + "'");
}

int remove_stale_temporaries(const std::string& dir) {
  namespace fs = std::filesystem;
  static const std::regex temporary(R"(\..+\.tmp\.([1-9]\d{0,9})\.\d+)");  // write_file_atomic's names
  std::vector<fs::path> stale;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::smatch m;
    const std::string name = e.path().filename().string();
    if (!std::regex_match(name, m, temporary)) continue;
    const long long pid = std::stoll(m[1].str());
    if (pid > std::numeric_limits<pid_t>::max()) continue;
    const bool gone = pid == ::getpid() || (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH);
    if (gone) stale.push_back(e.path());
  }
  int removed = 0;
  for (const auto& p : stale) removed += fs::remove(p, ec) ? 1 : 0;
  return removed;
}

}  // namespace diffuse

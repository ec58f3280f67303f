// Whole-file reads and writes and in-memory zlib/gzip decompression, with errors that name the
// file. Dataset readers and PNG I/O share these.
#pragma once

#include <cstddef>
#include <string>

namespace diffuse {

// The whole file as bytes. UsageError naming the path when it is missing, a directory or
// unreadable.
std::string read_file_bytes(const std::string& path);

// True when `bytes` start with the gzip magic number 1f 8b.
bool is_gzip(const std::string& bytes);
// True when `bytes` start with a zip local file header ("PK\3\4"): npz files, LibTorch archives.
bool is_zip(const std::string& bytes);

// The most a decompression yields unless the caller knows better: a few kilobytes of gzip can
// expand to gigabytes, so output beyond the limit is refused (naming the file) as it is reached.
constexpr size_t kMaxDecompressedBytes = size_t{4} << 30;  // 4 GiB

// Decompresses a gzip stream (concatenated members allowed). `name` (the file) appears in the
// error for truncated or corrupt data, trailing garbage, or output beyond `max_size` bytes.
std::string gunzip(const std::string& compressed, const std::string& name, size_t max_size = kMaxDecompressedBytes);
// The first `n` bytes a gzip stream decompresses to (all of them when there are fewer), without
// inflating the rest: enough to read a header that says how large the whole should be.
std::string gunzip_head(const std::string& compressed, const std::string& name, size_t n);

// Decompresses a zlib (RFC 1950) stream, as in PNG zTXt/iTXt chunks.
std::string zlib_decompress(const char* data, size_t size, const std::string& name,
                            size_t max_size = kMaxDecompressedBytes);

// Inflates raw deflate data (RFC 1951, as in zip entries) that must give exactly `size` bytes;
// `name` (the file or entry) appears in the error for corrupt data or another size.
std::string inflate_raw(const char* data, size_t compressed_size, size_t size, const std::string& name);

// The file's bytes, gunzipped (to at most `max_size` bytes) when they start with the gzip magic
// number.
std::string read_file_maybe_gzip(const std::string& path, size_t max_size = kMaxDecompressedBytes);

// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename
// over `path`, fsync of the directory. Readers see the old file or the complete new one, never
// a partial one. std::runtime_error naming the path on failure (the temporary is removed).
void write_file_atomic(const std::string& path, const std::string& bytes);

// UsageError naming `dir` and `option` unless a file can be created in it (a read-only mount, a
// directory without write permission, a full inode table): checked before a job starts, so
// that it does not fail at its first checkpoint.
void require_writable_directory(const std::string& dir, const std::string& option);

// Checks, before a job does any work, that `dir` can be created (or is) a writable directory:
// UsageError naming it and `option` when it or an existing ancestor is a file, or the nearest
// existing directory is not writable. Creates nothing, so a job refused later leaves no folder.
void check_output_dir(const std::string& dir, const std::string& option);

// Removes the temporaries write_file_atomic left in `dir` when its writer was killed
// (".<name>.tmp.<pid>.<n>") and that process is gone. A temporary named with this process's
// own pid counts as gone too (a previous process of the same pid, as after a container
// restart), so call it when this process is not writing into `dir`. Returns how many it removed.
int remove_stale_temporaries(const std::string& dir);

}  // namespace diffuse

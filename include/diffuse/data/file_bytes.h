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

// Decompresses a gzip stream (concatenated members allowed). `name` (the file) appears in the
// error for truncated or corrupt data or trailing garbage.
std::string gunzip(const std::string& compressed, const std::string& name);

// Decompresses a zlib (RFC 1950) stream, as in PNG zTXt/iTXt chunks.
std::string zlib_decompress(const char* data, size_t size, const std::string& name);

// The file's bytes, gunzipped when they start with the gzip magic number.
std::string read_file_maybe_gzip(const std::string& path);

// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename
// over `path`, fsync of the directory. Readers see the old file or the complete new one, never
// a partial one. std::runtime_error naming the path on failure (the temporary is removed).
void write_file_atomic(const std::string& path, const std::string& bytes);

}  // namespace diffuse

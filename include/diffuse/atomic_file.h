// Crash-safe file replacement: a reader sees either the old file or the whole new one.
#pragma once

#include <string>

namespace diffuse {

// Writes `bytes` to a temporary file beside `path`, fsyncs it, renames it over `path` and fsyncs
// the directory. Throws std::runtime_error naming the path on any failure (the old file stays).
void write_file_atomic(const std::string& path, const std::string& bytes);

// Reads a whole file; throws std::runtime_error naming the path.
std::string read_file(const std::string& path);

}  // namespace diffuse

#include "diffuse/train/metrics_file.h"

#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "diffuse/data/file_bytes.h"

namespace diffuse {

std::string metrics_lines_through(const std::string& text, int64_t step) {
  std::istringstream in(text);
  std::string line, kept;
  static const std::string key = "\"step\": ";
  while (std::getline(in, line)) {
    const auto pos = line.find(key);
    if (pos == std::string::npos || line.back() != '}') continue;
    const char* digits = line.c_str() + pos + key.size();
    char* end = nullptr;
    const long long s = std::strtoll(digits, &end, 10);
    if (end == digits) continue;
    if (s <= step) kept += line + "\n";
  }
  return kept;
}

void truncate_metrics(const std::string& path, int64_t step) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return;
  write_file_atomic(path, metrics_lines_through(read_file_bytes(path), step));
}

}  // namespace diffuse

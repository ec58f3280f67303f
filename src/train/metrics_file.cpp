#include "diffuse/train/metrics_file.h"

#include <filesystem>
#include <sstream>

#include "diffuse/data/file_bytes.h"
#include "json_text.h"

namespace diffuse {

std::string metrics_lines_through(const std::string& text, int64_t step) {
  std::istringstream in(text);
  std::string line, kept;
  while (std::getline(in, line)) {
    const auto j = Json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) continue;  // a line torn by a crash, or not ours
    const auto s = j.find("step");
    if (s == j.end() || !s->is_number_integer()) continue;
    if (s->get<int64_t>() <= step) kept += line + "\n";
  }
  return kept;
}

void truncate_metrics(const std::string& path, int64_t step) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return;
  write_file_atomic(path, metrics_lines_through(read_file_bytes(path), step));
}

}  // namespace diffuse

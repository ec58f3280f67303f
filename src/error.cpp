#include "diffuse/error.h"

namespace diffuse {

std::string join(const std::vector<std::string>& items, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += sep;
    out += items[i];
  }
  return out;
}

void throw_not_one_of(const std::string& what, const std::string& value, const std::vector<std::string>& allowed) {
  throw UsageError(what + " '" + value + "' is not one of: " + join(allowed));
}

}  // namespace diffuse

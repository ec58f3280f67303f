#include "json_text.h"

#include <cmath>
#include <cstdint>

namespace diffuse {

Json json_number(double v) {
  if (std::isfinite(v) && std::trunc(v) == v && std::fabs(v) < 9007199254740992.0) return Json(static_cast<int64_t>(v));
  return Json(v);
}

std::string json_line(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

std::string json_pretty(const Json& j) { return j.dump(2, ' ', false, Json::error_handler_t::replace); }

}  // namespace diffuse

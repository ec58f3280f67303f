// The one JSON writer: every JSON file and line diffuse writes (metrics.jsonl, eval.json,
// bpd.json, `info`, `bench` and `schedule` output) is built as a Json value and printed here.
// A private header: nlohmann-json stays out of the public ones.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace diffuse {

// Keys keep the order they were set in, so a file reads in the order it was written.
using Json = nlohmann::ordered_json;

// A double as a JSON number, whole values (|v| < 2^53) as integers: counts kept in a list of
// doubles (eval's report) read back as integers, as "4" rather than "4.0".
Json json_number(double v);

// One line of compact JSON, no newline. Non-finite numbers are written as null (JSON has no
// inf or nan), and bytes that are not UTF-8 (a path, say) are replaced instead of thrown on.
std::string json_line(const Json& j);

// The same, indented by two spaces, for files people read.
std::string json_pretty(const Json& j);

}  // namespace diffuse

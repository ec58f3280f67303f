// The readers of untrusted bytes, one fuzz target each. The libFuzzer driver (fuzz_main.cpp)
// and the ordinary suite (test_fuzz_targets.cpp, which replays the seeds, crashes found
// earlier under tests/fuzz/regressions/<target>/, and deterministic mutations) call the same
// functions, so a crash found by fuzzing stays fixed.
#pragma once

#include <string>
#include <vector>

namespace diffuse::fuzz {

struct Target {
  const char* name;
  // Feeds `bytes` to the reader. Returns true when they were accepted, false when the reader
  // refused them with a UsageError (the one allowed way to refuse); anything else escapes.
  bool (*run)(const std::string& bytes);
  // Valid inputs for the reader, written by the library's own writers: the seed corpus.
  std::vector<std::string> (*seeds)();
  bool can_refuse = true;  // false for a filter that takes any bytes (metrics lines)
};

const std::vector<Target>& targets();
const Target* find_target(const std::string& name);  // nullptr when unknown

// A scratch directory of this process, for readers that take a path; removed at exit.
std::string scratch_path(const std::string& file);

}  // namespace diffuse::fuzz

// The fuzz targets (tests/fuzz/targets.h) in the ordinary suite: every seed is accepted, every
// crash file found by fuzzing is refused cleanly (a UsageError, nothing else), and so is every
// deterministic mutation of the seeds (truncations and byte flips), so the parsers' bounds
// checks are exercised on every build, not only in the fuzz build.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "diffuse/data/file_bytes.h"
#include "fuzz/targets.h"

namespace fs = std::filesystem;
using diffuse::fuzz::Target;
using diffuse::fuzz::targets;

namespace {

class FuzzTarget : public ::testing::TestWithParam<Target> {};

TEST_P(FuzzTarget, AcceptsEverySeed) {
  const auto seeds = GetParam().seeds();
  ASSERT_FALSE(seeds.empty());
  for (size_t i = 0; i < seeds.size(); ++i) EXPECT_TRUE(GetParam().run(seeds[i])) << "seed " << i;
}

TEST_P(FuzzTarget, RefusesOrAcceptsMutationsCleanly) {
  // run() lets anything but a UsageError escape, so an exception here is a finding.
  std::mt19937_64 rng(20261202);
  int refused = 0, total = 0;
  for (const auto& seed : GetParam().seeds()) {
    const size_t n = seed.size();
    for (size_t cut : {size_t{0}, size_t{1}, n / 7, n / 3, n / 2, n - std::min<size_t>(n, 1)}) {
      refused += !GetParam().run(seed.substr(0, cut));
      ++total;
    }
    for (int k = 0; k < 40 && n > 0; ++k) {
      std::string m = seed;
      for (int flips = 1 + int(rng() % 4); flips > 0; --flips) m[rng() % n] = char(rng() & 0xff);
      refused += !GetParam().run(m);
      ++total;
    }
  }
  // The empty input and most truncations are refused: a reader that accepts everything would
  // not be checking anything.
  if (GetParam().can_refuse) EXPECT_GT(refused, 0) << total << " mutations";
  else EXPECT_EQ(refused, 0) << total << " mutations";
}

TEST_P(FuzzTarget, ReplaysSavedFindings) {
  const fs::path dir = fs::path(DIFFUSE_SOURCE_DIR) / "tests" / "fuzz" / "regressions" / GetParam().name;
  std::error_code ec;
  int replayed = 0;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (!e.is_regular_file()) continue;
    SCOPED_TRACE(e.path().string());
    GetParam().run(diffuse::read_file_bytes(e.path().string()));
    ++replayed;
  }
  RecordProperty("replayed", replayed);
}

INSTANTIATE_TEST_SUITE_P(Targets, FuzzTarget, ::testing::ValuesIn(targets()),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace

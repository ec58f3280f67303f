// The `diffuse` binary end to end: schedule output parses and agrees with the library; bad
// options exit 2 with a message naming the option.
#include <gtest/gtest.h>

#include <algorithm>
#include <yaml-cpp/yaml.h>

#include <sstream>

#include "diffuse/schedule.h"
#include "test_util.h"

using diffuse::test::run_diffuse;

namespace {
diffuse::NoiseSchedule lib_schedule(diffuse::ScheduleKind kind, int64_t T, const std::string& respace = "") {
  diffuse::ScheduleSpec s;
  s.kind = kind;
  s.timesteps = T;
  auto sched = diffuse::NoiseSchedule::from_spec(s);
  return respace.empty() ? sched : sched.respace(respace);
}
}  // namespace

TEST(Cli, ScheduleJsonParsesAndAgreesExactly) {
  auto r = run_diffuse("schedule --schedule cosine --timesteps 1000 --respace ddim50 --format json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto rows = YAML::Load(r.out);  // JSON is a subset of YAML 1.2
  auto lib = lib_schedule(diffuse::ScheduleKind::Cosine, 1000, "ddim50");
  ASSERT_TRUE(rows.IsSequence());
  ASSERT_EQ(rows.size(), 50u);
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto row = lib.row(static_cast<int64_t>(i));
    EXPECT_EQ(rows[i]["t"].as<int64_t>(), row.t);
    EXPECT_EQ(rows[i]["original_t"].as<int64_t>(), row.original_t);
    // Printed with the shortest round-trip representation: equal as doubles, not just close.
    EXPECT_EQ(rows[i]["beta"].as<double>(), row.beta);
    EXPECT_EQ(rows[i]["alpha_bar"].as<double>(), row.alpha_bar);
    EXPECT_EQ(rows[i]["alpha_bar_prev"].as<double>(), row.alpha_bar_prev);
    EXPECT_EQ(rows[i]["posterior_variance"].as<double>(), row.posterior_variance);
    EXPECT_EQ(rows[i]["posterior_log_variance_clipped"].as<double>(), row.posterior_log_variance_clipped);
    EXPECT_EQ(rows[i]["posterior_mean_coef1"].as<double>(), row.posterior_mean_coef1);
    EXPECT_EQ(rows[i]["posterior_mean_coef2"].as<double>(), row.posterior_mean_coef2);
    EXPECT_EQ(rows[i]["snr"].as<double>(), row.snr);
  }
}

TEST(Cli, ScheduleCsvAgreesWithLibrary) {
  auto r = run_diffuse("schedule --schedule linear -T 100 --format csv");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::istringstream in(r.out);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line,
            "t,original_t,beta,alpha_bar,alpha_bar_prev,posterior_variance,posterior_log_variance_clipped,"
            "posterior_mean_coef1,posterior_mean_coef2,snr");
  auto lib = lib_schedule(diffuse::ScheduleKind::Linear, 100);
  int64_t n = 0;
  while (std::getline(in, line)) {
    std::vector<double> v;
    std::stringstream ls(line);
    std::string cell;
    while (std::getline(ls, cell, ',')) v.push_back(std::stod(cell));
    ASSERT_EQ(v.size(), 10u);
    const auto row = lib.row(n);
    EXPECT_EQ(v[2], row.beta);
    EXPECT_EQ(v[3], row.alpha_bar);
    EXPECT_EQ(v[9], row.snr);
    ++n;
  }
  EXPECT_EQ(n, 100);
  auto table = run_diffuse("schedule -T 10 --schedule cosine");
  EXPECT_EQ(table.exit_code, 0);
  EXPECT_NE(table.out.find("alpha_bar"), std::string::npos);
}

TEST(Cli, BadOptionsExitTwoNamingTheOption) {
  auto r = run_diffuse("schedule --schedule cosin");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--schedule"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("cosine"), std::string::npos) << r.err;  // lists the allowed values
  r = run_diffuse("schedule --format xml");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--format"), std::string::npos) << r.err;
  r = run_diffuse("schedule --respace ddim7x");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--respace 'ddim7x'"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("trailing:N"), std::string::npos) << r.err;  // the accepted forms
  r = run_diffuse("schedule --schedule custom");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--schedule custom"), std::string::npos) << r.err;
  r = run_diffuse("schedule --no-such-flag");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--no-such-flag"), std::string::npos) << r.err;
  // Every usage error is one line on stderr.
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  r = run_diffuse("frobnicate");
  EXPECT_EQ(r.exit_code, 2);
}

TEST(Cli, VersionReportsLibTorch) {
  auto r = run_diffuse("--version");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("LibTorch"), std::string::npos);
  EXPECT_NE(r.out.find("CUDA available"), std::string::npos);
  r = run_diffuse("--version", "OMP_NUM_THREADS=3");
  EXPECT_NE(r.out.find("CPU threads by default: 3 "), std::string::npos) << r.out;
}

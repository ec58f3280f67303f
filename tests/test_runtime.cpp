// Thread defaults: OMP_NUM_THREADS when set, else the cores this process may actually use.
#include <gtest/gtest.h>
#include <sched.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>

#include "diffuse/runtime.h"
#include "test_util.h"

namespace {

// Sets an environment variable for one scope and puts the old value (or its absence) back.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = std::string(old);
    ::setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (old_) ::setenv(name_, old_->c_str(), 1);
    else ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

}  // namespace

TEST(Threads, OmpNumThreadsIsTheDefaultWhenValid) {
  const int before = torch::get_num_threads();
  {
    ScopedEnv env("OMP_NUM_THREADS", "3");
    EXPECT_EQ(diffuse::default_thread_count(), 3);
    EXPECT_EQ(diffuse::configure_threads(0), 3);
    EXPECT_EQ(torch::get_num_threads(), 3);
    EXPECT_EQ(diffuse::configure_threads(1), 1);  // an explicit count wins over the variable
    EXPECT_EQ(torch::get_num_threads(), 1);
  }
  // Values that are not a positive integer are ignored rather than half-read.
  for (const char* bad : {"0", "-2", "two", "4,2", ""}) {
    ScopedEnv env("OMP_NUM_THREADS", bad);
    EXPECT_EQ(diffuse::default_thread_count(), diffuse::available_cores()) << "OMP_NUM_THREADS='" << bad << "'";
  }
  EXPECT_THROW(diffuse::configure_threads(-1), std::exception);
  torch::set_num_threads(before);
}

TEST(Threads, AvailableCoresFollowsTheAffinityMask) {
  cpu_set_t saved;
  ASSERT_EQ(sched_getaffinity(0, sizeof(saved), &saved), 0);
  const int allowed = CPU_COUNT(&saved);
  const int cores = diffuse::available_cores();
  EXPECT_GE(cores, 1);
  EXPECT_LE(cores, allowed);
  EXPECT_LE(cores, static_cast<int>(std::thread::hardware_concurrency()));
  // Narrow this thread to its first allowed CPU (what `taskset -c N` does to a process).
  int first = 0;
  while (!CPU_ISSET(first, &saved)) ++first;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(first, &one);
  ASSERT_EQ(sched_setaffinity(0, sizeof(one), &one), 0);
  EXPECT_EQ(diffuse::available_cores(), 1);
  ASSERT_EQ(sched_setaffinity(0, sizeof(saved), &saved), 0);
  EXPECT_EQ(diffuse::available_cores(), cores);
}

// cgroup v2: the process's own cgroup (from /proc/self/cgroup's "0::" line) and every ancestor
// may set cpu.max; the tightest wins. Built as a fake tree, so the test does not depend on how
// the machine running it is set up.
TEST(Threads, CgroupQuotaIsTheTightestLevel) {
  diffuse::test::TempDir dir;
  namespace fs = std::filesystem;
  const auto root = dir.path() / "cgroup";
  fs::create_directories(root / "system.slice" / "job.service");
  auto put = [](const fs::path& p, const std::string& text) { std::ofstream(p) << text; };
  const auto self = (dir.path() / "self_cgroup").string();
  put(self, "1:cpu:/ignored/v1/line\n0::/system.slice/job.service\n");
  // No cpu.max anywhere, or "max": no limit.
  EXPECT_TRUE(std::isinf(diffuse::cgroup_cpu_limit(root.string(), self)));
  put(root / "system.slice" / "job.service" / "cpu.max", "max 100000\n");
  EXPECT_TRUE(std::isinf(diffuse::cgroup_cpu_limit(root.string(), self)));
  // A quota on a parent applies to the job below it.
  put(root / "system.slice" / "cpu.max", "150000 100000\n");
  EXPECT_DOUBLE_EQ(diffuse::cgroup_cpu_limit(root.string(), self), 1.5);
  // A tighter one on the job itself wins; a looser one at the root does not matter.
  put(root / "system.slice" / "job.service" / "cpu.max", "50000 100000\n");
  put(root / "cpu.max", "800000 100000\n");
  EXPECT_DOUBLE_EQ(diffuse::cgroup_cpu_limit(root.string(), self), 0.5);
  // Inside a container's own namespace the path is "/": only the root's file counts.
  put(self, "0::/\n");
  EXPECT_DOUBLE_EQ(diffuse::cgroup_cpu_limit(root.string(), self), 8.0);
  // No cgroup v2 at all.
  EXPECT_TRUE(std::isinf(diffuse::cgroup_cpu_limit((dir.path() / "none").string(), self)));
}

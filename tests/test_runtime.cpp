// Thread defaults: OMP_NUM_THREADS when set, else the cores this process may actually use.
#include <gtest/gtest.h>
#include <sched.h>
#include <torch/torch.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <thread>

#include "diffuse/runtime.h"

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

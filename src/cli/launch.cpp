#include "cli/launch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <thread>

#include <fmt/format.h>

#include "diffuse/error.h"
#include "diffuse/runtime.h"

namespace diffuse::cli {

namespace {

std::vector<std::string> g_argv;
std::atomic<int> g_forward_signal{0};

void on_launcher_signal(int sig) { g_forward_signal.store(sig); }

// A port nobody listens on now (the kernel's choice for port 0); the ranks bind it moments later.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("launcher: cannot open a socket to find a free port");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    throw std::runtime_error("launcher: cannot find a free port on 127.0.0.1");
  }
  const int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

// The command line without --nproc-per-node (and its value).
std::vector<std::string> rank_argv() {
  std::vector<std::string> out;
  for (size_t i = 0; i < g_argv.size(); ++i) {
    const auto& a = g_argv[i];
    if (a == "--nproc-per-node") {
      ++i;
      continue;
    }
    if (a.rfind("--nproc-per-node=", 0) == 0) continue;
    out.push_back(a);
  }
  return out;
}

pid_t spawn_rank(const std::vector<std::string>& args, int rank, int n, int port, int threads) {
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  // The child: torchrun's variables, then the same binary.
  ::setenv("RANK", std::to_string(rank).c_str(), 1);
  ::setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
  ::setenv("WORLD_SIZE", std::to_string(n).c_str(), 1);
  ::setenv("LOCAL_WORLD_SIZE", std::to_string(n).c_str(), 1);
  ::setenv("MASTER_ADDR", "127.0.0.1", 1);
  ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
  ::setenv("OMP_NUM_THREADS", std::to_string(threads).c_str(), 0);  // a user's setting wins
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  ::execv("/proc/self/exe", argv.data());
  std::perror("diffuse launcher: exec");
  ::_exit(127);
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return fmt::format("was killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  return "ended";
}

int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace

void remember_argv(int argc, char** argv) { g_argv.assign(argv, argv + argc); }

void add_nproc_option(CLI::App& cmd, int* n) {
  cmd.add_option("--nproc-per-node", *n,
                 "Run N data-parallel ranks on this machine (as torchrun --nproc_per_node N would)")
      ->check(CLI::Range(1, 1024));
}

bool should_launch(int n) { return n > 1 && std::getenv("WORLD_SIZE") == nullptr; }

int launch_local_ranks(int n) {
  const auto args = rank_argv();
  const int port = free_port();
  const int threads = std::max(1, available_cores() / n);
  std::signal(SIGINT, on_launcher_signal);
  std::signal(SIGTERM, on_launcher_signal);
  std::vector<pid_t> pids;
  for (int r = 0; r < n; ++r) pids.push_back(spawn_rank(args, r, n, port, threads));
  std::cerr << fmt::format(
      "diffuse: launched {} ranks on 127.0.0.1:{} ({} thread(s) each unless OMP_NUM_THREADS is set)\n", n, port,
      threads);

  int result = 0, running = n, forwarded = 0;
  bool failed = false;
  auto failed_at = std::chrono::steady_clock::now();
  std::vector<bool> done(n, false);
  while (running > 0) {
    if (const int sig = g_forward_signal.exchange(0)) {
      forwarded = sig;
      for (int r = 0; r < n; ++r)
        if (!done[r]) ::kill(pids[r], sig);
    }
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      const int r = static_cast<int>(std::find(pids.begin(), pids.end(), pid) - pids.begin());
      if (r >= n) continue;
      done[r] = true;
      --running;
      const int code = exit_code(status);
      if (code != 0 && code == 128 + forwarded) {
        if (result == 0) result = code;  // stopped as asked, after its checkpoint
      } else if (code != 0) {
        std::cerr << fmt::format("diffuse: rank {} {}\n", r, describe_status(status));
        if (result == 0) result = code;
        if (!failed) failed_at = std::chrono::steady_clock::now();
        failed = true;
      }
      continue;
    }
    // The others notice a dead peer at their next collective; one that does not (stuck outside
    // any collective) is stopped after a grace period.
    if (failed && std::chrono::steady_clock::now() - failed_at > std::chrono::seconds(60)) {
      for (int r = 0; r < n; ++r)
        if (!done[r]) {
          std::cerr << fmt::format("diffuse: rank {} still running 60 s after a failure: killing it\n", r);
          ::kill(pids[r], SIGKILL);
        }
      failed_at = std::chrono::steady_clock::now();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return result;
}

std::unique_ptr<ProcessGroup> join_launch_group(const DistEnv& env, int64_t timeout_s) {
  if (!env.launched()) return std::make_unique<ProcessGroup>();
  return std::make_unique<ProcessGroup>(env, DistOptions{"gloo", std::chrono::seconds(timeout_s), torch::kCPU});
}

}  // namespace diffuse::cli

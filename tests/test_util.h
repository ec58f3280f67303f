// Shared helpers for the test suite.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>

namespace diffuse::test {

// Debian's dataset-fashion-mnist, which the end-to-end tests train on.
inline const char* kFashionMnistImages = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz";

// A test that needs something installed skips without it, except where the environment says it
// is installed (scripts/test.sh sets DIFFUSE_REQUIRE_DATA=1 and DIFFUSE_REQUIRE_TORCHRUN=1, and
// CI runs that): there a missing one is a broken install, and the test fails.
#define DIFFUSE_SKIP_OR_FAIL_IF(missing, require_env, what)                \
  do {                                                                     \
    if (missing) {                                                         \
      if (std::getenv(require_env)) FAIL() << what << " is not installed"; \
      GTEST_SKIP() << what << " is not installed";                         \
    }                                                                      \
  } while (0)
#define REQUIRE_FASHION_MNIST()                                                                                 \
  DIFFUSE_SKIP_OR_FAIL_IF(!std::filesystem::exists(diffuse::test::kFashionMnistImages), "DIFFUSE_REQUIRE_DATA", \
                          "dataset-fashion-mnist")
#define REQUIRE_TORCHRUN()                                                                                     \
  DIFFUSE_SKIP_OR_FAIL_IF(std::system("command -v torchrun >/dev/null 2>&1") != 0, "DIFFUSE_REQUIRE_TORCHRUN", \
                          "torchrun (python3-torch)")

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

// Runs `diffuse ARGS` (ARGS already shell-quoted), capturing stdout and stderr.
inline CommandResult run_diffuse(const std::string& args, const std::string& env = "") {
  namespace fs = std::filesystem;
  static int counter = 0;
  const auto err_path = fs::temp_directory_path() /
                        ("diffuse_test_stderr_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  const std::string cmd = env + " " + std::string(DIFFUSE_BINARY) + " " + args + " 2>" + err_path.string();
  CommandResult r;
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) r.out.append(buf.data(), n);
  const int status = ::pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (FILE* f = std::fopen(err_path.c_str(), "r")) {
    while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) r.err.append(buf.data(), n);
    std::fclose(f);
  }
  fs::remove(err_path);
  return r;
}

// A `diffuse ARGS` process running in the background, stdout and stderr to files, so a test
// can watch its outputs and signal it.
class Background {
 public:
  // env: "NAME=value ..." set for the process only.
  Background(const std::string& args, const std::filesystem::path& out, const std::filesystem::path& err,
             const std::string& env = "")
      : out_(out), err_(err) {
    const std::string cmd = "exec " + (env.empty() ? "" : "env " + env + " ") + std::string(DIFFUSE_BINARY) + " " +
                            args + " >" + out.string() + " 2>" + err.string();
    pid_ = ::fork();
    if (pid_ == 0) {
      ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
  }
  ~Background() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      wait();
    }
  }
  pid_t pid() const { return pid_; }
  // Exit status (128 + signal when killed by one, as a shell reports it).
  int wait() {
    int status = 0;
    ::waitpid(pid_, &status, 0);
    reaped_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1;
  }
  bool running() {
    int status = 0;
    return !reaped_ && ::waitpid(pid_, &status, WNOHANG) == 0;
  }
  std::string out() const { return slurp(out_); }
  std::string err() const { return slurp(err_); }
  static std::string slurp(const std::filesystem::path& p) {
    std::string s;
    if (FILE* f = std::fopen(p.c_str(), "r")) {
      std::array<char, 4096> buf{};
      size_t n;
      while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) s.append(buf.data(), n);
      std::fclose(f);
    }
    return s;
  }

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  std::filesystem::path out_, err_;
};

// A TCP port on 127.0.0.1 that nothing listens on right now (for a test's MASTER_PORT).
inline int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// A fresh, empty temporary directory, removed when the object goes out of scope.
class TempDir {
 public:
  TempDir() {
    namespace fs = std::filesystem;
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("diffuse_test_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace diffuse::test

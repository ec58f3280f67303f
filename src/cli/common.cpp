#include "cli/common.h"

#include <time.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>

#include <fmt/format.h>

#include "diffuse/train/trainer.h"

namespace diffuse::cli {

Config resolve_config(const std::string& path, const std::vector<std::string>& overrides) {
  Config cfg = path.empty() ? Config{} : load_config(path);
  for (const auto& o : overrides) apply_override(cfg, o);
  validate(cfg);
  return cfg;
}

Config config_from_checkpoint_yaml(const std::string& yaml, const std::string& origin,
                                   const std::vector<std::string>& overrides) {
  Config cfg = parse_config(yaml, origin);
  for (const auto& o : overrides) apply_override(cfg, o);
  validate(cfg);
  return cfg;
}

CLI::Validator at_least(double lo) {
  return CLI::Validator(
      [lo](std::string& s) {
        double v = 0;
        if (!CLI::detail::lexical_cast(s, v)) return std::string();  // not a number: the conversion says so
        return v >= lo ? std::string() : fmt::format("must be >= {}, got {}", lo, s);
      },
      fmt::format(">= {}", lo));
}

namespace {
// The first SIGINT/SIGTERM asks the trainer to stop after the current step and checkpoint. A
// repeat within kGraceSeconds is taken as the same request delivered twice (`timeout`, for one,
// signals both the child and its process group; a supervisor may send TERM to every process it
// started), so it is ignored. A repeat after that means "abort now" and gets the default action.
constexpr double kGraceSeconds = 1.0;
std::atomic<int64_t> g_first_signal_ns{0};

int64_t monotonic_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);  // async-signal-safe (POSIX.1-2008)
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

void say(const char* msg) noexcept {
  const auto n = ::write(STDERR_FILENO, msg, std::strlen(msg));
  (void)n;
}

extern "C" void on_stop_signal(int sig) {
  const int64_t now = monotonic_ns();
  int64_t first = 0;
  if (g_first_signal_ns.compare_exchange_strong(first, now)) {
    diffuse::request_stop(sig);
    say("\ndiffuse: stopping after this step and writing a checkpoint (signal again to abort now)\n");
    return;
  }
  if (static_cast<double>(now - first) < kGraceSeconds * 1e9) return;  // the same request, twice
  say("\ndiffuse: aborted; the last completed checkpoint is kept\n");
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}
}  // namespace

void install_stop_handlers() {
  static_assert(std::atomic<int64_t>::is_always_lock_free, "signal handler needs lock-free atomics");
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
}

}  // namespace diffuse::cli

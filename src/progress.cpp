#include "diffuse/progress.h"

#include <unistd.h>

#include <cstdio>

#include <fmt/format.h>

namespace diffuse {

bool stderr_is_terminal() { return ::isatty(STDERR_FILENO) == 1; }

std::string format_duration(double s) {
  if (!(s >= 0) || s > 1e8) return "?";
  const auto total = static_cast<int64_t>(s + 0.5);
  if (total >= 3600) return fmt::format("{}h{:02}m", total / 3600, (total % 3600) / 60);
  if (total >= 60) return fmt::format("{}m{:02}s", total / 60, total % 60);
  return fmt::format("{}s", total);
}

namespace {
// Seconds left at the rate of the new work so far (-1 when unknown).
double eta_seconds(int64_t start, int64_t done, int64_t total, double elapsed) {
  const double rate = elapsed > 0 ? static_cast<double>(done - start) / elapsed : 0.0;
  return rate > 0 ? static_cast<double>(total - done) / rate : -1.0;
}
}  // namespace

ProgressBar::ProgressBar(std::string label, int64_t total, int64_t start, bool enabled, double log_seconds)
    : label_(std::move(label)),
      total_(total),
      start_(start),
      done_(start),
      enabled_(enabled),
      log_seconds_(enabled ? 0.0 : log_seconds),
      t0_(std::chrono::steady_clock::now()),
      last_draw_(t0_ - std::chrono::seconds(1)) {}

ProgressBar ProgressBar::on_lead(std::string label, int64_t total, bool lead) {
  const bool tty = stderr_is_terminal();
  return ProgressBar(std::move(label), total, 0, lead && tty, lead && !tty ? 30.0 : 0.0);
}

ProgressBar::~ProgressBar() {
  if ((enabled_ || log_seconds_ > 0) && !finished_) finish();
}

double ProgressBar::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
}

void ProgressBar::update(int64_t done, const std::string& suffix) {
  done_ = done;
  last_suffix_ = suffix;
  const auto now = std::chrono::steady_clock::now();
  if (log_seconds_ > 0 && now - last_draw_ >= std::chrono::duration<double>(log_seconds_)) {
    last_draw_ = now;
    log_line();
  }
  if (!enabled_) return;
  if (done < total_ && now - last_draw_ < std::chrono::milliseconds(125)) return;
  last_draw_ = now;
  draw();
}

void ProgressBar::log_line() {
  const double el = elapsed_seconds();
  const double pct = total_ > 0 ? 100.0 * static_cast<double>(done_) / static_cast<double>(total_) : 100.0;
  std::string eta = done_ >= total_ ? "done" : "ETA " + format_duration(eta_seconds(start_, done_, total_, el));
  const std::string suffix = last_suffix_.empty() ? "" : " " + last_suffix_;
  std::fprintf(stderr, "%s: %lld/%lld (%.0f%%)%s, %s elapsed, %s\n", label_.c_str(), static_cast<long long>(done_),
               static_cast<long long>(total_), pct, suffix.c_str(), format_duration(el).c_str(), eta.c_str());
  std::fflush(stderr);
}

void ProgressBar::draw() {
  const int width = 28;
  const double frac = total_ > 0 ? std::min(1.0, static_cast<double>(done_) / static_cast<double>(total_)) : 1.0;
  const int filled = static_cast<int>(frac * width);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.append(static_cast<size_t>(width - filled), '.');
  const double eta = eta_seconds(start_, done_, total_, elapsed_seconds());
  std::fprintf(stderr, "\r\033[K%s [%s] %lld/%lld %s ETA %s", label_.c_str(), bar.c_str(),
               static_cast<long long>(done_), static_cast<long long>(total_), last_suffix_.c_str(),
               done_ >= total_ ? "0s" : format_duration(eta).c_str());
  std::fflush(stderr);
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  if (log_seconds_ > 0) log_line();
  if (!enabled_) return;
  draw();
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

}  // namespace diffuse

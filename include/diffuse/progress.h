// Progress reporting for long jobs: a redrawn bar when stderr is a terminal; in a log, either
// plain lines every log_seconds and one at the end (on_lead), or nothing on the bar's behalf
// (the trainer writes its own lines).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace diffuse {

bool stderr_is_terminal();

class ProgressBar {
 public:
  // `start` lets a resumed job show its true position; rate and ETA count only new work.
  ProgressBar(std::string label, int64_t total, int64_t start = 0, bool enabled = stderr_is_terminal(),
              double log_seconds = 0.0);
  // The bar of a job's lead process (none on the others): redrawn on a terminal, else a plain
  // line every 30 s and one at the end.
  static ProgressBar on_lead(std::string label, int64_t total, bool lead);
  ~ProgressBar();
  // Redraws at most ~8 times a second (and always at the end).
  void update(int64_t done, const std::string& suffix = "");
  void finish();                                     // leaves the last state on its own line
  void set_total(int64_t total) { total_ = total; }  // once the amount of work is known
  bool enabled() const { return enabled_; }
  double elapsed_seconds() const;

 private:
  std::string label_;
  int64_t total_, start_, done_ = 0;
  bool enabled_, finished_ = false;
  double log_seconds_;  // > 0: plain lines (when not enabled)
  std::chrono::steady_clock::time_point t0_, last_draw_;
  std::string last_suffix_;
  void draw();
  void log_line();
};

// "1h02m", "3m12s", "45s".
std::string format_duration(double seconds);

}  // namespace diffuse

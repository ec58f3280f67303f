// `diffuse schedule`: print a noise schedule (optionally respaced) as a table, CSV or JSON.
#include <cmath>
#include <iostream>

#include <fmt/format.h>

#include "cli/commands.h"
#include "diffuse/error.h"
#include "diffuse/schedule.h"
#include "json_text.h"

namespace diffuse::cli {

namespace {

struct ScheduleOptions {
  std::string schedule = "linear";
  int64_t timesteps = 1000;
  std::string respace;
  std::string format = "table";
  double beta_start = -1.0, beta_end = -1.0;
  std::string betas_file;
  bool zero_terminal_snr = false;
};

const char* kColumns[] = {"t",
                          "original_t",
                          "beta",
                          "alpha_bar",
                          "alpha_bar_prev",
                          "posterior_variance",
                          "posterior_log_variance_clipped",
                          "posterior_mean_coef1",
                          "posterior_mean_coef2",
                          "snr"};

int run_schedule(const ScheduleOptions& o) {
  ScheduleSpec spec;
  spec.kind = parse_schedule_kind(o.schedule);
  spec.timesteps = o.timesteps;
  spec.beta_start = o.beta_start;
  spec.beta_end = o.beta_end;
  spec.betas_file = o.betas_file;
  spec.zero_terminal_snr = o.zero_terminal_snr;
  // Errors from the library name config keys; here they are command-line options.
  auto sched = [&] {
    try {
      return NoiseSchedule::from_spec(spec);
    } catch (const UsageError& e) {
      throw UsageError(fmt::format("--schedule {} -T {}{}: {}", o.schedule, o.timesteps,
                                   o.betas_file.empty() ? "" : " --betas-file " + o.betas_file, e.what()));
    }
  }();
  if (!o.respace.empty()) {
    try {
      sched = sched.respace(o.respace);
    } catch (const UsageError& e) {
      throw UsageError(
          fmt::format("--respace '{}': {} (accepted: a count like 250, per-section counts like 10,15,20, "
                      "ddimN, leading:N, trailing:N, linspace:N, list:a,b,c)",
                      o.respace, e.what()));
    }
  }

  std::string out;
  const auto T = sched.num_timesteps();
  if (o.format == "json") {
    // One row per line inside the array, so the table stays readable and greppable.
    out += "[\n";
    for (int64_t t = 0; t < T; ++t) {
      const auto r = sched.row(t);
      const Json values[] = {r.t,
                             r.original_t,
                             r.beta,
                             r.alpha_bar,
                             r.alpha_bar_prev,
                             r.posterior_variance,
                             r.posterior_log_variance_clipped,
                             r.posterior_mean_coef1,
                             r.posterior_mean_coef2,
                             r.snr};
      static_assert(std::size(values) == std::size(kColumns));
      Json row;
      for (size_t i = 0; i < std::size(kColumns); ++i) row[kColumns[i]] = values[i];
      out += "  " + json_line(row) + (t + 1 < T ? ",\n" : "\n");
    }
    out += "]\n";
  } else if (o.format == "csv") {
    for (size_t i = 0; i < std::size(kColumns); ++i) out += fmt::format("{}{}", i ? "," : "", kColumns[i]);
    out += "\n";
    for (int64_t t = 0; t < T; ++t) {
      const auto r = sched.row(t);
      out += fmt::format("{},{},{},{},{},{},{},{},{},{}\n", r.t, r.original_t, r.beta, r.alpha_bar, r.alpha_bar_prev,
                         r.posterior_variance, r.posterior_log_variance_clipped, r.posterior_mean_coef1,
                         r.posterior_mean_coef2, r.snr);
    }
  } else {
    out += fmt::format("# schedule={} T={}{}\n", o.schedule, o.timesteps,
                       o.respace.empty() ? "" : fmt::format(" respace={} -> {} steps", o.respace, T));
    out += fmt::format("{:>6} {:>10} {:>12} {:>12} {:>14} {:>12} {:>12} {:>12} {:>12} {:>12}\n", "t", "original_t",
                       "beta", "alpha_bar", "alpha_bar_prev", "post_var", "post_logvar", "coef1", "coef2", "snr");
    for (int64_t t = 0; t < T; ++t) {
      const auto r = sched.row(t);
      out +=
          fmt::format("{:>6} {:>10} {:>12.6g} {:>12.6g} {:>14.6g} {:>12.6g} {:>12.6g} {:>12.6g} {:>12.6g} {:>12.6g}\n",
                      r.t, r.original_t, r.beta, r.alpha_bar, r.alpha_bar_prev, r.posterior_variance,
                      r.posterior_log_variance_clipped, r.posterior_mean_coef1, r.posterior_mean_coef2, r.snr);
    }
  }
  std::cout << out;
  return 0;
}

}  // namespace

void add_schedule_command(CLI::App& app, Action& action) {
  auto opts = std::make_shared<ScheduleOptions>();
  auto* cmd = app.add_subcommand("schedule", "Print a noise schedule (and its respacing) as a table, CSV or JSON");
  cmd->add_option("--schedule", opts->schedule, "Noise schedule")
      ->check(CLI::IsMember(schedule_kind_names()))
      ->capture_default_str();
  cmd->add_option("--timesteps,-T", opts->timesteps, "Number of diffusion steps T")
      ->check(CLI::Range(int64_t{1}, int64_t{1000000}))
      ->capture_default_str();
  cmd->add_option("--respace", opts->respace,
                  "Keep a subset of steps: '250', '10,15,20', 'ddim50', 'leading:50', 'trailing:50', "
                  "'linspace:50', 'list:0,10,999'");
  cmd->add_option("--format", opts->format, "Output format")
      ->check(CLI::IsMember({"table", "csv", "json"}))
      ->capture_default_str();
  cmd->add_option("--beta-start", opts->beta_start, "First beta (default: the schedule's published value)");
  cmd->add_option("--beta-end", opts->beta_end, "Last beta (default: the schedule's published value)");
  cmd->add_option("--betas-file", opts->betas_file, "File of betas, for --schedule custom");
  cmd->add_flag("--zero-terminal-snr", opts->zero_terminal_snr, "Rescale so that alpha_bar at the last step is 0");
  cmd->callback([opts, &action] { action = [opts] { return run_schedule(*opts); }; });
}

}  // namespace diffuse::cli

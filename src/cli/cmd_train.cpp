// `diffuse train`: train (or resume) a model from a YAML config.
#include <filesystem>
#include <iostream>

#include <fmt/format.h>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/launch.h"
#include "diffuse/data/dataset.h"
#include "diffuse/dist/process_group.h"
#include "diffuse/error.h"
#include "diffuse/factory.h"
#include "diffuse/models/network.h"
#include "diffuse/progress.h"
#include "diffuse/train/checkpoint.h"
#include "diffuse/train/trainer.h"

namespace fs = std::filesystem;

namespace diffuse::cli {

namespace {

struct TrainOptions {
  std::string config;
  std::string run_dir;
  std::vector<std::string> overrides;
  std::string resume;
  bool resume_flag = false;
  bool print_model = false;
  bool dry_run = false;
  bool overwrite = false;
  bool allow_data_change = false;
  int nproc = 1;
};

int run_train(const TrainOptions& o) {
  TrainRequest req;
  req.dist = read_dist_env();
  const bool main_rank = req.dist.rank == 0;
  std::string resume_path;
  const std::string default_run_dir = !o.run_dir.empty() ? o.run_dir
                                      : o.config.empty() ? ""
                                                         : (fs::path("runs") / fs::path(o.config).stem()).string();
  if (!o.resume_flag && req.dist.restart_count > 0 && !default_run_dir.empty() &&
      !run_checkpoints(default_run_dir).empty()) {
    // torchrun --max_restarts: the restarted job continues the run it was doing.
    resume_path = resolve_checkpoint(default_run_dir);
    if (main_rank)
      std::cerr << fmt::format("diffuse: restart {} of the job: resuming from {}\n", req.dist.restart_count,
                               resume_path);
  }
  if (o.resume_flag) {
    resume_path = o.resume.empty() ? o.run_dir : o.resume;
    if (resume_path.empty()) throw UsageError("--resume needs a run directory or checkpoint (or --run-dir)");
    resume_path = resolve_checkpoint(resume_path);
  }
  if (!resume_path.empty()) {
    // The checkpoint's config is the run's config; --set may change e.g. train.steps.
    CheckpointReader reader(resume_path);
    req.config = config_from_checkpoint_yaml(reader.meta().config_yaml, resume_path, o.overrides);
    if (!o.config.empty() && main_rank && o.resume_flag)
      std::cerr << "diffuse: resuming with the config stored in " << resume_path << " (--config " << o.config
                << " is not re-read; use --set to change keys)\n";
    req.resume_from = resume_path;
  } else {
    if (o.config.empty()) throw UsageError("--config is required (or --resume a run)");
    req.config = resolve_config(o.config, o.overrides);
  }
  req.overwrite = o.overwrite;
  req.allow_data_change = o.allow_data_change;
  if (!o.run_dir.empty()) {
    req.run_dir = o.run_dir;
  } else if (!resume_path.empty()) {
    // .../RUN/checkpoints/ckpt.pt -> .../RUN
    req.run_dir = fs::path(resume_path).parent_path().parent_path().string();
  } else {
    req.run_dir = default_run_dir;
  }

  if (o.dry_run) {
    std::cout << to_yaml(req.config);
    return 0;
  }
  if (o.print_model) {
    auto dataset = make_dataset(req.config.data, req.config.train.seed);
    auto model = make_model(req.config, data_shape(*dataset, req.config.data));
    std::cout << model_summary(*model);
    return 0;
  }

  install_stop_handlers();
  auto s = train(req);
  if (!main_rank) return s.stop_signal ? 128 + s.stop_signal : 0;  // rank 0 reports for all
  if (s.end_step == s.start_step && !s.stop_signal) {
    std::cout << fmt::format(
        "nothing to train: the run is at step {} of train.steps {} (raise it with --set "
        "train.steps=N to train further)\n",
        s.end_step, req.config.train.steps);
    std::cout << "  run directory: " << s.run_dir << "\n";
    std::cout << "  checkpoint:    " << resolve_checkpoint(s.run_dir) << "\n";
    return 0;
  }
  std::cout << fmt::format("{} {} steps ({} -> {}) in {} ({:.1f} img/s), final loss {:.5f}{}\n",
                           s.stop_signal ? "stopped after" : "trained", s.end_step - s.start_step, s.start_step,
                           s.end_step, format_duration(s.seconds), s.images_per_second, s.final_loss,
                           s.skipped_steps ? fmt::format(", {} non-finite steps skipped", s.skipped_steps) : "");
  std::cout << "  run directory: " << s.run_dir << "\n";
  if (!s.checkpoint.empty()) std::cout << "  checkpoint:    " << s.checkpoint << " (also checkpoints/latest.pt)\n";
  if (!s.grid.empty()) std::cout << "  sample grid:   " << s.grid << "\n";
  std::cout << "  metrics:       " << s.metrics << "\n";
  std::cout << "  log:           " << s.log << "\n";
  std::cout << "  config:        " << s.config << "\n";
  if (s.stop_signal) {
    std::cout << "  resume with:   diffuse train --resume " << s.run_dir << "\n";
    return 128 + s.stop_signal;
  }
  return 0;
}

}  // namespace

void add_train_command(CLI::App& app, Action& action) {
  auto o = std::make_shared<TrainOptions>();
  auto* cmd = app.add_subcommand("train", "Train (or resume) a diffusion model from a YAML config");
  cmd->add_option("--config,-c", o->config, "YAML config (see configs/ and docs/config.md)");
  cmd->add_option("--run-dir", o->run_dir, "Run directory (default: runs/<config name>)");
  cmd->add_option("--set", o->overrides, "Override a config key, e.g. --set train.lr=2e-4 (repeatable)")
      ->allow_extra_args(false);
  cmd->add_option("--resume", o->resume, "Resume: a run directory or checkpoint (no value: the --run-dir)")
      ->expected(0, 1);
  auto* overwrite = cmd->add_flag("--overwrite", o->overwrite,
                                  "Start afresh in a run directory that holds a run, deleting its checkpoints, "
                                  "samples, metrics and log (without it, train refuses such a directory)");
  cmd->add_flag("--allow-data-change", o->allow_data_change,
                "Resume even though the data differs from the data the checkpoint was trained on");
  add_nproc_option(*cmd, &o->nproc);
  cmd->add_flag("--print-model", o->print_model, "Print the layer summary and parameter count, then exit");
  cmd->add_flag("--dry-run", o->dry_run, "Print the resolved config, then exit");
  overwrite->excludes("--resume");
  cmd->callback([o, cmd, &action] {
    o->resume_flag = cmd->count("--resume") > 0;
    action = [o] { return should_launch(o->nproc) ? launch_local_ranks(o->nproc) : run_train(*o); };
  });
}

}  // namespace diffuse::cli

// The training loop: data -> noise -> loss -> AdamW step -> EMA, with logging, periodic
// sample grids and atomic checkpoints in a run directory, resumable bit-for-bit on CPU.
//
// Data parallel over several ranks (TrainRequest::dist, from torchrun's variables): every rank
// trains on its shard of each global batch, gradients are averaged by bucketed all-reduce, and
// rank 0 alone writes the run directory. docs/distributed.md has the whole contract.
#pragma once

#include <string>

#include "diffuse/config.h"
#include "diffuse/dist/process_group.h"

namespace diffuse {

struct TrainRequest {
  Config config;
  std::string run_dir;      // created if missing
  std::string resume_from;  // "" = a fresh run; else a checkpoint file or a run directory
  // A fresh run refuses a run directory that already holds checkpoints (UsageError naming it),
  // so no run is ever written over by accident; with overwrite the old run's checkpoints,
  // samples, metrics and log are deleted first (other files in the directory are left alone).
  bool overwrite = false;
  // A resume refuses data whose fingerprint differs from the checkpoint's (UsageError naming
  // data.path): the data order would continue over other examples. This lets it go on anyway.
  bool allow_data_change = false;
  DistEnv dist;  // one rank unless launched (read_dist_env())
  // Benchmarks: steady-state speed is measured after this many steps, and the final
  // checkpoint / sample grid can be skipped.
  int64_t timing_warmup_steps = 0;
  bool save_final = true;
  // Stop (with a checkpoint, as a signal would) once this step is done; 0 = run to train.steps.
  // Unlike a smaller train.steps, the LR schedule still spans train.steps: a job split into
  // time slices resumes into exactly the run it would have been.
  int64_t stop_after_step = 0;
};

struct TrainSummary {
  int64_t start_step = 0;
  int64_t end_step = 0;
  double seconds = 0.0;
  double final_loss = 0.0;  // mean loss over the last logging window
  double images_per_second = 0.0;
  double steady_images_per_second = 0.0;  // after timing_warmup_steps
  int64_t parameters = 0;
  int threads = 0;
  std::string device;
  std::string precision;      // in effect (train.precision 'auto' resolved)
  int64_t skipped_steps = 0;  // non-finite steps skipped (train.on_nonfinite: skip)
  int stop_signal = 0;        // SIGINT/SIGTERM number if the run was stopped early
  std::string run_dir, checkpoint, grid, metrics, log, config;
};

// Runs (or resumes) training. Throws UsageError for bad configuration / inputs and
// std::runtime_error for failures during the run (e.g. a non-finite loss, naming the step).
TrainSummary train(const TrainRequest& request);

// Asks train() to stop after the current step (it then checkpoints and returns). A request made
// while train() is still setting up (loading data, building the model) is kept: the run stops
// before its first step. Async-signal-safe: meant to be called from a SIGINT/SIGTERM handler.
// train() never clears it; a program that trains again after a stop calls clear_stop_request().
void request_stop(int signal) noexcept;
void clear_stop_request() noexcept;

}  // namespace diffuse

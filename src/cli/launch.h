// `--nproc-per-node N`: diffuse as its own launcher, for machines without torchrun. The
// command line is run again N times with torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE,
// LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1, a free MASTER_PORT, OMP_NUM_THREADS split between the
// ranks unless set); signals are passed on to every rank, and a rank that fails stops the rest.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "diffuse/dist/process_group.h"

namespace CLI {
class App;
}

namespace diffuse::cli {

// Keeps main()'s arguments for the launcher.
void remember_argv(int argc, char** argv);

// Adds --nproc-per-node to a subcommand; *n receives the value (1 when absent).
void add_nproc_option(CLI::App& cmd, int* n);

// True when this process should launch ranks rather than do the work (n > 1 and not already
// under a launcher).
bool should_launch(int n);

// Runs the remembered command line as n local ranks and waits for them. Returns the exit
// status: 0 when every rank succeeded, 128 + signal when stopped by one, else the first failed
// rank's status (each failure named on stderr).
int launch_local_ranks(int n);

// `sample` and `eval` under a launcher: the launch environment's process group, or one rank
// (no communication) when not launched. Gloo on the CPU whatever the compute device: what these
// commands exchange (samples, features, per-image bounds) is on the host already. timeout_s:
// train.dist_timeout, which must cover the longest wait for a slower rank (one bits/dim batch).
std::unique_ptr<ProcessGroup> join_launch_group(const DistEnv& env, int64_t timeout_s);

}  // namespace diffuse::cli

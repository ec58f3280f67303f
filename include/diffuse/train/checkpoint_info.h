// What a checkpoint holds, read in full: every tensor is loaded, so a file that passes is whole.
// Fingerprints of the weights, the EMA, the optimizer moments and the rest of the training state
// tell whether two checkpoints (an interrupted and resumed run, say, and an uninterrupted one)
// hold the same state bit for bit. `diffuse info` prints it.
#pragma once

#include <cstdint>
#include <string>

#include "diffuse/train/checkpoint.h"

namespace diffuse {

struct CheckpointInfo {
  std::string path;  // the file read (a run directory resolves to its latest.pt)
  int64_t file_bytes = 0;
  CheckpointMeta meta;
  std::string model, schedule, prediction;  // from the stored config
  int64_t timesteps = 0;
  int64_t parameters = 0;
  bool has_ema = false, has_optimizer = false;
  // fingerprint_string() values; "" for a part the file lacks.
  std::string weights_fingerprint, ema_fingerprint, optimizer_fingerprint;
  // RNG states, timestep-sampler history, step and data position.
  std::string progress_fingerprint;
};

// Throws UsageError naming the file when it is missing, corrupt or not a diffuse checkpoint.
CheckpointInfo inspect_checkpoint(const std::string& path_or_run_dir);

std::string info_text(const CheckpointInfo& info);
std::string info_json(const CheckpointInfo& info);  // one JSON object, with a trailing newline

}  // namespace diffuse

// Checkpoints: one self-describing file per save, holding the resolved config, the data shape,
// model + EMA weights, optimizer state, step, data-order position, RNG states and the
// timestep-sampler history. Written atomically; a run directory keeps the last K plus `latest.pt`.
//
// Format 2 is a safetensors file (read by our own bounds-checked parser; any safetensors reader
// opens it): tensors "model.<name>", "ema.<name>" (parameters and buffers by module path),
// "optimizer.<i>.{exp_avg,exp_avg_sq,max_exp_avg_sq,step}" (AdamW, i = the parameter's index
// in the optimizer), "state.{cpu_rng,device_rng,timestep_sampler}"; "__metadata__" holds
// "format": "diffuse-checkpoint", "format_version": "2" and the CheckpointMeta fields as strings.
// A `diffuse export` file ("format": "diffuse": weights and config only) reads as a checkpoint
// that cannot resume. Format 1 files (LibTorch archives, whose unpickler can crash on crafted
// bytes) are read only when the caller says the file is trusted (`diffuse import` does).
#pragma once

#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "diffuse/factory.h"

namespace torch::nn {
class Module;
}
namespace torch::optim {
class AdamW;
}
namespace torch::serialize {
class InputArchive;
}

namespace diffuse {

struct SafeTensors;

// Everything in a checkpoint but the weights and optimizer state.
struct CheckpointMeta {
  int64_t step = 0;
  std::string config_yaml;  // the fully resolved config
  DataShape data;
  int64_t data_epoch = 0;  // position of the next batch in the data order
  int64_t data_offset = 0;
  torch::Tensor cpu_rng_state;     // CPU default generator
  torch::Tensor device_rng_state;  // the training device's generator (CUDA), undefined on CPU
  torch::Tensor timestep_sampler_state;
  double loss_scale = 0.0;            // fp16 dynamic loss scale (0 = unused)
  int64_t loss_scale_good_steps = 0;  // good steps since its last change (GradScaler's growth tracker)
  double elapsed_seconds = 0.0;
  int64_t world_size = 1;        // ranks of the run that wrote it (data_offset is per rank); 1 for older files
  std::string data_fingerprint;  // Dataset::fingerprint() of the training data; "" when unknown
};

constexpr int64_t kCheckpointFormat = 2;
constexpr int64_t kLegacyCheckpointFormat = 1;              // a LibTorch archive
constexpr int64_t kLegacyCheckpointMagic = 0x646966667573;  // "diffus", format 1's "diffuse_checkpoint" key

// A stored data shape checked: 1 to 4 sizes, each in 1..2^20; UsageError naming `file` otherwise.
std::vector<int64_t> parse_data_shape(const std::vector<int64_t>& sizes, const std::string& file);

// Writes the checkpoint atomically (temp file, fsync, rename). `ema` and `optimizer` may be null.
void save_checkpoint(const std::string& path, const CheckpointMeta& meta, torch::nn::Module& model,
                     torch::nn::Module* ema, torch::optim::AdamW* optimizer);

// Writes the weights-only file that `diffuse export` makes ("format": "diffuse": model and EMA
// weights, config, data shape, classes, step), atomically. Returns the number of tensors written.
int64_t save_weights_file(const std::string& path, const CheckpointMeta& meta, torch::nn::Module& model,
                          torch::nn::Module* ema);

// Opens a checkpoint once; the parts are then loaded on demand. A missing, truncated or foreign
// file is refused with an error naming it.
class CheckpointReader {
 public:
  // Tensors are mapped onto `device` as they are read (weights, optimizer state). A format-1
  // file is refused (naming `diffuse import`) unless `trust_legacy`.
  explicit CheckpointReader(const std::string& path, const torch::Device& device = torch::kCPU,
                            bool trust_legacy = false);
  ~CheckpointReader();
  const CheckpointMeta& meta() const { return meta_; }
  const std::string& path() const { return path_; }
  bool has_ema() const { return has_ema_; }
  bool has_optimizer() const { return has_optimizer_; }  // false: it samples but cannot resume
  // Loads weights into a network of the same architecture ("model" or "ema").
  void load_weights(torch::nn::Module& module, bool ema) const;
  void load_optimizer(torch::optim::AdamW& optimizer) const;
  int64_t format() const { return legacy_ ? kLegacyCheckpointFormat : kCheckpointFormat; }

 private:
  std::string path_;
  CheckpointMeta meta_;
  bool has_ema_ = false, has_optimizer_ = false;
  std::unique_ptr<SafeTensors> file_;
  std::unique_ptr<torch::serialize::InputArchive> legacy_;
};

class Network;

struct LoadedNetwork {
  std::shared_ptr<Network> net;
  bool ema = false;  // whether the EMA weights were loaded
};
// The network a checkpoint describes (cfg: its config, possibly overridden), with the EMA
// weights when asked for and present (else the raw ones), on `device`, in eval mode.
LoadedNetwork load_network(const CheckpointReader& reader, const Config& cfg, bool prefer_ema,
                           const torch::Device& device);

// A checkpoint file, or a run directory (its checkpoints/latest.pt), or a checkpoints/ folder.
// Throws UsageError naming what was looked for.
std::string resolve_checkpoint(const std::string& path_or_run_dir);

// The step checkpoints of a run directory (run_dir/checkpoints/ckpt_<step>.pt), oldest first;
// empty when there are none (or no such directory).
std::vector<std::string> run_checkpoints(const std::string& run_dir);

// Points run_dir/checkpoints/latest.pt at `checkpoint` (a file in that folder) atomically;
// removes latest.pt when `checkpoint` is empty.
void link_latest_checkpoint(const std::string& run_dir, const std::string& checkpoint);

// Saves into run_dir/checkpoints/ckpt_<step>.pt, points latest.pt at it and removes all but the
// newest `keep` step checkpoints (never the one just written). Temporaries that a killed save
// left in the folder are removed first. Returns the path written.
std::string save_run_checkpoint(const std::string& run_dir, int64_t keep, const CheckpointMeta& meta,
                                torch::nn::Module& model, torch::nn::Module* ema, torch::optim::AdamW* optimizer);

}  // namespace diffuse

// Checkpoints of diffuse before format 2: LibTorch serialize archives (zip + pickle). Still read,
// so that older runs resume and sample, but LibTorch's unpickler is not safe on crafted bytes:
// read them only from files you trust (docs/decisions.md, "Checkpoints in safetensors").
#pragma once

#include <torch/types.h>

#include <memory>
#include <string>

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

struct CheckpointMeta;

// Opens a legacy archive and reads its metadata and which parts it holds.
std::unique_ptr<torch::serialize::InputArchive> open_legacy_checkpoint(const std::string& path,
                                                                       const torch::Device& device,
                                                                       CheckpointMeta& meta, bool& has_ema,
                                                                       bool& has_optimizer);
void legacy_load_weights(torch::serialize::InputArchive& archive, torch::nn::Module& module, bool ema,
                         const std::string& path);
// Refuses state that does not fit its parameters: LibTorch 2.x reading an archive that 1.x wrote
// attaches the moments to the wrong parameters.
void legacy_load_optimizer(torch::serialize::InputArchive& archive, torch::optim::AdamW& optimizer,
                           const std::string& path);

}  // namespace diffuse

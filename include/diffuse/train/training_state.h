// The tensors that make up a training state (a module's weights and buffers, AdamW's moments)
// and one fingerprint over them: ranks compare it at each checkpoint, and `diffuse info` prints
// it so that two runs can be compared bit for bit.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace torch::nn {
class Module;
}
namespace torch::optim {
class AdamW;
struct AdamWParamState;
}  // namespace torch::optim

namespace diffuse {

// Parameters, then buffers, in registration order.
std::vector<torch::Tensor> module_tensors(const torch::nn::Module& module);
// The same with their module paths, prefixed: ("model.time_embed.0.weight", tensor), detached.
void append_named_tensors(std::vector<std::pair<std::string, torch::Tensor>>& out, const torch::nn::Module& module,
                          const std::string& prefix);

// exp_avg, exp_avg_sq (and max_exp_avg_sq under amsgrad) of each parameter that has state, in
// the order of `params`.
std::vector<torch::Tensor> adamw_moments(torch::optim::AdamW& optimizer, const std::vector<torch::Tensor>& params);

// The AdamW state of parameter `p` (nullptr before its first step), and setting it.
torch::optim::AdamWParamState* adamw_state(torch::optim::AdamW& optimizer, const torch::Tensor& p);
void set_adamw_state(torch::optim::AdamW& optimizer, const torch::Tensor& p,
                     std::unique_ptr<torch::optim::AdamWParamState> state);

// FNV-1a over the bytes of each defined tensor (moved to the CPU, made contiguous).
uint64_t tensors_fingerprint(const std::vector<torch::Tensor>& tensors);

}  // namespace diffuse

#include "diffuse/train/training_state.h"

#include <torch/torch.h>

#include <sstream>
#include <type_traits>

#include "diffuse/hash.h"

namespace diffuse {

namespace {
// An optimizer's state entry for a parameter: keyed by the TensorImpl's address, as a string in
// LibTorch 1.13 and as the pointer itself in 2.x.
template <class Map>
auto param_state_key(const Map&, const torch::Tensor& p) {
  using Key = typename Map::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream key;
    key << p.unsafeGetTensorImpl();
    return key.str();
  } else {
    return static_cast<Key>(p.unsafeGetTensorImpl());
  }
}
}  // namespace

std::vector<torch::Tensor> module_tensors(const torch::nn::Module& module) {
  std::vector<torch::Tensor> v;
  for (const auto& p : module.parameters()) v.push_back(p);
  for (const auto& b : module.buffers()) v.push_back(b);
  return v;
}

torch::optim::AdamWParamState* adamw_state(torch::optim::AdamW& optimizer, const torch::Tensor& p) {
  auto& state = optimizer.state();
  const auto it = state.find(param_state_key(state, p));
  return it == state.end() ? nullptr : static_cast<torch::optim::AdamWParamState*>(it->second.get());
}

void set_adamw_state(torch::optim::AdamW& optimizer, const torch::Tensor& p,
                     std::unique_ptr<torch::optim::AdamWParamState> st) {
  auto& state = optimizer.state();
  state[param_state_key(state, p)] = std::move(st);
}

void append_named_tensors(std::vector<std::pair<std::string, torch::Tensor>>& out, const torch::nn::Module& m,
                          const std::string& prefix) {
  for (const auto& p : m.named_parameters()) out.emplace_back(prefix + p.key(), p.value().detach());
  for (const auto& b : m.named_buffers()) out.emplace_back(prefix + b.key(), b.value().detach());
}

std::vector<torch::Tensor> adamw_moments(torch::optim::AdamW& optimizer, const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> v;
  for (const auto& p : params) {
    const auto* st = adamw_state(optimizer, p);
    if (!st) continue;
    v.push_back(st->exp_avg());
    v.push_back(st->exp_avg_sq());
    if (st->max_exp_avg_sq().defined()) v.push_back(st->max_exp_avg_sq());
  }
  return v;
}

uint64_t tensors_fingerprint(const std::vector<torch::Tensor>& tensors) {
  uint64_t h = kFnv1aOffsetBasis;
  for (const auto& t : tensors) {
    if (!t.defined()) continue;
    const auto c = t.detach().cpu().contiguous();
    h = fnv1a64(c.data_ptr(), static_cast<size_t>(c.numel()) * c.element_size(), h);
  }
  return h;
}

}  // namespace diffuse

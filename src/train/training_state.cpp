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
auto find_param_state(Map& state, const torch::Tensor& p) {
  using Key = typename Map::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream key;
    key << p.unsafeGetTensorImpl();
    return state.find(key.str());
  } else {
    return state.find(static_cast<Key>(p.unsafeGetTensorImpl()));
  }
}
}  // namespace

std::vector<torch::Tensor> module_tensors(const torch::nn::Module& module) {
  std::vector<torch::Tensor> v;
  for (const auto& p : module.parameters()) v.push_back(p);
  for (const auto& b : module.buffers()) v.push_back(b);
  return v;
}

std::vector<torch::Tensor> adamw_moments(torch::optim::AdamW& optimizer, const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> v;
  for (const auto& p : params) {
    const auto it = find_param_state(optimizer.state(), p);
    if (it == optimizer.state().end()) continue;
    const auto& st = static_cast<const torch::optim::AdamWParamState&>(*it->second);
    v.push_back(st.exp_avg());
    v.push_back(st.exp_avg_sq());
    if (st.max_exp_avg_sq().defined()) v.push_back(st.max_exp_avg_sq());
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

#include "diffuse/train/grad_clip.h"

#include <torch/torch.h>

namespace diffuse {

torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  std::vector<torch::Tensor> grads, norms;
  for (const auto& p : params)
    if (p.grad().defined()) {
      grads.push_back(p.grad());
      norms.push_back(p.grad().detach().norm(2).to(torch::kFloat32));
    }
  if (grads.empty()) return torch::zeros({}, torch::kFloat32);
  auto total = torch::stack(norms).norm(2);
  if (max_norm > 0) {
    torch::NoGradGuard ng;
    auto coef = (max_norm / (total + 1e-6)).clamp_max(1.0);
    for (auto& g : grads) g.mul_(coef.to(g.scalar_type()));
  }
  return total;
}

}  // namespace diffuse

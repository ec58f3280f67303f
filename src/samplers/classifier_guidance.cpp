#include "diffuse/samplers/classifier_guidance.h"

#include <c10/core/InferenceMode.h>
#include <torch/autograd.h>
#include <torch/torch.h>

#include <stdexcept>

namespace diffuse {

GuidanceGradient classifier_gradient(LogitsFn logits, torch::Tensor labels, double scale) {
  if (!logits) throw std::invalid_argument("classifier_gradient: the classifier function is empty");
  return [logits = std::move(logits), labels = std::move(labels), scale](const torch::Tensor& x_t,
                                                                         const torch::Tensor& t) {
    // Tensors made under inference mode cannot enter autograd: leave it and copy them out.
    c10::InferenceMode normal_mode(false);
    torch::AutoGradMode grad_mode(true);
    const auto x = x_t.detach().clone().requires_grad_(true);
    const auto out = logits(x, t.clone());
    TORCH_CHECK(out.dim() == 2 && out.size(0) == x.size(0), "the classifier returned ", out.sizes(), " for a batch of ",
                x.size(0));
    const auto y = labels.to(out.device()).view({-1, 1});
    // In float32 at least (logits under autocast may be half precision).
    const auto wide = out.scalar_type() == torch::kDouble ? out : out.to(torch::kFloat32);
    const auto selected = at::log_softmax(wide, -1).gather(1, y).sum();
    auto g = torch::autograd::grad({selected}, {x})[0];
    return (g * scale).detach();
  };
}

}  // namespace diffuse

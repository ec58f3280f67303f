// Gradient-norm clipping that stays on the device: the norm comes back as a tensor, so a
// training step can read it together with the loss in a single host sync.
#pragma once

#include <torch/types.h>

#include <vector>

namespace diffuse {

// Scales the gradients of `params` so that their global L2 norm is at most max_norm, as
// torch.nn.utils.clip_grad_norm_ does (coefficient max_norm / (norm + 1e-6), applied only where
// it is below 1); max_norm <= 0 only measures. Returns the norm before clipping, a 0-d float32
// tensor on the gradients' device (0 when no parameter has a gradient).
torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);

}  // namespace diffuse

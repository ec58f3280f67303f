#include "diffuse/train/label_dropout.h"

#include <torch/torch.h>

namespace diffuse {

torch::Tensor draw_label_drops(int64_t n, double p_uncond, const torch::Device& device) {
  return torch::rand({n}, torch::TensorOptions().device(device)) < p_uncond;
}

torch::Tensor drop_labels(const torch::Tensor& y, const torch::Tensor& drop, int64_t null_label) {
  return torch::where(drop, torch::full_like(y, null_label), y);
}

}  // namespace diffuse

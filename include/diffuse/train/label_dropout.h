// Classifier-free guidance training (Ho & Salimans 2022): each example's label is replaced by the
// null label (the network's num_classes) with probability p_uncond, so that one network learns
// both p(x | y) and p(x).
#pragma once

#include <torch/types.h>

#include <cstdint>

namespace diffuse {

// n Bernoulli(p) draws (bool [n]) on `device`, from its default generator.
torch::Tensor draw_label_drops(int64_t n, double p_uncond, const torch::Device& device);

// y with the entries where `drop` is true set to null_label.
torch::Tensor drop_labels(const torch::Tensor& y, const torch::Tensor& drop, int64_t null_label);

}  // namespace diffuse

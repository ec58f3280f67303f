#include "diffuse/train/loss_scale.h"

#include <torch/torch.h>

namespace diffuse {

DynamicLossScale::DynamicLossScale(bool enabled, double initial, int64_t growth_interval, double min_scale)
    : enabled_(enabled), scale_(initial), growth_interval_(growth_interval), min_scale_(min_scale) {}

void DynamicLossScale::restore(double saved, int64_t good_steps) {
  if (!enabled_ || saved <= 0) return;
  scale_ = saved;
  good_steps_ = good_steps;
}

torch::Tensor DynamicLossScale::apply(const torch::Tensor& loss) const { return enabled_ ? loss * scale_ : loss; }

void DynamicLossScale::unscale(const std::vector<torch::Tensor>& params) const {
  if (!enabled_) return;
  torch::NoGradGuard ng;
  // Multiplying by the reciprocal is exact for the power-of-two scales used here.
  for (const auto& p : params)
    if (p.grad().defined()) p.grad().mul_(1.0 / scale_);
}

bool DynamicLossScale::update(bool overflow) {
  if (!enabled_) return !overflow;
  if (overflow) {
    good_steps_ = 0;
    if (scale_ / 2.0 < min_scale_) return false;
    scale_ /= 2.0;
    return true;
  }
  if (++good_steps_ == growth_interval_) {  // GradScaler: grow, and start counting again
    scale_ *= 2.0;
    good_steps_ = 0;
  }
  return true;
}

}  // namespace diffuse

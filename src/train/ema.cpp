#include "diffuse/train/ema.h"

#include <torch/torch.h>

namespace diffuse {

Ema::Ema(std::shared_ptr<torch::nn::Module> model, std::shared_ptr<torch::nn::Module> shadow, double decay, bool warmup)
    : model_(std::move(model)), shadow_(std::move(shadow)), decay_(decay), warmup_(warmup) {
  torch::NoGradGuard ng;
  model_params_ = model_->parameters();
  shadow_params_ = shadow_->parameters();
  TORCH_CHECK(model_params_.size() == shadow_params_.size(), "EMA: model and shadow differ in structure");
  for (size_t i = 0; i < model_params_.size(); ++i) {
    shadow_params_[i].copy_(model_params_[i]);
    shadow_params_[i].set_requires_grad(false);
  }
  auto mb = model_->buffers();
  auto sb = shadow_->buffers();
  for (size_t i = 0; i < mb.size() && i < sb.size(); ++i) sb[i].copy_(mb[i]);
}

double Ema::decay_at(int64_t step) const {
  if (!warmup_) return decay_;
  return std::min(decay_, (1.0 + static_cast<double>(step)) / (10.0 + static_cast<double>(step)));
}

void Ema::update(int64_t step) {
  torch::NoGradGuard ng;
  const double d = decay_at(step);
  // lerp_: shadow += (1 - d) (model - shadow), one fused kernel per tensor.
  for (size_t i = 0; i < model_params_.size(); ++i) shadow_params_[i].lerp_(model_params_[i], 1.0 - d);
  auto mb = model_->buffers();
  auto sb = shadow_->buffers();
  for (size_t i = 0; i < mb.size() && i < sb.size(); ++i) sb[i].copy_(mb[i]);
}

}  // namespace diffuse

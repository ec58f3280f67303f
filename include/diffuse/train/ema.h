// Exponential moving average of a network's weights, kept in a second instance of the network
// so it can be sampled from and saved like any model.
#pragma once

#include <torch/nn/module.h>

#include <memory>

namespace diffuse {

class Ema {
 public:
  // `shadow` must have the same architecture as the trained model; it is overwritten with the
  // model's current weights.
  Ema(std::shared_ptr<torch::nn::Module> model, std::shared_ptr<torch::nn::Module> shadow, double decay, bool warmup);
  // The decay used at optimizer step `step` (1-based): min(decay, (1 + step) / (10 + step)) with
  // warm-up, so early averages are not dominated by the random initialisation.
  double decay_at(int64_t step) const;
  // shadow <- d shadow + (1 - d) model, for parameters; buffers are copied.
  void update(int64_t step);
  std::shared_ptr<torch::nn::Module> shadow() const { return shadow_; }

 private:
  std::shared_ptr<torch::nn::Module> model_, shadow_;
  double decay_;
  bool warmup_;
  std::vector<torch::Tensor> model_params_, shadow_params_;
};

}  // namespace diffuse

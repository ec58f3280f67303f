#include "diffuse/samplers/guidance.h"

#include <memory>
#include <stdexcept>

namespace diffuse {

namespace {

// Labels kept on the device of the last call, so a sampling loop copies them to the GPU once
// rather than once per step (a pageable host-to-device copy would also stall the stream).
class DeviceLabels {
 public:
  explicit DeviceLabels(torch::Tensor labels) : labels_(labels.to(torch::kLong)) {}
  const torch::Tensor& on(const torch::Device& device) {
    if (labels_.device() != device) labels_ = labels_.to(device);
    return labels_;
  }
  int64_t size() const { return labels_.size(0); }

 private:
  torch::Tensor labels_;
};

}  // namespace

torch::Tensor combine_guidance(const torch::Tensor& cond, const torch::Tensor& uncond, double scale,
                               bool learned_variance) {
  TORCH_CHECK(cond.sizes() == uncond.sizes(), "guidance: conditional ", cond.sizes(), " and unconditional ",
              uncond.sizes(), " outputs differ");
  if (!learned_variance) return torch::lerp(uncond, cond, scale);  // uncond + scale (cond - uncond)
  TORCH_CHECK(cond.size(1) % 2 == 0, "guidance: a learned-variance output needs an even channel count, got ",
              cond.size(1));
  const auto c = cond.chunk(2, 1);
  const auto u = uncond.chunk(2, 1);
  return torch::cat({torch::lerp(u[0], c[0], scale), c[1]}, 1);
}

ModelFn with_labels(LabeledModelFn net, torch::Tensor labels) {
  if (!net) throw std::invalid_argument("with_labels: the network function is empty");
  auto y = std::make_shared<DeviceLabels>(std::move(labels));
  return [net = std::move(net), y](const torch::Tensor& x, const torch::Tensor& t) {
    TORCH_CHECK(y->size() == x.size(0), "labels hold ", y->size(), " entries for a batch of ", x.size(0));
    return net(x, t, y->on(x.device()));
  };
}

ModelFn classifier_free_guidance(LabeledModelFn net, torch::Tensor labels, int64_t null_label, double scale,
                                 bool learned_variance) {
  if (!net) throw std::invalid_argument("classifier_free_guidance: the network function is empty");
  if (scale == 1.0) return with_labels(std::move(net), std::move(labels));
  labels = labels.to(torch::kLong);
  auto both = std::make_shared<DeviceLabels>(torch::cat({labels, torch::full_like(labels, null_label)}));
  return [net = std::move(net), both, scale, learned_variance](const torch::Tensor& x, const torch::Tensor& t) {
    const int64_t B = x.size(0);
    TORCH_CHECK(both->size() == 2 * B, "labels hold ", both->size() / 2, " entries for a batch of ", B);
    // One batched call: [x; x] with [labels; null].
    const auto out = net(torch::cat({x, x}), torch::cat({t, t}), both->on(x.device()));
    TORCH_CHECK(out.size(0) == 2 * B, "the guided network returned batch ", out.size(0), ", expected ", 2 * B);
    return combine_guidance(out.narrow(0, 0, B), out.narrow(0, B, B), scale, learned_variance);
  };
}

}  // namespace diffuse

// Dynamic loss scaling for fp16 training (as torch.cuda.amp.GradScaler): the loss is multiplied
// by a large factor before backward so small gradients survive fp16, the gradients are divided
// by it again before clipping and the optimizer step, and the factor adapts: halved on a step
// whose gradients overflowed (that step is skipped), doubled after `growth_interval` good steps.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace diffuse {

class DynamicLossScale {
 public:
  // Disabled (fp32 / bf16): apply() and unscale() do nothing and scale() is 0, the value a
  // checkpoint stores for "unused".
  explicit DynamicLossScale(bool enabled, double initial = 65536.0, int64_t growth_interval = 2000,
                            double min_scale = 1.0);

  bool enabled() const { return enabled_; }
  double scale() const { return enabled_ ? scale_ : 0.0; }
  // Good steps since the scale last changed; saved with it so a resumed run grows it on time.
  int64_t good_steps() const { return good_steps_; }
  // Takes the state saved by an fp16 run; ignored when disabled or when the saved scale is 0.
  void restore(double saved, int64_t good_steps = 0);

  torch::Tensor apply(const torch::Tensor& loss) const;          // loss * scale
  void unscale(const std::vector<torch::Tensor>& params) const;  // each gradient / scale

  // After a step: `overflow` when its gradients were not finite. Returns false when the scale
  // would drop below min_scale: the overflow is then no fp16 range problem but a diverging run,
  // and the caller treats it as any other non-finite step.
  bool update(bool overflow);

 private:
  bool enabled_;
  double scale_;
  int64_t growth_interval_;
  double min_scale_;
  int64_t good_steps_ = 0;
};

}  // namespace diffuse

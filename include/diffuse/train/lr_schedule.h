// Learning rate as a function of the optimizer step: linear warm-up, then constant or cosine
// decay to min_lr at the last step.
#pragma once

#include <cstdint>
#include <string>

namespace diffuse {

struct LrSchedule {
  double lr = 2e-4;
  int64_t warmup_steps = 0;
  std::string kind = "constant";  // constant | cosine
  double min_lr = 0.0;
  int64_t total_steps = 1;
  // lr for optimizer step `step` (1-based).
  double at(int64_t step) const;
};

}  // namespace diffuse

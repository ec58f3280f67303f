// Mixed precision: autocast regions for the network's forward pass.
#pragma once

#include <torch/types.h>

#include <string>

namespace diffuse {

// Autocast on `device` for precision "bf16" or "fp16" (fp32: nothing), undone when the guard
// leaves scope. fp16 needs CUDA; "auto" must be resolved first (runtime.h resolve_precision).
class AutocastGuard {
 public:
  AutocastGuard(const std::string& precision, const torch::Device& device);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool active_ = false, cuda_ = false;
};

}  // namespace diffuse

// Mixed precision: autocast regions for the network's forward pass.
#pragma once

#include <torch/types.h>

#include <string>
#include <vector>

namespace diffuse {

// The precisions a config or flag may name: fp32, bf16, fp16, auto (runtime.h resolve_precision
// turns auto into one of the others for a device).
std::vector<std::string> precision_names();

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

#include "diffuse/precision.h"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include "diffuse/error.h"

// LibTorch 2.4 replaced the per-device autocast setters by ones taking the device type.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define DIFFUSE_AUTOCAST_BY_DEVICE_TYPE 1
#endif

namespace diffuse {

std::vector<std::string> precision_names() { return {"fp32", "bf16", "fp16", "auto"}; }

AutocastGuard::AutocastGuard(const std::string& precision, const torch::Device& device) {
  if (precision == "fp32") return;
  if (precision != "bf16" && precision != "fp16")
    throw UsageError("precision '" + precision + "' is not one of: fp32, bf16, fp16");
  const auto dtype = precision == "bf16" ? at::kBFloat16 : at::kHalf;
  cuda_ = device.is_cuda();
  if (!cuda_ && dtype != at::kBFloat16) throw UsageError("precision 'fp16' needs CUDA; use bf16 or fp32 on CPU");
#ifdef DIFFUSE_AUTOCAST_BY_DEVICE_TYPE
  const auto type = cuda_ ? at::kCUDA : at::kCPU;
  at::autocast::set_autocast_enabled(type, true);
  at::autocast::set_autocast_dtype(type, dtype);
#else
  if (cuda_) {
    at::autocast::set_enabled(true);
    at::autocast::set_autocast_gpu_dtype(dtype);
  } else {
    at::autocast::set_cpu_enabled(true);
    at::autocast::set_autocast_cpu_dtype(dtype);
  }
#endif
  active_ = true;
}

AutocastGuard::~AutocastGuard() {
  if (!active_) return;
#ifdef DIFFUSE_AUTOCAST_BY_DEVICE_TYPE
  at::autocast::set_autocast_enabled(cuda_ ? at::kCUDA : at::kCPU, false);
#else
  if (cuda_) at::autocast::set_enabled(false);
  else at::autocast::set_cpu_enabled(false);
#endif
  at::autocast::clear_cache();
}

}  // namespace diffuse

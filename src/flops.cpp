#include "diffuse/flops.h"

#include <ATen/record_function.h>
#include <torch/torch.h>

#include <chrono>
#include <cstring>

namespace diffuse {

namespace {

thread_local double t_flops = 0.0;

int64_t numel_of(c10::IntArrayRef s) {
  int64_t n = 1;
  for (auto v : s) n *= v;
  return n;
}

std::unique_ptr<at::ObserverContext> on_op(const at::RecordFunction& fn) {
  const char* name = fn.name();
  if (!name) return nullptr;
  const auto in = fn.inputs();
  auto shape = [&](size_t i) -> std::vector<int64_t> {
    if (i < in.size() && in[i].isTensor() && in[i].toTensor().defined()) return in[i].toTensor().sizes().vec();
    return {};
  };
  if (std::strcmp(name, "aten::convolution") == 0 && in.size() >= 9) {
    // convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
    const auto x = shape(0), w = shape(1);
    if (x.size() < 3 || w.size() < 3) return nullptr;
    const auto stride = in[3].toIntVector(), padding = in[4].toIntVector(), dilation = in[5].toIntVector();
    const bool transposed = in[6].toBool();
    int64_t out_spatial = 1;
    for (size_t d = 2; d < x.size(); ++d) {
      const size_t k = d - 2;
      const int64_t s = stride.size() > k ? stride[k] : 1, p = padding.size() > k ? padding[k] : 0,
                    dl = dilation.size() > k ? dilation[k] : 1;
      out_spatial *= transposed ? x[d] : (x[d] + 2 * p - dl * (w[d] - 1) - 1) / s + 1;
    }
    // Each output position of a convolution (each input position of a transposed one) does one
    // multiply-add per weight of its group: N * positions * numel(weight) in all.
    t_flops += 2.0 * static_cast<double>(x[0]) * static_cast<double>(out_spatial) * static_cast<double>(numel_of(w));
  } else if (std::strcmp(name, "aten::addmm") == 0) {
    const auto a = shape(1), b = shape(2);
    if (a.size() == 2 && b.size() == 2) t_flops += 2.0 * a[0] * a[1] * b[1];
  } else if (std::strcmp(name, "aten::mm") == 0) {
    const auto a = shape(0), b = shape(1);
    if (a.size() == 2 && b.size() == 2) t_flops += 2.0 * a[0] * a[1] * b[1];
  } else if (std::strcmp(name, "aten::bmm") == 0) {
    const auto a = shape(0), b = shape(1);
    if (a.size() == 3 && b.size() == 3) t_flops += 2.0 * a[0] * a[1] * a[2] * b[2];
  } else if (std::strcmp(name, "aten::baddbmm") == 0) {
    const auto a = shape(1), b = shape(2);
    if (a.size() == 3 && b.size() == 3) t_flops += 2.0 * a[0] * a[1] * a[2] * b[2];
  } else if (std::strncmp(name, "aten::_scaled_dot_product_", 26) == 0 && std::strstr(name, "_math") == nullptr &&
             std::strstr(name, "backward") == nullptr) {
    // LibTorch 2.x's fused attention kernels (flash, efficient, cudnn, flash_for_cpu) run no mm/bmm
    // of their own: q [B, H, L, E], k [B, H, S, E], v [B, H, S, Ev] -> Q K^T and (softmax) V. The math
    // fallback is left to the bmm/matmul calls it makes.
    const auto q = shape(0), k = shape(1), v = shape(2);
    if (q.size() == 4 && k.size() == 4 && v.size() == 4)
      t_flops += 2.0 * q[0] * q[1] * q[2] * k[2] * (q[3] + v[3]);
  }
  return nullptr;
}

}  // namespace

double count_flops(const std::function<void()>& fn) {
  t_flops = 0.0;
  auto handle = at::addThreadLocalCallback(at::RecordFunctionCallback(on_op).needsInputs(true));
  try {
    fn();
  } catch (...) {
    at::removeCallback(handle);
    throw;
  }
  at::removeCallback(handle);
  return t_flops;
}

double measure_matmul_gflops(int64_t n, double seconds, bool cuda) {
  torch::NoGradGuard ng;
  auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(cuda ? torch::kCUDA : torch::kCPU);
  auto a = torch::randn({n, n}, opts), b = torch::randn({n, n}, opts);
  auto c = torch::mm(a, b);  // warm-up
  if (cuda) torch::cuda::synchronize();
  int64_t reps = 0;
  const auto t0 = std::chrono::steady_clock::now();
  double el = 0;
  do {
    torch::mm_out(c, a, b);
    ++reps;
    if (cuda) torch::cuda::synchronize();
    el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  } while (el < seconds);
  return 2.0 * static_cast<double>(n) * n * n * reps / el / 1e9;
}

}  // namespace diffuse

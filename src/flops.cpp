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
    // A one-entry stride, padding or dilation applies to every spatial dimension (conv2d(x, w,
    // {}, 2) reaches aten::convolution as [2], not [2, 2]).
    const auto at = [](const std::vector<int64_t>& v, size_t k, int64_t otherwise) {
      return v.empty() ? otherwise : v.size() == 1 ? v[0] : k < v.size() ? v[k] : otherwise;
    };
    int64_t out_spatial = 1;
    for (size_t d = 2; d < x.size(); ++d) {
      const size_t k = d - 2;
      const int64_t s = at(stride, k, 1), p = at(padding, k, 0), dl = at(dilation, k, 1);
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
    if (q.size() == 4 && k.size() == 4 && v.size() == 4) t_flops += 2.0 * q[0] * q[1] * q[2] * k[2] * (q[3] + v[3]);
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

namespace {

// GFLOP/s of `fn` (which does `flops` per call): one untimed call, then calls until `seconds`.
double time_gflops(double flops, const std::function<void()>& fn, double seconds, bool cuda) {
  fn();
  if (cuda) torch::cuda::synchronize();
  int64_t reps = 0;
  const auto t0 = std::chrono::steady_clock::now();
  double el = 0;
  do {
    fn();
    ++reps;
    if (cuda) torch::cuda::synchronize();
    el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  } while (el < seconds);
  return flops * static_cast<double>(reps) / el / 1e9;
}

}  // namespace

std::vector<Ceiling> measure_ceilings(bool cuda, double seconds) {
  torch::NoGradGuard ng;
  const auto device = cuda ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  const int64_t n = cuda ? 4096 : 1024;
  // A UNet level's convolution: 128 -> 128 channels at 32x32, batch 16 (twice that on a GPU).
  const int64_t batch = cuda ? 32 : 16, ch = 128, hw = 32;
  const double mm_flops = 2.0 * n * n * n;
  const double conv_flops = 2.0 * batch * hw * hw * ch * ch * 9;
  std::vector<Ceiling> out;
  std::vector<torch::ScalarType> dtypes{torch::kFloat32, torch::kBFloat16};
  if (cuda) dtypes.push_back(torch::kHalf);
  for (const auto dtype : dtypes) {
    const auto opts = torch::TensorOptions().dtype(dtype).device(device);
    const std::string name = dtype == torch::kFloat32 ? "fp32" : dtype == torch::kBFloat16 ? "bf16" : "fp16";
    {
      auto a = torch::randn({n, n}, opts), b = torch::randn({n, n}, opts), c = torch::empty({n, n}, opts);
      out.push_back({"matmul", name, cuda ? "cublas" : "torch::mm",
                     time_gflops(
                         mm_flops, [&] { torch::mm_out(c, a, b); }, seconds, cuda)});
      // The same product as a 1x1 convolution: on a CPU it runs on oneDNN's kernels rather than
      // the BLAS library torch::mm calls for fp32.
      auto x = a.t().contiguous().view({1, n, n, 1}), w = b.t().contiguous().view({n, n, 1, 1});
      out.push_back({"matmul", name, cuda ? "cudnn (1x1 conv)" : "onednn (1x1 conv)",
                     time_gflops(
                         mm_flops, [&] { torch::conv2d(x, w); }, seconds, cuda)});
    }
    auto x = torch::randn({batch, ch, hw, hw}, opts), w = torch::randn({ch, ch, 3, 3}, opts) * 0.03;
    out.push_back({"conv3x3", name, cuda ? "cudnn" : "onednn",
                   time_gflops(
                       conv_flops, [&] { torch::conv2d(x, w, {}, 1, 1); }, seconds, cuda)});
  }
  return out;
}

double best_ceiling(const std::vector<Ceiling>& ceilings, const std::string& dtype, const Ceiling** which) {
  double best = 0;
  for (const auto& c : ceilings)
    if (c.dtype == dtype && c.gflops > best) {
      best = c.gflops;
      if (which) *which = &c;
    }
  return best;
}

}  // namespace diffuse

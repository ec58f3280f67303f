// CPU kernels of the fused GroupNorm (+ FiLM) (+ SiLU) (models/layers.h group_norm_act), one set
// per instruction set. group_norm_kernel.cpp is compiled once per set (AVX-512, AVX2, the
// baseline) with its own flags; layers.cpp picks the best the CPU runs. Private to src/models.
//
// A block is one (sample, group): `channels` channels of `hw` contiguous values each, NCHW;
// the *_nhwc kernels take one channels-last sample instead.
// float tensors are float*, bf16 tensors uint16_t* (their bit patterns).
#pragma once

#include <cstdint>
#ifndef DIFFUSE_GN_ISA  // not in the kernels' own translation units (group_norm_kernel.cpp)
#include <vector>
#endif

namespace diffuse::gn_kernel {

template <class T>
struct Kernels {
  // mean and 1/sqrt(var + eps) of len values (two passes, accumulated in double).
  void (*stats)(const T* x, int64_t len, double eps, float* mean, float* rstd);
  // y = act(x * a[c] + b[c]) for each channel c of the block; act is SiLU or the identity.
  void (*apply)(const T* x, T* y, int64_t channels, int64_t hw, const float* a, const float* b, bool silu);
  // Backward, first pass over the block: with z = xhat * w[c] + bias[c], u = z * g[c] + sh[c],
  // du = dy * act'(u) and dz = du * g[c], writes dz (float, the block's layout) and per channel
  // sum du, sum du * z, sum dz, sum dz * xhat.
  void (*backward_sums)(const T* x, const T* dy, int64_t channels, int64_t hw, float mean, float rstd, const float* w,
                        const float* bias, const float* g, const float* sh, bool silu, float* dz, float* sum_du,
                        float* sum_du_z, float* sum_dz, float* sum_dz_xhat);
  // dx = rstd * (dz * w[c] - m1 - xhat * m2).
  void (*backward_dx)(const T* x, const float* dz, T* dx, int64_t channels, int64_t hw, float mean, float rstd,
                      const float* w, float m1, float m2);
  // Channels-last, one whole sample: x is [hw, c]; the forward writes the sample's per-group
  // mean and rstd ([groups]). dwork: 2c doubles, fwork: 2c floats of scratch. g and sh are the
  // sample's FiLM factor and offset ([c]).
  void (*forward_nhwc)(const T* x, T* y, int64_t hw, int64_t c, int64_t groups, double eps, const float* w,
                       const float* bias, const float* g, const float* sh, bool silu, float* mean, float* rstd,
                       double* dwork, float* fwork);
  // Its backward: writes dx and the sample's four per-channel sums (as backward_sums). dz: hw * c
  // floats, dwork: 3c doubles, fwork: 4c floats of scratch.
  void (*backward_nhwc)(const T* x, const T* dy, T* dx, int64_t hw, int64_t c, int64_t groups, const float* mean,
                        const float* rstd, const float* w, const float* bias, const float* g, const float* sh,
                        bool silu, float* dz, double* dwork, float* fwork, float* sum_du, float* sum_du_z,
                        float* sum_dz, float* sum_dz_xhat);
};

struct KernelSet {
  const char* isa;
  Kernels<float> f32;
  Kernels<uint16_t> bf16;
};

const KernelSet* kernels_baseline();
#if defined(__x86_64__)
const KernelSet* kernels_avx2();
const KernelSet* kernels_avx512();
#endif

#ifndef DIFFUSE_GN_ISA
// Every set built into this library, widest first.
inline std::vector<const KernelSet*> built_kernel_sets() {
#if defined(__x86_64__)
  return {kernels_avx512(), kernels_avx2(), kernels_baseline()};
#else
  return {kernels_baseline()};
#endif
}
#endif

}  // namespace diffuse::gn_kernel

// Compiled once per instruction set (DIFFUSE_GN_ISA = avx512, avx2 or baseline, with matching
// -m flags): everything here is file-local except the one accessor, so that no inline function
// compiled for a wider instruction set can be merged into code that runs on a narrower one
// (hence no standard-library templates either). Loops keep independent lanes so that the
// compiler vectorises the sums without reassociating floating-point adds.
#include <cstdint>

#include "group_norm_kernel.h"

#define DIFFUSE_GN_CAT2(a, b) a##b
#define DIFFUSE_GN_CAT(a, b) DIFFUSE_GN_CAT2(a, b)

namespace diffuse::gn_kernel {

namespace {

constexpr int kLanes = 16;

inline float to_float(float v) { return v; }
inline float to_float(uint16_t v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

template <class T>
inline T from_float(float f);
template <>
inline float from_float<float>(float f) {
  return f;
}
template <>
inline uint16_t from_float<uint16_t>(float f) {
  // Round to nearest even, as c10::BFloat16; NaN stays a (quiet) NaN.
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  return static_cast<uint16_t>(nan ? 0x7FC0u : rounded);
}

// e^x for x in float range, branch-free: x = n ln2 + r, |r| <= ln2 / 2, e^r by its Taylor
// series to r^7 (truncation below 2e-7 relative), 2^n by the exponent bits.
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float t = x * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t e = static_cast<int32_t>(n) + 127;
  const uint32_t bits = static_cast<uint32_t>(e) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, 4);
  return p * scale;
}

inline float sigmoid(float u) { return 1.0f / (1.0f + exp_approx(-u)); }

template <class T>
void stats(const T* x, int64_t len, double eps, float* mean_out, float* rstd_out) {
  double acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes)
    for (int k = 0; k < kLanes; ++k) acc[k] += static_cast<double>(to_float(x[i + k]));
  double sum = 0;
  for (; i < len; ++i) sum += static_cast<double>(to_float(x[i]));
  for (int k = 0; k < kLanes; ++k) sum += acc[k];
  const double mean = sum / static_cast<double>(len);
  double sq[kLanes] = {};
  i = 0;
  for (; i + kLanes <= len; i += kLanes)
    for (int k = 0; k < kLanes; ++k) {
      const double d = static_cast<double>(to_float(x[i + k])) - mean;
      sq[k] += d * d;
    }
  double var = 0;
  for (; i < len; ++i) {
    const double d = static_cast<double>(to_float(x[i])) - mean;
    var += d * d;
  }
  for (int k = 0; k < kLanes; ++k) var += sq[k];
  var /= static_cast<double>(len);
  *mean_out = static_cast<float>(mean);
  *rstd_out = static_cast<float>(1.0 / __builtin_sqrt(var + eps));
}

template <class T>
void apply(const T* x, T* y, int64_t channels, int64_t hw, const float* a, const float* b, bool silu) {
  for (int64_t c = 0; c < channels; ++c) {
    const T* xc = x + c * hw;
    T* yc = y + c * hw;
    const float ac = a[c], bc = b[c];
    if (silu) {
      for (int64_t i = 0; i < hw; ++i) {
        const float u = to_float(xc[i]) * ac + bc;
        yc[i] = from_float<T>(u * sigmoid(u));
      }
    } else {
      for (int64_t i = 0; i < hw; ++i) yc[i] = from_float<T>(to_float(xc[i]) * ac + bc);
    }
  }
}

template <class T>
void backward_sums(const T* x, const T* dy, int64_t channels, int64_t hw, float mean, float rstd, const float* w,
                   const float* bias, const float* g, const float* sh, bool silu, float* dz, float* sum_du,
                   float* sum_du_z, float* sum_dz, float* sum_dz_xhat) {
  for (int64_t c = 0; c < channels; ++c) {
    const T* xc = x + c * hw;
    const T* dyc = dy + c * hw;
    float* dzc = dz + c * hw;
    const float wc = w[c], bc = bias[c], gc = g[c], shc = sh[c];
    float s_du[kLanes] = {}, s_duz[kLanes] = {}, s_dzx[kLanes] = {};
    float t_du = 0, t_duz = 0, t_dzx = 0;
    auto one = [&](int64_t i, float& a_du, float& a_duz, float& a_dzx) {
      const float xhat = (to_float(xc[i]) - mean) * rstd;
      const float z = xhat * wc + bc;
      float du = to_float(dyc[i]);
      if (silu) {
        const float u = z * gc + shc;
        const float s = sigmoid(u);
        du *= s * (1.0f + u * (1.0f - s));
      }
      const float d = du * gc;
      dzc[i] = d;
      a_du += du;
      a_duz += du * z;
      a_dzx += d * xhat;
    };
    int64_t i = 0;
    for (; i + kLanes <= hw; i += kLanes)
      for (int k = 0; k < kLanes; ++k) one(i + k, s_du[k], s_duz[k], s_dzx[k]);
    for (; i < hw; ++i) one(i, t_du, t_duz, t_dzx);
    for (int k = 0; k < kLanes; ++k) {
      t_du += s_du[k];
      t_duz += s_duz[k];
      t_dzx += s_dzx[k];
    }
    sum_du[c] = t_du;
    sum_du_z[c] = t_duz;
    sum_dz[c] = t_du * gc;
    sum_dz_xhat[c] = t_dzx;
  }
}

template <class T>
void backward_dx(const T* x, const float* dz, T* dx, int64_t channels, int64_t hw, float mean, float rstd,
                 const float* w, float m1, float m2) {
  for (int64_t c = 0; c < channels; ++c) {
    const T* xc = x + c * hw;
    const float* dzc = dz + c * hw;
    T* dxc = dx + c * hw;
    const float wc = w[c];
    for (int64_t i = 0; i < hw; ++i) {
      const float xhat = (to_float(xc[i]) - mean) * rstd;
      dxc[i] = from_float<T>(rstd * (dzc[i] * wc - m1 - xhat * m2));
    }
  }
}

template <class T>
constexpr Kernels<T> kernels_of() {
  return {&stats<T>, &apply<T>, &backward_sums<T>, &backward_dx<T>};
}

#define DIFFUSE_GN_STR2(x) #x
#define DIFFUSE_GN_STR(x) DIFFUSE_GN_STR2(x)
const KernelSet kSet{DIFFUSE_GN_STR(DIFFUSE_GN_ISA), kernels_of<float>(), kernels_of<uint16_t>()};

}  // namespace

const KernelSet* DIFFUSE_GN_CAT(kernels_, DIFFUSE_GN_ISA)() { return &kSet; }

}  // namespace diffuse::gn_kernel

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

// Channels-last, one sample: x is [hw, c], a group is cpg consecutive channels of every pixel.
// Loops run over channels innermost, so they vectorise across channels; sums are per channel
// first (double), then per group.
template <class T, bool Silu>
void apply_rows(const T* __restrict x, T* __restrict y, int64_t hw, int64_t c, const float* __restrict a,
                const float* __restrict b) {
  for (int64_t p = 0; p < hw; ++p) {
    const T* xr = x + p * c;
    T* yr = y + p * c;
    for (int64_t ch = 0; ch < c; ++ch) {
      const float u = to_float(xr[ch]) * a[ch] + b[ch];
      yr[ch] = from_float<T>(Silu ? u * sigmoid(u) : u);
    }
  }
}

template <class T>
void forward_nhwc(const T* __restrict x, T* __restrict y, int64_t hw, int64_t c, int64_t groups, double eps,
                  const float* w, const float* bias, const float* g, const float* sh, bool silu, float* mean,
                  float* rstd, double* __restrict dwork, float* __restrict fwork) {
  double* sum = dwork;         // [c]
  double* mean_c = dwork + c;  // [c]
  const int64_t cpg = c / groups;
  const double len = static_cast<double>(cpg * hw);
  for (int64_t ch = 0; ch < c; ++ch) sum[ch] = 0;
  for (int64_t p = 0; p < hw; ++p)
    for (int64_t ch = 0; ch < c; ++ch) sum[ch] += static_cast<double>(to_float(x[p * c + ch]));
  for (int64_t gi = 0; gi < groups; ++gi) {
    double s = 0;
    for (int64_t j = 0; j < cpg; ++j) s += sum[gi * cpg + j];
    for (int64_t j = 0; j < cpg; ++j) mean_c[gi * cpg + j] = s / len;
  }
  for (int64_t ch = 0; ch < c; ++ch) sum[ch] = 0;
  for (int64_t p = 0; p < hw; ++p)
    for (int64_t ch = 0; ch < c; ++ch) {
      const double d = static_cast<double>(to_float(x[p * c + ch])) - mean_c[ch];
      sum[ch] += d * d;
    }
  float* a = fwork;        // [c]
  float* off = fwork + c;  // [c]
  for (int64_t gi = 0; gi < groups; ++gi) {
    double v = 0;
    for (int64_t j = 0; j < cpg; ++j) v += sum[gi * cpg + j];
    const double m = mean_c[gi * cpg];
    mean[gi] = static_cast<float>(m);
    rstd[gi] = static_cast<float>(1.0 / __builtin_sqrt(v / len + eps));
    for (int64_t j = 0; j < cpg; ++j) {
      const int64_t ch = gi * cpg + j;
      const float scale = rstd[gi] * w[ch];
      a[ch] = scale * g[ch];
      off[ch] = (bias[ch] - mean[gi] * scale) * g[ch] + sh[ch];
    }
  }
  if (silu) apply_rows<T, true>(x, y, hw, c, a, off);
  else apply_rows<T, false>(x, y, hw, c, a, off);
}

template <class T, bool Silu>
void backward_rows(const T* __restrict x, const T* __restrict dy, float* __restrict dz, int64_t hw, int64_t c,
                   const float* __restrict mean_c, const float* __restrict rstd_c, const float* __restrict w,
                   const float* __restrict bias, const float* __restrict g, const float* __restrict sh,
                   double* __restrict s_du, double* __restrict s_duz, double* __restrict s_dzx) {
  for (int64_t p = 0; p < hw; ++p)
    for (int64_t ch = 0; ch < c; ++ch) {
      const int64_t i = p * c + ch;
      const float xhat = (to_float(x[i]) - mean_c[ch]) * rstd_c[ch];
      const float z = xhat * w[ch] + bias[ch];
      float du = to_float(dy[i]);
      if (Silu) {
        const float u = z * g[ch] + sh[ch];
        const float sg = sigmoid(u);
        du *= sg * (1.0f + u * (1.0f - sg));
      }
      const float d = du * g[ch];
      dz[i] = d;
      s_du[ch] += du;
      s_duz[ch] += static_cast<double>(du * z);
      s_dzx[ch] += static_cast<double>(d * xhat);
    }
}

template <class T>
void backward_nhwc(const T* __restrict x, const T* __restrict dy, T* __restrict dx, int64_t hw, int64_t c,
                   int64_t groups, const float* mean, const float* rstd, const float* w, const float* bias,
                   const float* g, const float* sh, bool silu, float* __restrict dz, double* __restrict dwork,
                   float* __restrict fwork, float* sum_du, float* sum_du_z, float* sum_dz, float* sum_dz_xhat) {
  const int64_t cpg = c / groups;
  float *mean_c = fwork, *rstd_c = fwork + c, *m1_c = fwork + 2 * c, *m2_c = fwork + 3 * c;
  for (int64_t ch = 0; ch < c; ++ch) {
    mean_c[ch] = mean[ch / cpg];
    rstd_c[ch] = rstd[ch / cpg];
  }
  double *s_du = dwork, *s_duz = dwork + c, *s_dzx = dwork + 2 * c;
  for (int64_t k = 0; k < 3 * c; ++k) dwork[k] = 0;
  if (silu) backward_rows<T, true>(x, dy, dz, hw, c, mean_c, rstd_c, w, bias, g, sh, s_du, s_duz, s_dzx);
  else backward_rows<T, false>(x, dy, dz, hw, c, mean_c, rstd_c, w, bias, g, sh, s_du, s_duz, s_dzx);
  const double len = static_cast<double>(cpg * hw);
  for (int64_t gi = 0; gi < groups; ++gi) {
    double m1 = 0, m2 = 0;
    for (int64_t j = 0; j < cpg; ++j) {
      const int64_t ch = gi * cpg + j;
      sum_du[ch] = static_cast<float>(s_du[ch]);
      sum_du_z[ch] = static_cast<float>(s_duz[ch]);
      sum_dz[ch] = sum_du[ch] * g[ch];
      sum_dz_xhat[ch] = static_cast<float>(s_dzx[ch]);
      m1 += static_cast<double>(w[ch]) * sum_dz[ch];
      m2 += static_cast<double>(w[ch]) * sum_dz_xhat[ch];
    }
    for (int64_t j = 0; j < cpg; ++j) {
      m1_c[gi * cpg + j] = static_cast<float>(m1 / len);
      m2_c[gi * cpg + j] = static_cast<float>(m2 / len);
    }
  }
  for (int64_t p = 0; p < hw; ++p)
    for (int64_t ch = 0; ch < c; ++ch) {
      const int64_t i = p * c + ch;
      const float xhat = (to_float(x[i]) - mean_c[ch]) * rstd_c[ch];
      dx[i] = from_float<T>(rstd_c[ch] * (dz[i] * w[ch] - m1_c[ch] - xhat * m2_c[ch]));
    }
}

template <class T>
constexpr Kernels<T> kernels_of() {
  return {&stats<T>, &apply<T>, &backward_sums<T>, &backward_dx<T>, &forward_nhwc<T>, &backward_nhwc<T>};
}

#define DIFFUSE_GN_STR2(x) #x
#define DIFFUSE_GN_STR(x) DIFFUSE_GN_STR2(x)
const KernelSet kSet{DIFFUSE_GN_STR(DIFFUSE_GN_ISA), kernels_of<float>(), kernels_of<uint16_t>()};

}  // namespace

const KernelSet* DIFFUSE_GN_CAT(kernels_, DIFFUSE_GN_ISA)() { return &kSet; }

}  // namespace diffuse::gn_kernel

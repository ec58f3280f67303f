#include "diffuse/models/layers.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "group_norm_kernel.h"

namespace diffuse {

namespace {
constexpr double kGroupNormEps = 1e-5;
}

torch::nn::GroupNorm make_group_norm(int64_t channels) {
  return torch::nn::GroupNorm(torch::nn::GroupNormOptions(kGroupNormGroups, channels).eps(kGroupNormEps));
}

namespace {

// LibTorch 1.x's CPU GroupNorm kernel for ChannelsLast input is 10-60x slower than its
// contiguous kernel (measured: 26 ms vs 0.4 ms for [32, 32, 28, 28], one thread), far more than
// the layout copy, so channels-last activations are normalised in the contiguous layout there.
// The next conv (ChannelsLast weights) returns to ChannelsLast by itself.
torch::Tensor norm_layout(const torch::Tensor& x) {
#if TORCH_VERSION_MAJOR < 2
  if (x.is_cpu() && !x.is_contiguous()) return x.contiguous();
#endif
  return x;
}

}  // namespace

torch::Tensor group_norm32(const torch::nn::GroupNorm& norm, const torch::Tensor& x) {
  const auto& w = norm->weight;
  const auto& b = norm->bias;
  if (x.scalar_type() == torch::kFloat && w.scalar_type() == torch::kFloat)
    return at::group_norm(norm_layout(x), kGroupNormGroups, w, b, kGroupNormEps);
  return at::group_norm(norm_layout(x).to(torch::kFloat), kGroupNormGroups, w.to(torch::kFloat), b.to(torch::kFloat),
                        kGroupNormEps)
      .to(x.scalar_type());
}

namespace {

const gn_kernel::KernelSet* best_kernels() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    return gn_kernel::kernels_avx512();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return gn_kernel::kernels_avx2();
#endif
  return gn_kernel::kernels_baseline();
}

// The kernel set called `name` ("aten": nullptr, ATen's separate ops), if this CPU runs it: the
// best set it runs, or a narrower one.
bool find_kernels(const std::string& name, const gn_kernel::KernelSet** out) {
  if (name == "aten") {
    *out = nullptr;
    return true;
  }
  const gn_kernel::KernelSet* best = best_kernels();
  const auto sets = gn_kernel::built_kernel_sets();  // widest first
  bool runs = false;
  for (const auto* k : sets) {
    runs = runs || k == best;
    if (name != k->isa) continue;
    if (!runs) return false;
    *out = k;
    return true;
  }
  return false;
}

// The kernel set in use: the best this CPU runs, or the one DIFFUSE_CPU_KERNELS names (for
// side-by-side benchmarks), or the one set_cpu_kernels() chose.
const gn_kernel::KernelSet*& active_kernels() {
  static const gn_kernel::KernelSet* set = [] {
    const gn_kernel::KernelSet* k = best_kernels();
    if (const char* env = std::getenv("DIFFUSE_CPU_KERNELS"); env && *env && !find_kernels(env, &k))
      throw std::runtime_error(std::string("DIFFUSE_CPU_KERNELS=") + env +
                               ": expected aten, baseline, avx2 or avx512, one this CPU runs");
    return k;
  }();
  return set;
}

template <class T>
const gn_kernel::Kernels<T>& kernels_for(const gn_kernel::KernelSet& set);
template <>
const gn_kernel::Kernels<float>& kernels_for<float>(const gn_kernel::KernelSet& set) {
  return set.f32;
}
template <>
const gn_kernel::Kernels<uint16_t>& kernels_for<uint16_t>(const gn_kernel::KernelSet& set) {
  return set.bf16;
}

template <class T>
T* data_of(const torch::Tensor& t) {
  if constexpr (std::is_same_v<T, float>) return t.data_ptr<float>();
  else return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>());
}

// LibTorch 1.13's Function::apply needs every tensor input defined, so an absent FiLM term
// travels as an empty tensor.
bool present(const torch::Tensor& t) { return t.defined() && t.numel() > 0; }
torch::Tensor or_empty(const torch::Tensor& t) { return t.defined() ? t : torch::empty({0}); }

// The per-channel factor and offset of the FiLM step (1 + scale, shift), [N, C] float; ones and
// zeros without it.
std::pair<torch::Tensor, torch::Tensor> film_terms(const torch::Tensor& scale, const torch::Tensor& shift, int64_t n,
                                                   int64_t c) {
  const auto f = torch::TensorOptions().dtype(torch::kFloat);
  torch::Tensor g = present(scale) ? (scale.to(torch::kFloat) + 1.0).contiguous() : torch::ones({n, c}, f);
  torch::Tensor sh = present(shift) ? shift.to(torch::kFloat).contiguous() : torch::zeros({n, c}, f);
  return {g, sh};
}

struct GnShape {
  int64_t n, c, groups, cpg, hw;
};

GnShape gn_shape(const torch::Tensor& x, int64_t groups) {
  return {x.size(0), x.size(1), groups, x.size(1) / groups, x.numel() / (x.size(0) * x.size(1))};
}

template <class T>
void gn_act_forward(const gn_kernel::KernelSet& set, const torch::Tensor& x, const torch::Tensor& y,
                    const torch::Tensor& w, const torch::Tensor& b, const torch::Tensor& g, const torch::Tensor& sh,
                    const torch::Tensor& mean, const torch::Tensor& rstd, int64_t groups, double eps, bool silu) {
  const auto& k = kernels_for<T>(set);
  const GnShape s = gn_shape(x, groups);
  const T* xp = data_of<T>(x);
  T* yp = data_of<T>(y);
  const float *wp = w.data_ptr<float>(), *bp = b.data_ptr<float>(), *gp = g.data_ptr<float>(),
              *shp = sh.data_ptr<float>();
  float *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  // One (sample, group) per task, each reduced serially: the result does not depend on the
  // batch size or the thread count.
  at::parallel_for(0, s.n * s.groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> a(s.cpg), off(s.cpg);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t n = blk / s.groups, c0 = (blk % s.groups) * s.cpg;
      const int64_t base = (n * s.c + c0) * s.hw;
      k.stats(xp + base, s.cpg * s.hw, eps, mp + blk, rp + blk);
      for (int64_t j = 0; j < s.cpg; ++j) {
        const int64_t c = c0 + j, nc = n * s.c + c;
        const float scale = rp[blk] * wp[c];
        a[j] = scale * gp[nc];
        off[j] = (bp[c] - mp[blk] * scale) * gp[nc] + shp[nc];
      }
      k.apply(xp + base, yp + base, s.cpg, s.hw, a.data(), off.data(), silu);
    }
  });
}

// Channels-last: one sample per task (a group is spread over every pixel).
template <class T>
void gn_act_forward_nhwc(const gn_kernel::KernelSet& set, const torch::Tensor& x, const torch::Tensor& y,
                         const torch::Tensor& w, const torch::Tensor& b, const torch::Tensor& g,
                         const torch::Tensor& sh, const torch::Tensor& mean, const torch::Tensor& rstd, int64_t groups,
                         double eps, bool silu) {
  const auto& k = kernels_for<T>(set);
  const GnShape s = gn_shape(x, groups);
  const T* xp = data_of<T>(x);
  T* yp = data_of<T>(y);
  const float *wp = w.data_ptr<float>(), *bp = b.data_ptr<float>(), *gp = g.data_ptr<float>(),
              *shp = sh.data_ptr<float>();
  float *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  at::parallel_for(0, s.n, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> dwork(2 * s.c);
    std::vector<float> fwork(2 * s.c);
    for (int64_t n = begin; n < end; ++n)
      k.forward_nhwc(xp + n * s.c * s.hw, yp + n * s.c * s.hw, s.hw, s.c, groups, eps, wp, bp, gp + n * s.c,
                     shp + n * s.c, silu, mp + n * groups, rp + n * groups, dwork.data(), fwork.data());
  });
}

template <class T>
void gn_act_backward_nhwc(const gn_kernel::KernelSet& set, const torch::Tensor& x, const torch::Tensor& dy,
                          const torch::Tensor& dx, const torch::Tensor& w, const torch::Tensor& b,
                          const torch::Tensor& g, const torch::Tensor& sh, const torch::Tensor& mean,
                          const torch::Tensor& rstd, const torch::Tensor& sums, int64_t groups, bool silu) {
  const auto& k = kernels_for<T>(set);
  const GnShape s = gn_shape(x, groups);
  const T *xp = data_of<T>(x), *dyp = data_of<T>(dy);
  T* dxp = data_of<T>(dx);
  const float *wp = w.data_ptr<float>(), *bp = b.data_ptr<float>(), *gp = g.data_ptr<float>(),
              *shp = sh.data_ptr<float>(), *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  float* sp = sums.data_ptr<float>();
  const int64_t plane = s.n * s.c;
  at::parallel_for(0, s.n, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> dz(s.c * s.hw), fwork(4 * s.c);
    std::vector<double> dwork(3 * s.c);
    for (int64_t n = begin; n < end; ++n) {
      const int64_t base = n * s.c * s.hw, nc0 = n * s.c;
      k.backward_nhwc(xp + base, dyp + base, dxp + base, s.hw, s.c, groups, mp + n * groups, rp + n * groups, wp, bp,
                      gp + nc0, shp + nc0, silu, dz.data(), dwork.data(), fwork.data(), sp + nc0, sp + plane + nc0,
                      sp + 2 * plane + nc0, sp + 3 * plane + nc0);
    }
  });
}

template <class T>
void gn_act_backward(const gn_kernel::KernelSet& set, const torch::Tensor& x, const torch::Tensor& dy,
                     const torch::Tensor& dx, const torch::Tensor& w, const torch::Tensor& b, const torch::Tensor& g,
                     const torch::Tensor& sh, const torch::Tensor& mean, const torch::Tensor& rstd,
                     const torch::Tensor& sums, int64_t groups, bool silu) {
  const auto& k = kernels_for<T>(set);
  const GnShape s = gn_shape(x, groups);
  const T *xp = data_of<T>(x), *dyp = data_of<T>(dy);
  T* dxp = data_of<T>(dx);
  const float *wp = w.data_ptr<float>(), *bp = b.data_ptr<float>(), *gp = g.data_ptr<float>(),
              *shp = sh.data_ptr<float>(), *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  // sums: [4, N, C] = sum du, sum du * z, sum dz, sum dz * xhat.
  float* sp = sums.data_ptr<float>();
  const int64_t plane = s.n * s.c;
  at::parallel_for(0, s.n * s.groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> dz(s.cpg * s.hw);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t n = blk / s.groups, c0 = (blk % s.groups) * s.cpg;
      const int64_t base = (n * s.c + c0) * s.hw, nc0 = n * s.c + c0;
      k.backward_sums(xp + base, dyp + base, s.cpg, s.hw, mp[blk], rp[blk], wp + c0, bp + c0, gp + nc0, shp + nc0, silu,
                      dz.data(), sp + nc0, sp + plane + nc0, sp + 2 * plane + nc0, sp + 3 * plane + nc0);
      double m1 = 0, m2 = 0;
      for (int64_t j = 0; j < s.cpg; ++j) {
        m1 += static_cast<double>(wp[c0 + j]) * sp[2 * plane + nc0 + j];
        m2 += static_cast<double>(wp[c0 + j]) * sp[3 * plane + nc0 + j];
      }
      const double len = static_cast<double>(s.cpg * s.hw);
      k.backward_dx(xp + base, dz.data(), dxp + base, s.cpg, s.hw, mp[blk], rp[blk], wp + c0,
                    static_cast<float>(m1 / len), static_cast<float>(m2 / len));
    }
  });
}

// GroupNorm (+ FiLM) (+ SiLU) as one autograd node on the CPU kernels: the forward reads x
// once for the statistics and once for the output; the backward recomputes what it needs from
// x and the saved statistics, so no intermediate is kept.
struct GroupNormAct : torch::autograd::Function<GroupNormAct> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, torch::Tensor x,
                                                torch::Tensor weight, torch::Tensor bias, torch::Tensor scale,
                                                torch::Tensor shift, int64_t groups, double eps, bool silu) {
    const auto* set = active_kernels();
    const GnShape s = gn_shape(x, groups);
    const torch::Tensor w = weight.to(torch::kFloat).contiguous(), b = bias.to(torch::kFloat).contiguous();
    const auto [g, sh] = film_terms(scale, shift, s.n, s.c);
    const auto f = torch::TensorOptions().dtype(torch::kFloat);
    torch::Tensor mean = torch::empty({s.n, groups}, f), rstd = torch::empty({s.n, groups}, f);
    torch::Tensor y = torch::empty_like(x);  // keeps x's layout
    const bool f32 = x.scalar_type() == torch::kFloat;
    if (!x.is_contiguous()) {  // channels-last (fused_path_applies)
      if (f32) gn_act_forward_nhwc<float>(*set, x, y, w, b, g, sh, mean, rstd, groups, eps, silu);
      else gn_act_forward_nhwc<uint16_t>(*set, x, y, w, b, g, sh, mean, rstd, groups, eps, silu);
    } else if (f32) {
      gn_act_forward<float>(*set, x, y, w, b, g, sh, mean, rstd, groups, eps, silu);
    } else {
      gn_act_forward<uint16_t>(*set, x, y, w, b, g, sh, mean, rstd, groups, eps, silu);
    }
    ctx->save_for_backward({x, weight, bias, scale, shift, mean, rstd});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["silu"] = silu;
    return {y};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &weight = saved[1], &bias = saved[2], &scale = saved[3], &shift = saved[4];
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const bool silu = ctx->saved_data["silu"].toBool();
    const auto* set = active_kernels();
    const GnShape s = gn_shape(x, groups);
    const torch::Tensor w = weight.to(torch::kFloat).contiguous(), b = bias.to(torch::kFloat).contiguous();
    const auto [g, sh] = film_terms(scale, shift, s.n, s.c);
    const bool nhwc = !x.is_contiguous();
    const torch::Tensor dy =
        grads[0].to(x.scalar_type()).contiguous(nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
    torch::Tensor dx = torch::empty_like(x);
    torch::Tensor sums = torch::empty({4, s.n, s.c}, torch::TensorOptions().dtype(torch::kFloat));
    const bool f32 = x.scalar_type() == torch::kFloat;
    const auto &mean = saved[5], &rstd = saved[6];
    if (nhwc && f32) gn_act_backward_nhwc<float>(*set, x, dy, dx, w, b, g, sh, mean, rstd, sums, groups, silu);
    else if (nhwc) gn_act_backward_nhwc<uint16_t>(*set, x, dy, dx, w, b, g, sh, mean, rstd, sums, groups, silu);
    else if (f32) gn_act_backward<float>(*set, x, dy, dx, w, b, g, sh, mean, rstd, sums, groups, silu);
    else gn_act_backward<uint16_t>(*set, x, dy, dx, w, b, g, sh, mean, rstd, sums, groups, silu);
    torch::Tensor dw = sums[3].sum(0).to(weight.scalar_type()), db = sums[2].sum(0).to(bias.scalar_type());
    torch::Tensor dscale = present(scale) ? sums[1].to(scale.scalar_type()) : torch::Tensor();
    torch::Tensor dshift = present(shift) ? sums[0].to(shift.scalar_type()) : torch::Tensor();
    return {dx, dw, db, dscale, dshift, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

bool film_fits(const torch::Tensor& x, const torch::Tensor& t) {
  return !t.defined() || (t.dim() == 2 && t.size(0) == x.size(0) && t.size(1) == x.size(1));
}

bool fused_path_applies(const torch::Tensor& x, const torch::nn::GroupNorm& norm, const torch::Tensor& scale,
                        const torch::Tensor& shift) {
  if (!active_kernels() || !x.is_cpu() || x.dim() < 3) return false;
  if (!x.is_contiguous() && !(x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast))) return false;
  if (x.scalar_type() != torch::kFloat && x.scalar_type() != torch::kBFloat16) return false;
  if (x.size(1) % kGroupNormGroups != 0 || x.size(0) == 0 || x.numel() == 0) return false;
  if (!norm->weight.defined() || !norm->bias.defined()) return false;
  return scale.defined() == shift.defined() && film_fits(x, scale) && film_fits(x, shift);
}

}  // namespace

torch::Tensor group_norm_act(const torch::nn::GroupNorm& norm, const torch::Tensor& x, Activation act,
                             const torch::Tensor& scale, const torch::Tensor& shift) {
  const bool silu = act == Activation::SiLU;
  if (fused_path_applies(x, norm, scale, shift))
    return GroupNormAct::apply(x, norm->weight, norm->bias, or_empty(scale), or_empty(shift), kGroupNormGroups,
                               kGroupNormEps, silu)[0];
  torch::Tensor h = group_norm32(norm, x);
  if (scale.defined()) {
    const int64_t n = x.size(0), c = x.size(1);
    std::vector<int64_t> dims(x.dim(), 1);
    dims[0] = n;
    dims[1] = c;
    h = at::addcmul(shift.view(dims), h, scale.view(dims) + 1);
  }
  return silu ? silu_owned(std::move(h)) : h;
}

const char* cpu_kernels() { return active_kernels() ? active_kernels()->isa : "aten"; }

bool set_cpu_kernels(const std::string& name) {
  const gn_kernel::KernelSet* k = nullptr;
  if (!find_kernels(name, &k)) return false;
  active_kernels() = k;
  return true;
}

torch::Tensor silu_owned(torch::Tensor x) {
  if (at::GradMode::is_enabled() && x.requires_grad()) return at::silu(x);
  return at::silu_(x);
}

torch::Tensor upsample_nearest_2x(const torch::Tensor& x) {
  namespace F = torch::nn::functional;
  return F::interpolate(
      x, F::InterpolateFuncOptions().size(std::vector<int64_t>{2 * x.size(2), 2 * x.size(3)}).mode(torch::kNearest));
}

void zero_parameters(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) p.zero_();
}

}  // namespace diffuse

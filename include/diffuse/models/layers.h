// Small building blocks shared by the networks (improved-diffusion's nn.py equivalents).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/normalization.h>
#include <torch/types.h>

#include <cstdint>
#include <string>

namespace diffuse {

// improved-diffusion's normalization(): GroupNorm with 32 groups, eps 1e-5, affine.
constexpr int64_t kGroupNormGroups = 32;
torch::nn::GroupNorm make_group_norm(int64_t channels);

// GroupNorm32: statistics and affine in float32 whatever the activation dtype, cast back to the
// input's dtype. For float32 input it is a plain group_norm (no casts, no copies).
torch::Tensor group_norm32(const torch::nn::GroupNorm& norm, const torch::Tensor& x);

enum class Activation { None, SiLU };

// act(GroupNorm32(x) * (1 + scale) + shift): improved-diffusion's normalization, its FiLM step
// (scale and shift [N, C], both or neither) and the SiLU after it, as one operation. On a CPU
// (contiguous float32 or bf16 input) it runs as one fused kernel with its own backward:
// statistics in double, the rest in float32, output in x's dtype, equal to the separate ops to
// float rounding; elsewhere it runs those ops.
torch::Tensor group_norm_act(const torch::nn::GroupNorm& norm, const torch::Tensor& x, Activation act,
                             const torch::Tensor& scale = {}, const torch::Tensor& shift = {});

// The CPU kernels group_norm_act uses: "avx512", "avx2", "baseline", or "aten" (ATen's separate
// ops). The default is the widest this CPU runs; the DIFFUSE_CPU_KERNELS environment variable
// names another for side-by-side benchmarks. set_cpu_kernels returns false (and changes
// nothing) for a name that is unknown or that this CPU cannot run.
const char* cpu_kernels();
bool set_cpu_kernels(const std::string& name);

// SiLU of a temporary the caller owns: in place when autograd does not need the input (no grad
// mode or no grad required), out of place otherwise.
torch::Tensor silu_owned(torch::Tensor x);

// Nearest-neighbour 2x upsampling of [B, C, H, W] (F.interpolate(scale_factor=2, "nearest")).
torch::Tensor upsample_nearest_2x(const torch::Tensor& x);

// improved-diffusion's zero_module: every parameter of the module set to 0.
void zero_parameters(torch::nn::Module& module);

}  // namespace diffuse

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "diffuse/models/layers.h"

using namespace diffuse;

namespace {

// Restores the kernel choice a test changed.
struct KernelScope {
  std::string saved = cpu_kernels();
  ~KernelScope() { set_cpu_kernels(saved); }
};

std::vector<std::string> runnable_kernels() {
  KernelScope scope;
  std::vector<std::string> names;
  for (const char* name : {"baseline", "avx2", "avx512"})
    if (set_cpu_kernels(name)) names.push_back(name);
  return names;
}

// The truth: GroupNorm, FiLM and SiLU as separate ATen ops, in double.
torch::Tensor reference(const torch::nn::GroupNorm& norm, const torch::Tensor& x, bool silu, const torch::Tensor& scale,
                        const torch::Tensor& shift) {
  auto y = torch::group_norm(x.to(torch::kDouble), norm->options.num_groups(), norm->weight.to(torch::kDouble),
                             norm->bias.to(torch::kDouble), norm->options.eps());
  if (scale.defined()) {
    const auto view = std::vector<int64_t>{x.size(0), x.size(1), 1, 1};
    y = y * (1 + scale.to(torch::kDouble).view(view)) + shift.to(torch::kDouble).view(view);
  }
  return silu ? torch::silu(y) : y;
}

double max_rel(const torch::Tensor& a, const torch::Tensor& b) {
  const auto d = (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
  return d / (b.to(torch::kDouble).abs().max().item<double>() + 1e-12);
}

struct Case {
  int64_t n, c, h, w;
  bool film, silu;
};

// Every group has 9 or more elements, as the UNet's do (4x4 at least): in a group of one or two
// elements the variance is 0 or can be tiny, rstd up to 1/sqrt(eps) then magnifies float32
// rounding (in ATen's float kernel as in ours), and for one element the true dx is 0, which no
// relative tolerance measures.
const std::vector<Case> kCases = {{2, 64, 7, 7, true, true},
                                  {3, 32, 5, 3, false, true},
                                  {1, 96, 4, 4, true, false},
                                  {2, 32, 3, 3, false, false},
                                  {2, 128, 16, 16, true, true}};

}  // namespace

// Forward and all five gradients of every runnable kernel against the ATen composition in double:
// float32 to 1e-5 relative, bf16 (inputs and output rounded to 8 bits) to 1e-2.
TEST(GroupNormAct, MatchesSeparateOpsAndTheirGradients) {
  KernelScope scope;
  const auto kernels = runnable_kernels();
  ASSERT_FALSE(kernels.empty());
  for (const auto& name : kernels) {
    ASSERT_TRUE(set_cpu_kernels(name));
    for (auto dtype : {torch::kFloat, torch::kBFloat16})
      for (auto layout : {at::MemoryFormat::Contiguous, at::MemoryFormat::ChannelsLast}) {
        const double tol = dtype == torch::kFloat ? 1e-5 : 1.5e-2;
        for (const auto& k : kCases) {
          SCOPED_TRACE(name + " " + std::string(c10::toString(dtype)) + " c=" + std::to_string(k.c) + " hw=" +
                       std::to_string(k.h * k.w) + (layout == at::MemoryFormat::ChannelsLast ? " channels-last" : ""));
          torch::manual_seed(7);
          auto norm = make_group_norm(k.c);
          torch::NoGradGuard ng;
          norm->weight.copy_(torch::randn({k.c}) * 0.5 + 1);
          norm->bias.copy_(torch::randn({k.c}) * 0.3);
          auto x = (torch::randn({k.n, k.c, k.h, k.w}) * 2 + 0.5).to(dtype).contiguous(layout).requires_grad_();
          torch::Tensor scale, shift;
          if (k.film) {
            scale = (torch::randn({k.n, k.c}) * 0.3).to(dtype).requires_grad_();
            shift = (torch::randn({k.n, k.c}) * 0.3).to(dtype).requires_grad_();
          }
          const auto up = torch::randn({k.n, k.c, k.h, k.w}).to(dtype);
          torch::Tensor y;
          {
            torch::AutoGradMode on(true);
            y = group_norm_act(norm, x, k.silu ? Activation::SiLU : Activation::None, scale, shift);
            y.backward(up);
          }
          EXPECT_EQ(y.dtype(), dtype);
          EXPECT_TRUE(y.is_contiguous(layout));  // the layout is kept, not converted
          EXPECT_TRUE(x.grad().is_contiguous(layout));
          std::vector<torch::Tensor> leaves{x, norm->weight, norm->bias};
          if (k.film) leaves.insert(leaves.end(), {scale, shift});
          std::vector<torch::Tensor> got;
          for (auto& t : leaves) got.push_back(t.grad().clone()), t.grad().zero_();

          std::vector<torch::Tensor> ref_leaves;
          for (auto& t : leaves) ref_leaves.push_back(t.detach().to(torch::kDouble).requires_grad_());
          torch::AutoGradMode on(true);
          auto ref_norm = make_group_norm(k.c);
          auto ry = torch::group_norm(ref_leaves[0], ref_norm->options.num_groups(), ref_leaves[1], ref_leaves[2],
                                      ref_norm->options.eps());
          if (k.film) {
            const auto view = std::vector<int64_t>{k.n, k.c, 1, 1};
            ry = ry * (1 + ref_leaves[3].view(view)) + ref_leaves[4].view(view);
          }
          if (k.silu) ry = torch::silu(ry);
          EXPECT_LT(max_rel(y, ry.detach()), tol);
          EXPECT_LT(max_rel(y, reference(norm, x.detach(), k.silu, scale.defined() ? scale.detach() : scale,
                                         shift.defined() ? shift.detach() : shift)),
                    tol);
          ry.backward(up.to(torch::kDouble));
          const char* names[] = {"dx", "dweight", "dbias", "dscale", "dshift"};
          for (size_t i = 0; i < got.size(); ++i) {
            SCOPED_TRACE(names[i]);
            // bf16 gradients of x, scale and shift are rounded to bf16; dweight/dbias are float32
            // sums over bf16 inputs.
            EXPECT_LT(max_rel(got[i], ref_leaves[i].grad()), dtype == torch::kFloat ? 1e-5 : 3e-2);
          }
        }
      }
  }
}

// Each sample is normalised on its own, in the same order whatever the batch: sample i of a batch
// of 5 equals that sample alone, bit for bit (sampling results must not depend on batch size).
TEST(GroupNormAct, IndependentOfBatch) {
  KernelScope scope;
  for (const auto& name : runnable_kernels()) {
    ASSERT_TRUE(set_cpu_kernels(name));
    torch::NoGradGuard ng;
    torch::manual_seed(3);
    auto norm = make_group_norm(64);
    for (auto layout : {at::MemoryFormat::Contiguous, at::MemoryFormat::ChannelsLast}) {
      const auto x = torch::randn({5, 64, 9, 9}).contiguous(layout);
      const auto scale = torch::randn({5, 64}) * 0.2, shift = torch::randn({5, 64}) * 0.2;
      const auto all = group_norm_act(norm, x, Activation::SiLU, scale, shift);
      for (int64_t i = 0; i < 5; ++i) {
        const auto one = group_norm_act(norm, x.narrow(0, i, 1).contiguous(layout), Activation::SiLU,
                                        scale.narrow(0, i, 1), shift.narrow(0, i, 1));
        EXPECT_TRUE(torch::equal(one, all.narrow(0, i, 1))) << name << " sample " << i;
      }
    }
  }
}

// The ATen path is the same operation; unknown names change nothing.
TEST(GroupNormAct, KernelSelection) {
  KernelScope scope;
  EXPECT_TRUE(set_cpu_kernels("aten"));
  EXPECT_STREQ(cpu_kernels(), "aten");
  EXPECT_FALSE(set_cpu_kernels("sse9"));
  EXPECT_STREQ(cpu_kernels(), "aten");
  EXPECT_TRUE(set_cpu_kernels("baseline"));
  torch::NoGradGuard ng;
  torch::manual_seed(5);
  auto norm = make_group_norm(32);
  const auto x = torch::randn({2, 32, 6, 6});
  const auto fused = group_norm_act(norm, x, Activation::SiLU);
  ASSERT_TRUE(set_cpu_kernels("aten"));
  const auto aten = group_norm_act(norm, x, Activation::SiLU);
  EXPECT_LT(max_rel(fused, aten), 1e-5);
}

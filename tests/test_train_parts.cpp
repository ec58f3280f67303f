// The training loop's parts against their closed forms: learning-rate warm-up and cosine
// decay, the EMA's warm-up decay and its value after k updates, and gradient clipping against
// LibTorch's own clip_grad_norm_.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "diffuse/train/ema.h"
#include "diffuse/train/grad_clip.h"
#include "diffuse/train/lr_schedule.h"

using namespace diffuse;

TEST(LrSchedule, LinearWarmupThenConstant) {
  LrSchedule s{3e-4, 10, "constant", 0.0, 100};
  for (int64_t k = 1; k <= 10; ++k) EXPECT_DOUBLE_EQ(s.at(k), 3e-4 * k / 10.0);
  for (int64_t k : {11, 50, 100, 1000}) EXPECT_DOUBLE_EQ(s.at(k), 3e-4);
  LrSchedule none{1e-3, 0, "constant", 0.0, 5};
  EXPECT_DOUBLE_EQ(none.at(1), 1e-3);
}

TEST(LrSchedule, CosineFromPeakToMinimumOverTheRemainingSteps) {
  const double lr = 2e-4, min_lr = 2e-5;
  LrSchedule s{lr, 100, "cosine", min_lr, 1100};
  EXPECT_DOUBLE_EQ(s.at(50), lr * 0.5);                  // still warming up
  EXPECT_DOUBLE_EQ(s.at(100), lr);                       // end of warm-up: cos(0)
  EXPECT_NEAR(s.at(600), 0.5 * (lr + min_lr), 1e-18);    // halfway: cos(pi/2) = 0
  EXPECT_NEAR(s.at(350), min_lr + 0.5 * (lr - min_lr) * (1 + std::cos(M_PI / 4)), 1e-18);
  EXPECT_DOUBLE_EQ(s.at(1100), min_lr);                  // the last step: cos(pi)
  EXPECT_DOUBLE_EQ(s.at(5000), min_lr);                  // past the end it stays there
  for (int64_t k = 101; k < 1100; ++k) EXPECT_LT(s.at(k + 1), s.at(k)) << k;
}

// A one-parameter "network" whose weight we set by hand.
struct Scalar : torch::nn::Module {
  torch::Tensor w;
  explicit Scalar(double v) { w = register_parameter("w", torch::full({3}, v, torch::kFloat64)); }
};

TEST(Ema, WarmupDecayAndClosedFormAfterKUpdates) {
  auto model = std::make_shared<Scalar>(2.0);
  auto shadow = std::make_shared<Scalar>(-7.0);
  Ema ema(model, shadow, 0.999, true);
  EXPECT_TRUE(torch::equal(shadow->w, model->w));  // starts as a copy of the model
  EXPECT_DOUBLE_EQ(ema.decay_at(1), 2.0 / 11.0);
  EXPECT_DOUBLE_EQ(ema.decay_at(100), 101.0 / 110.0);
  EXPECT_DOUBLE_EQ(ema.decay_at(1000000), 0.999);
  // The model jumps to 5 and stays: after steps 1..k the shadow is 5 + prod(d_s) (2 - 5).
  {
    torch::NoGradGuard ng;
    model->w.fill_(5.0);
  }
  double prod = 1.0;
  for (int64_t k = 1; k <= 40; ++k) {
    ema.update(k);
    prod *= ema.decay_at(k);
    EXPECT_NEAR(shadow->w[0].item<double>(), 5.0 + prod * (2.0 - 5.0), 1e-12) << "step " << k;
  }
  // Without warm-up the decay is constant.
  auto m2 = std::make_shared<Scalar>(1.0), s2 = std::make_shared<Scalar>(0.0);
  Ema plain(m2, s2, 0.9, false);
  EXPECT_DOUBLE_EQ(plain.decay_at(1), 0.9);
  {
    torch::NoGradGuard ng;
    m2->w.fill_(0.0);
  }
  plain.update(1);
  plain.update(2);
  EXPECT_NEAR(s2->w[1].item<double>(), 0.81, 1e-12);
}

TEST(GradClip, MatchesLibTorchClipGradNorm) {
  torch::manual_seed(3);
  for (double max_norm : {0.5, 3.0, 1e6}) {
    std::vector<torch::Tensor> a, b;
    for (auto shape : {std::vector<int64_t>{4, 5}, std::vector<int64_t>{7}, std::vector<int64_t>{2, 3, 3}}) {
      auto p = torch::randn(shape).requires_grad_(true);
      p.mutable_grad() = torch::randn(shape);
      auto q = p.detach().clone().requires_grad_(true);
      q.mutable_grad() = p.grad().clone();
      a.push_back(p);
      b.push_back(q);
    }
    a.push_back(torch::randn({3}).requires_grad_(true));  // no gradient: ignored by both
    b.push_back(a.back().detach().clone().requires_grad_(true));
    const double want = torch::nn::utils::clip_grad_norm_(b, max_norm);
    const auto got = clip_grad_norm(a, max_norm);
    EXPECT_NEAR(got.item<double>(), want, 1e-5 * want) << max_norm;
    for (size_t i = 0; i + 1 < a.size(); ++i)
      EXPECT_TRUE(torch::allclose(a[i].grad(), b[i].grad(), 1e-6, 1e-7)) << max_norm << " tensor " << i;
    if (max_norm < want) {
      // Clipped: the new norm is max_norm (to the 1e-6 guard).
      double sq = 0;
      for (size_t i = 0; i + 1 < a.size(); ++i) sq += a[i].grad().pow(2).sum().item<double>();
      EXPECT_NEAR(std::sqrt(sq), max_norm, 1e-5 * max_norm);
    }
  }
  // max_norm <= 0 measures only.
  auto p = torch::ones({4}).requires_grad_(true);
  p.mutable_grad() = torch::full({4}, 3.0);
  EXPECT_FLOAT_EQ(clip_grad_norm({p}, 0).item<float>(), 6.0f);
  EXPECT_TRUE(torch::equal(p.grad(), torch::full({4}, 3.0)));
}

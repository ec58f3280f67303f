#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "diffuse/error.h"
#include "diffuse/models/mlp.h"
#include "diffuse/models/network.h"

using namespace diffuse;

namespace {

int64_t lin(int64_t i, int64_t o) { return i * o + o; }

void perturb_zero_parameters(torch::nn::Module& m) {
  torch::NoGradGuard g;
  torch::manual_seed(11);
  for (auto& p : m.parameters())
    if (p.abs().max().item<float>() == 0.0f) p.normal_(0.0, 0.05);
}

MlpOptions small(bool layer_norm, int64_t classes = 0) {
  MlpOptions o;
  o.data_dim = 2;
  o.out_dim = 4;  // learned sigma: 2 x data_dim
  o.hidden = 32;
  o.num_blocks = 2;
  o.layer_norm = layer_norm;
  o.num_classes = classes;
  return o;
}

}  // namespace

// time_embed (2 Linear H->H), label rows (K + 1) x H, in_proj D->H, per block (LayerNorm 2H,
// fc1, emb, fc2: 3 Linear H->H), out LayerNorm 2H, out_proj H->D_out.
TEST(Mlp, ParameterCountByHand) {
  const int64_t H = 32, D = 2, Dout = 4;
  EXPECT_EQ(count_parameters(Mlp(small(true))),
            2 * lin(H, H) + lin(D, H) + 2 * (2 * H + 3 * lin(H, H)) + 2 * H + lin(H, Dout));
  EXPECT_EQ(count_parameters(Mlp(small(false, 8))),
            2 * lin(H, H) + 9 * H + lin(D, H) + 2 * 3 * lin(H, H) + lin(H, Dout));
}

TEST(Mlp, ShapesZeroInitAndBatchIndependence) {
  torch::NoGradGuard g;
  Mlp net(small(true));
  torch::manual_seed(12);
  const auto x = torch::randn({5, 2});
  const auto t = torch::tensor({0.0f, 1.5f, 100.0f, 500.0f, 999.0f});
  const auto out = net.forward(x, t);
  EXPECT_EQ(out.sizes().vec(), (std::vector<int64_t>{5, 4}));
  EXPECT_EQ(out.abs().max().item<float>(), 0.0f);  // zero-initialised output projection
  perturb_zero_parameters(net);
  const auto out2 = net.forward(x, t);
  EXPECT_GT(out2.abs().max().item<float>(), 1e-4f);
  for (int64_t i = 0; i < 5; ++i)
    EXPECT_TRUE(torch::allclose(net.forward(x.narrow(0, i, 1), t.narrow(0, i, 1))[0], out2[i], 1e-5, 1e-6)) << i;
  EXPECT_THROW(net.forward(torch::randn({5, 3}), t), std::invalid_argument);
  EXPECT_THROW(net.forward(torch::randn({5, 2, 1}), t), std::invalid_argument);
}

TEST(Mlp, ClassConditionalAndGradients) {
  for (bool ln : {true, false}) {
    Mlp net(small(ln, 3));
    perturb_zero_parameters(net);
    torch::manual_seed(13);
    const auto x = torch::randn({4, 2});
    const auto t = torch::tensor({1.0f, 10.0f, 100.0f, 900.0f});
    {
      torch::NoGradGuard g;
      EXPECT_TRUE(torch::equal(net.forward(x, t), net.forward(x, t, torch::full({4}, int64_t{3}))));
      const auto with_labels = net.forward(x, t, torch::tensor({0, 1, 2, 3}, torch::kLong));
      EXPECT_GT((with_labels[0] - net.forward(x, t)[0]).abs().max().item<float>(), 1e-5f);
    }
    const auto loss =
        torch::mse_loss(net.forward(x, t, torch::tensor({0, 1, 2, 3}, torch::kLong)), torch::randn({4, 4}));
    loss.backward();
    for (const auto& item : net.named_parameters()) {
      ASSERT_TRUE(item.value().grad().defined()) << item.key();
      EXPECT_GT(item.value().grad().abs().sum().item<double>(), 0.0) << item.key() << " ln=" << ln;
    }
  }
}

TEST(Mlp, BadOptionsThrowUsageError) {
  auto o = small(true);
  o.hidden = 0;
  try {
    Mlp net(o);
    ADD_FAILURE() << "no throw";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("model.hidden"), std::string::npos) << e.what();
  }
  o = small(true);
  o.num_blocks = -2;
  EXPECT_THROW(Mlp{o}, UsageError);
}

// The documented forward, written out with functional ops on the named parameters.
TEST(Mlp, ForwardMatchesDocumentedFormula) {
  torch::NoGradGuard g;
  for (bool ln : {true, false}) {
    Mlp net(small(ln, 3));
    perturb_zero_parameters(net);
    const auto P = net.named_parameters();
    auto w = [&](const std::string& n) { return *P.find(n); };
    auto linear = [&](const torch::Tensor& x, const std::string& pre) {
      return torch::linear(x, w(pre + ".weight"), w(pre + ".bias"));
    };
    auto norm = [&](const torch::Tensor& x, const std::string& pre) {
      return ln ? torch::layer_norm(x, {32}, w(pre + ".weight"), w(pre + ".bias"), 1e-5) : x;
    };
    torch::manual_seed(14);
    const auto x = torch::randn({3, 2});
    const auto t = torch::tensor({2.0f, 77.0f, 950.0f});
    const auto y = torch::tensor({0, 3, 2}, torch::kLong);
    const auto freqs = torch::exp(-std::log(10000.0) * torch::arange(16, torch::kFloat) / 16);
    const auto args = t.unsqueeze(1) * freqs.unsqueeze(0);
    auto emb = linear(torch::silu(linear(torch::cat({args.cos(), args.sin()}, 1), "time_embed.0")), "time_embed.2");
    emb = emb + w("label_emb.weight").index_select(0, y);
    auto h = linear(x, "in_proj");
    for (int b = 0; b < 2; ++b) {
      const std::string pre = "blocks." + std::to_string(b);
      auto r = linear(torch::silu(norm(h, pre + ".norm")), pre + ".fc1") + linear(torch::silu(emb), pre + ".emb");
      h = h + linear(torch::silu(r), pre + ".fc2");
    }
    const auto expected = linear(torch::silu(norm(h, "out_norm")), "out_proj");
    EXPECT_LT((net.forward(x, t, y) - expected).abs().max().item<float>(), 1e-5f) << "ln=" << ln;
    EXPECT_GT(expected.abs().max().item<float>(), 1e-3f);
  }
}

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <map>
#include <string>

#include "diffuse/error.h"
#include "diffuse/models/network.h"
#include "diffuse/models/unet.h"

using namespace diffuse;

namespace {

// Parameter counts of PyTorch layers, by hand (weight + bias).
int64_t gn(int64_t c) { return 2 * c; }                                      // GroupNorm affine
int64_t conv(int64_t i, int64_t o, int64_t k) { return i * o * k * k + o; }  // Conv2d kxk
int64_t lin(int64_t i, int64_t o) { return i * o + o; }
// improved-diffusion ResBlock: in_layers (GN, SiLU, conv3), emb_layers (SiLU, Linear to C or
// 2C with scale-shift), out_layers (GN, SiLU, Dropout, conv3), 1x1 skip when C changes.
int64_t res(int64_t i, int64_t o, int64_t emb, bool ssn) {
  return gn(i) + conv(i, o, 3) + lin(emb, (ssn ? 2 : 1) * o) + gn(o) + conv(o, o, 3) + (i != o ? conv(i, o, 1) : 0);
}
// AttentionBlock: GN, qkv 1x1 (C -> 3C), proj_out 1x1 (C -> C).
int64_t attn(int64_t c) { return gn(c) + conv(c, 3 * c, 1) + conv(c, c, 1); }

UNetOptions mnist_reference() {
  UNetOptions o;
  o.image_size = 28;
  o.in_channels = 1;
  o.out_channels = 1;
  o.model_channels = 32;
  o.channel_mult = {1, 2, 2};
  o.num_res_blocks = 1;
  o.attention_resolutions = {7};
  o.num_heads = 4;
  o.use_scale_shift_norm = true;
  return o;
}

UNetOptions small16() {
  UNetOptions o;
  o.image_size = 16;
  o.in_channels = 3;
  o.out_channels = 6;
  o.model_channels = 32;
  o.channel_mult = {1, 2};
  o.num_res_blocks = 1;
  o.attention_resolutions = {8};
  o.num_heads = 2;
  o.use_scale_shift_norm = false;
  o.num_classes = 10;
  return o;
}

// Untrained UNets are exactly zero (zero-init output convs and proj_out); give every all-zero
// parameter (those, and the GroupNorm biases) small random values so the tests see real signal.
void perturb_zero_parameters(torch::nn::Module& m, uint64_t seed = 1) {
  torch::NoGradGuard g;
  torch::manual_seed(seed);
  for (auto& p : m.parameters())
    if (p.abs().max().item<float>() == 0.0f) p.normal_(0.0, 0.05);
}

int64_t count_prefix(const torch::nn::Module& m, const std::string& prefix) {
  int64_t n = 0;
  for (const auto& item : m.named_parameters())
    if (item.key().rfind(prefix, 0) == 0) n += item.value().numel();
  return n;
}

template <class F>
void expect_usage_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no UsageError; expected one mentioning '" << needle << "'";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

}  // namespace

// Published by running improved-diffusion's UNetModel with these settings (the task's reference
// counts), and re-derived by hand in HandCountedSmallUNet below.
TEST(UNet, ParameterCountsMatchImprovedDiffusionReference) {
  auto o = mnist_reference();
  EXPECT_EQ(count_parameters(UNet(o)), 1191233);
  o.use_scale_shift_norm = false;
  EXPECT_EQ(count_parameters(UNet(o)), 1112801);
}

// The reference config counted block by block (E = 128 = 4 x 32; levels 28, 14, 7 with
// channels 32, 64, 64; attention at 7x7; a middle block of Res, Attn, Res).
TEST(UNet, ReferenceCountEqualsHandSum) {
  for (bool ssn : {true, false}) {
    const int64_t E = 128;
    int64_t n = lin(32, E) + lin(E, E) + conv(1, 32, 3);
    n += res(32, 32, E, ssn) + conv(32, 32, 3);                         // level 28, downsample
    n += res(32, 64, E, ssn) + conv(64, 64, 3);                         // level 14, downsample
    n += res(64, 64, E, ssn) + attn(64);                                // level 7
    n += 2 * res(64, 64, E, ssn) + attn(64);                            // middle
    n += res(128, 64, E, ssn) + attn(64);                               // out, level 7: skips 64, 64
    n += res(128, 64, E, ssn) + attn(64) + conv(64, 64, 3);             //   + upsample
    n += res(128, 64, E, ssn) + res(96, 64, E, ssn) + conv(64, 64, 3);  // level 14: skips 64, 32
    n += res(96, 32, E, ssn) + res(64, 32, E, ssn);                     // level 28: skips 32, 32
    n += gn(32) + conv(32, 1, 3);
    auto o = mnist_reference();
    o.use_scale_shift_norm = ssn;
    EXPECT_EQ(count_parameters(UNet(o)), n) << "ssn=" << ssn;
  }
  EXPECT_EQ(res(32, 64, 128, true),
            2 * 32 + 9 * 32 * 64 + 64 + 128 * 128 + 128 + 2 * 64 + 9 * 64 * 64 + 64 + 32 * 64 + 64);
}

// A class-conditional 16x16 UNet with two levels and 10 classes, plus its resblock_updown and
// conv_resample=false variants, counted by hand; also per-block counts under the reference names.
TEST(UNet, HandCountedSmallUNet) {
  const int64_t E = 128;
  const int64_t common = lin(32, E) + lin(E, E) + 11 * E /* label_emb: 10 classes + null */ + conv(3, 32, 3) +
                         res(32, 32, E, false) +                          // level 16
                         res(32, 64, E, false) + attn(64) +               // level 8
                         2 * res(64, 64, E, false) + attn(64) +           // middle
                         res(128, 64, E, false) + attn(64) +              // out level 8 (skip 64)
                         res(96, 64, E, false) + attn(64) +               //   (skip 32)
                         res(96, 32, E, false) + res(64, 32, E, false) +  // out level 16
                         gn(32) + conv(32, 6, 3);
  auto o = small16();
  UNet conv_resample(o);
  EXPECT_EQ(count_parameters(conv_resample), common + conv(32, 32, 3) + conv(64, 64, 3));
  EXPECT_EQ(count_prefix(conv_resample, "input_blocks.1.0."), res(32, 32, E, false));
  EXPECT_EQ(count_prefix(conv_resample, "input_blocks.3.1."), attn(64));
  EXPECT_EQ(count_prefix(conv_resample, "middle_block.1."), attn(64));
  EXPECT_EQ(count_prefix(conv_resample, "output_blocks.0.0."), res(128, 64, E, false));
  EXPECT_EQ(count_prefix(conv_resample, "label_emb."), 11 * E);

  o.resblock_updown = true;  // down/up are ResBlocks without channel change
  EXPECT_EQ(count_parameters(UNet(o)), common + res(32, 32, E, false) + res(64, 64, E, false));
  o.resblock_updown = false;
  o.conv_resample = false;  // avg-pool down, nearest up: no parameters
  EXPECT_EQ(count_parameters(UNet(o)), common);
}

// State-dict names and shapes are improved-diffusion's, so its checkpoints map one to one.
TEST(UNet, ParameterNamesAndShapesFollowImprovedDiffusion) {
  UNet net(mnist_reference());
  std::map<std::string, std::vector<int64_t>> expected = {
      {"time_embed.0.weight", {128, 32}},
      {"time_embed.2.weight", {128, 128}},
      {"input_blocks.0.0.weight", {32, 1, 3, 3}},
      {"input_blocks.1.0.in_layers.0.weight", {32}},
      {"input_blocks.1.0.in_layers.2.weight", {32, 32, 3, 3}},
      {"input_blocks.1.0.emb_layers.1.weight", {64, 128}},
      {"input_blocks.1.0.out_layers.3.weight", {32, 32, 3, 3}},
      {"input_blocks.2.0.op.weight", {32, 32, 3, 3}},
      {"input_blocks.3.0.skip_connection.weight", {64, 32, 1, 1}},
      {"input_blocks.5.1.qkv.weight", {192, 64, 1}},
      {"input_blocks.5.1.proj_out.weight", {64, 64, 1}},
      {"middle_block.1.norm.weight", {64}},
      {"middle_block.2.out_layers.3.bias", {64}},
      {"output_blocks.1.2.conv.weight", {64, 64, 3, 3}},
      {"output_blocks.5.0.skip_connection.weight", {32, 64, 1, 1}},
      {"out.0.weight", {32}},
      {"out.2.weight", {1, 32, 3, 3}},
  };
  const auto params = net.named_parameters();
  for (const auto& [name, shape] : expected) {
    const auto* p = params.find(name);
    ASSERT_NE(p, nullptr) << name;
    EXPECT_EQ(p->sizes().vec(), shape) << name;
  }
  EXPECT_EQ(params.find("label_emb.weight"), nullptr);
  EXPECT_EQ(net.named_children().size(), 5u);  // time_embed, input_blocks, middle_block, output_blocks, out
}

TEST(UNet, OutputShapesForSeveralSizes) {
  torch::NoGradGuard g;
  torch::manual_seed(0);
  struct Case {
    int64_t size, channels, out;
    std::vector<double> mult;
    std::vector<int64_t> attn;
  };
  for (const Case& c : {Case{28, 1, 1, {1, 2, 2}, {7}}, Case{32, 3, 6 /* learn_sigma */, {1, 2, 2, 2}, {16, 4}},
                        Case{16, 3, 3, {1, 2}, {}}}) {
    UNetOptions o;
    o.image_size = c.size;
    o.in_channels = c.channels;
    o.out_channels = c.out;
    o.model_channels = 32;
    o.channel_mult = c.mult;
    o.num_res_blocks = 1;
    o.attention_resolutions = c.attn;
    o.num_head_channels = 32;
    UNet net(o);
    const auto x = torch::randn({2, c.channels, c.size, c.size});
    const auto out = net.forward(x, torch::tensor({3.0f, 512.5f}));
    EXPECT_EQ(out.sizes().vec(), (std::vector<int64_t>{2, c.out, c.size, c.size})) << c.size;
    // A size other than the configured one works too when divisible by 2^(levels-1).
    const int64_t other = c.size * 2;
    EXPECT_EQ(net.forward(torch::randn({1, c.channels, other, other}), torch::tensor({7.0f})).sizes().vec(),
              (std::vector<int64_t>{1, c.out, other, other}));
  }
}

TEST(UNet, UntrainedOutputIsExactlyZero) {
  torch::NoGradGuard g;
  UNet net(mnist_reference());
  const auto out = net.forward(torch::randn({3, 1, 28, 28}), torch::tensor({0.0f, 500.0f, 999.0f}));
  EXPECT_EQ(out.abs().max().item<float>(), 0.0f);
}

TEST(UNet, ClassConditionalWithNullLabel) {
  torch::NoGradGuard g;
  auto o = small16();
  UNet net(o);
  perturb_zero_parameters(net);
  EXPECT_TRUE(net.class_conditional());
  EXPECT_EQ(net.null_label(), 10);
  torch::manual_seed(3);
  const auto x = torch::randn({4, 3, 16, 16});
  const auto t = torch::full({4}, 250.0f);
  const auto null = torch::full({4}, int64_t{10});
  const auto out_null = net.forward(x, t, null);
  const auto out_undef = net.forward(x, t);
  EXPECT_EQ(out_null.sizes().vec(), (std::vector<int64_t>{4, 6, 16, 16}));
  EXPECT_TRUE(torch::equal(out_null, out_undef));  // undefined y means every label is null
  const auto out_labels = net.forward(x, t, torch::tensor({0, 3, 9, 10}, torch::kLong));
  // Labels only change the samples whose label differs from null.
  EXPECT_GT((out_labels[0] - out_null[0]).abs().max().item<float>(), 1e-4f);
  EXPECT_GT((out_labels[2] - out_null[2]).abs().max().item<float>(), 1e-4f);
  EXPECT_TRUE(torch::allclose(out_labels[3], out_null[3], 1e-6, 1e-6));
  // Out-of-range labels are rejected by the embedding (an exception, not a crash).
  EXPECT_ANY_THROW(net.forward(x, t, torch::tensor({0, 1, 2, 11}, torch::kLong)));
  EXPECT_THROW(net.forward(x, t, torch::zeros({3}, torch::kLong)), std::invalid_argument);
}

// Each sample's output depends on that sample alone (GroupNorm is per sample, attention mixes
// positions, never batch entries): a batch equals its samples run one by one.
TEST(UNet, BatchEntriesAreIndependent) {
  torch::NoGradGuard g;
  auto o = mnist_reference();
  o.num_classes = 5;
  UNet net(o);
  perturb_zero_parameters(net);
  torch::manual_seed(4);
  const auto x = torch::randn({3, 1, 28, 28});
  const auto t = torch::tensor({10.0f, 400.0f, 900.0f});
  const auto y = torch::tensor({1, 5, 3}, torch::kLong);
  const auto batch = net.forward(x, t, y);
  for (int64_t i = 0; i < 3; ++i) {
    const auto one = net.forward(x.narrow(0, i, 1), t.narrow(0, i, 1), y.narrow(0, i, 1));
    EXPECT_TRUE(torch::allclose(one[0], batch[i], 1e-5, 1e-5)) << i;
  }
  // A scalar t is broadcast over the batch.
  EXPECT_TRUE(torch::allclose(net.forward(x, torch::tensor(400.0f), y)[1], batch[1], 1e-5, 1e-5));
  // And the timestep matters.
  EXPECT_GT((net.forward(x, torch::tensor(0.0f), y)[1] - batch[1]).abs().max().item<float>(), 1e-4f);
}

TEST(UNet, GradientsReachEveryParameter) {
  for (bool updown : {false, true}) {
    auto o = small16();
    o.resblock_updown = updown;
    o.use_scale_shift_norm = updown;
    o.dropout = 0.1;
    UNet net(o);
    net.train();
    perturb_zero_parameters(net);
    torch::manual_seed(5);
    const auto x = torch::randn({2, 3, 16, 16});
    const auto target = torch::randn({2, 6, 16, 16});
    const auto out = net.forward(x, torch::tensor({5.0f, 800.0f}), torch::tensor({2, 10}, torch::kLong));
    torch::mse_loss(out, target).backward();
    for (const auto& item : net.named_parameters()) {
      const auto& grad = item.value().grad();
      ASSERT_TRUE(grad.defined()) << item.key();
      EXPECT_GT(grad.abs().sum().item<double>(), 0.0) << item.key() << " updown=" << updown;
      EXPECT_TRUE(torch::isfinite(grad).all().item<bool>()) << item.key();
    }
  }
}

TEST(UNet, ChannelsLastMatchesContiguous) {
  torch::NoGradGuard g;
  auto o = mnist_reference();
  o.num_head_channels = 16;
  UNet net(o);
  perturb_zero_parameters(net);
  torch::manual_seed(6);
  const auto x = torch::randn({2, 1, 28, 28});
  const auto t = torch::tensor({100.0f, 700.0f});
  const auto ref = net.forward(x, t);
  const auto x_cl = x.contiguous(at::MemoryFormat::ChannelsLast);
  const auto out_input_cl = net.forward(x_cl, t);
  EXPECT_LT((out_input_cl - ref).abs().max().item<float>(), 1e-5f);
  convert_to_channels_last(net);
  for (const auto& p : net.parameters())
    if (p.dim() == 4) {
      EXPECT_TRUE(p.is_contiguous(at::MemoryFormat::ChannelsLast));
    }
  const auto out_cl = net.forward(x_cl, t);
  EXPECT_LT((out_cl - ref).abs().max().item<float>(), 1e-5f);
  EXPECT_GT(ref.abs().max().item<float>(), 1e-3f);  // the comparison is not between zeros
  // Three input channels: a genuinely different memory layout.
  auto o3 = small16();
  UNet net3(o3);
  perturb_zero_parameters(net3);
  const auto x3 = torch::randn({2, 3, 16, 16});
  const auto ref3 = net3.forward(x3, t);
  convert_to_channels_last(net3);
  EXPECT_LT((net3.forward(x3.contiguous(at::MemoryFormat::ChannelsLast), t) - ref3).abs().max().item<float>(), 1e-5f);
}

// qkv_attention against the definition, head by head, with improved-diffusion's legacy layout
// (each head's q, k, v stacked along the channel axis).
TEST(UNet, QkvAttentionMatchesNaiveDefinition) {
  torch::NoGradGuard g;
  torch::manual_seed(7);
  const int64_t B = 2, heads = 3, ch = 4, T = 5;
  const auto qkv = torch::randn({B, heads * 3 * ch, T}, torch::kDouble);
  const auto out = qkv_attention(qkv, heads);
  ASSERT_EQ(out.sizes().vec(), (std::vector<int64_t>{B, heads * ch, T}));
  const auto a = qkv.accessor<double, 3>();
  const auto o = out.accessor<double, 3>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t base = h * 3 * ch;
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> w(T);
        double denom = 0.0, mx = -1e300;
        for (int64_t s = 0; s < T; ++s) {
          double dot = 0.0;
          for (int64_t c = 0; c < ch; ++c) dot += a[b][base + c][t] * a[b][base + ch + c][s];
          w[s] = dot / std::sqrt(static_cast<double>(ch));
          mx = std::max(mx, w[s]);
        }
        for (auto& v : w) denom += (v = std::exp(v - mx));
        for (int64_t c = 0; c < ch; ++c) {
          double acc = 0.0;
          for (int64_t s = 0; s < T; ++s) acc += w[s] / denom * a[b][base + 2 * ch + c][s];
          EXPECT_NEAR(o[b][h * ch + c][t], acc, 1e-12);
        }
      }
    }
  EXPECT_THROW(qkv_attention(qkv, 5), std::invalid_argument);
}

TEST(UNet, BadConfigsThrowUsageErrorNamingTheKey) {
  auto bad = [](auto edit, const std::string& needle) {
    auto o = mnist_reference();
    edit(o);
    expect_usage_error([&] { UNet net(o); }, needle);
  };
  bad([](UNetOptions& o) { o.attention_resolutions = {5}; },
      "model.attention_resolutions: 5 is not a feature-map size of this UNet (28, 14, 7)");
  bad([](UNetOptions& o) { o.image_size = 30; }, "data.image_size: 30 is not divisible by 4");
  bad([](UNetOptions& o) { o.channel_mult = {1, 2, 2, 2}; }, "data.image_size");  // 28 / 8
  bad([](UNetOptions& o) { o.model_channels = 48; }, "model.model_channels");
  bad(
      [](UNetOptions& o) {
        o.channel_mult = {1, 3, 2};
        o.model_channels = 16;
      },
      "model.model_channels");
  bad(
      [](UNetOptions& o) {
        o.model_channels = 32;
        o.channel_mult = {1, 2, 0};
      },
      "model.channel_mult");
  bad([](UNetOptions& o) { o.channel_mult = {}; }, "model.channel_mult");
  bad([](UNetOptions& o) { o.channel_mult = {1, 2.01, 2}; }, "channels; expected a whole number >= 1");
  bad(
      [](UNetOptions& o) {
        o.channel_mult = {1, 2.5, 2};
        o.model_channels = 32;
      },
      "model.channel_mult: level 1 has 2.5 x 32 = 80 channels, not a multiple of 32");
  bad([](UNetOptions& o) { o.num_heads = 3; },
      "model.num_heads: 3 heads do not divide the 64 channels of the 7x7 level");
  bad([](UNetOptions& o) { o.num_head_channels = 48; }, "model.num_head_channels");
  bad([](UNetOptions& o) { o.dropout = 1.0; }, "model.dropout");
  bad([](UNetOptions& o) { o.num_res_blocks = -1; }, "model.num_res_blocks");
  bad([](UNetOptions& o) { o.in_channels = 0; }, "data.channels");
  // The middle block always has attention: its heads are checked even without attention levels.
  bad(
      [](UNetOptions& o) {
        o.attention_resolutions = {};
        o.num_heads = 3;
      },
      "middle block");
  // Wrong input shapes are a programming error (std::invalid_argument), not a crash.
  UNet net(mnist_reference());
  EXPECT_THROW(net.forward(torch::randn({1, 1, 30, 30}), torch::zeros({1})), std::invalid_argument);
  EXPECT_THROW(net.forward(torch::randn({1, 3, 28, 28}), torch::zeros({1})), std::invalid_argument);
  EXPECT_THROW(net.forward(torch::randn({2, 1, 28, 28}), torch::zeros({3})), std::invalid_argument);
}

// In no-grad mode the network uses in-place activations: the input must be left untouched and
// the result equal the grad-mode result.
TEST(UNet, InferenceModeMatchesGradModeAndKeepsInput) {
  auto o = mnist_reference();
  UNet net(o);
  perturb_zero_parameters(net);
  torch::manual_seed(8);
  const auto x = torch::randn({2, 1, 28, 28});
  const auto x_copy = x.clone();
  const auto t = torch::tensor({20.0f, 600.0f});
  const auto with_grad = net.forward(x, t).detach();
  torch::Tensor no_grad;
  {
    torch::NoGradGuard g;
    no_grad = net.forward(x, t);
  }
  EXPECT_TRUE(torch::equal(x, x_copy));
  EXPECT_TRUE(torch::allclose(with_grad, no_grad, 1e-6, 1e-6));
}

namespace {

// improved-diffusion's forward, written out with plain functional ops on the named parameters
// (no code shared with the library): a second computation of the same network.
struct ReferenceUNet {
  torch::OrderedDict<std::string, torch::Tensor> p;
  bool ssn;
  int64_t heads;

  torch::Tensor w(const std::string& n) const {
    const auto* t = p.find(n);
    EXPECT_NE(t, nullptr) << n;
    return *t;
  }
  bool has(const std::string& n) const { return p.find(n) != nullptr; }
  torch::Tensor gn(const torch::Tensor& x, const std::string& pre) const {
    return torch::group_norm(x, 32, w(pre + ".weight"), w(pre + ".bias"), 1e-5);
  }
  torch::Tensor conv3(const torch::Tensor& x, const std::string& pre, int64_t stride = 1) const {
    return torch::conv2d(x, w(pre + ".weight"), w(pre + ".bias"), stride, 1);
  }
  static torch::Tensor up(const torch::Tensor& x) {
    return x.repeat_interleave(2, 2).repeat_interleave(2, 3);  // nearest x2
  }
  static torch::Tensor down(const torch::Tensor& x) {  // 2x2 mean
    const auto s = x.sizes();
    return x.reshape({s[0], s[1], s[2] / 2, 2, s[3] / 2, 2}).mean({3, 5});
  }
  torch::Tensor res(torch::Tensor x, const torch::Tensor& emb, const std::string& pre, int mode = 0) const {
    torch::Tensor h = torch::silu(gn(x, pre + ".in_layers.0"));
    if (mode == 1) h = up(h), x = up(x);
    if (mode == -1) h = down(h), x = down(x);
    h = conv3(h, pre + ".in_layers.2");
    auto e = torch::linear(torch::silu(emb), w(pre + ".emb_layers.1.weight"), w(pre + ".emb_layers.1.bias"));
    e = e.unsqueeze(-1).unsqueeze(-1);
    if (ssn) {
      auto chunks = e.chunk(2, 1);
      h = gn(h, pre + ".out_layers.0") * (1 + chunks[0]) + chunks[1];
      h = conv3(torch::silu(h), pre + ".out_layers.3");
    } else {
      h = conv3(torch::silu(gn(h + e, pre + ".out_layers.0")), pre + ".out_layers.3");
    }
    const auto skip = has(pre + ".skip_connection.weight")
                          ? torch::conv2d(x, w(pre + ".skip_connection.weight"), w(pre + ".skip_connection.bias"))
                          : x;
    return skip + h;
  }
  torch::Tensor attn(const torch::Tensor& x, const std::string& pre) const {
    const int64_t B = x.size(0), C = x.size(1), T = x.size(2) * x.size(3);
    const auto xf = x.reshape({B, C, T});
    auto qkv = torch::conv1d(gn(xf, pre + ".norm"), w(pre + ".qkv.weight"), w(pre + ".qkv.bias"));
    qkv = qkv.reshape({B * heads, -1, T});
    const int64_t ch = C / heads;
    const auto parts = qkv.split(ch, 1);
    const double scale = 1.0 / std::sqrt(std::sqrt(static_cast<double>(ch)));
    auto weight = torch::einsum("bct,bcs->bts", {parts[0] * scale, parts[1] * scale}).softmax(-1);
    auto a = torch::einsum("bts,bcs->bct", {weight, parts[2]}).reshape({B, C, T});
    const auto h = torch::conv1d(a, w(pre + ".proj_out.weight"), w(pre + ".proj_out.bias"));
    return (xf + h).reshape(x.sizes());
  }

  // The small16() layout: levels 16 (32 ch) and 8 (64 ch, attention), one ResBlock per level.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& y, bool updown) const {
    const int64_t half = 16;
    const auto freqs = torch::exp(-std::log(10000.0) * torch::arange(half, torch::kFloat) / half);
    const auto args = t.unsqueeze(1) * freqs.unsqueeze(0);
    auto emb = torch::cat({args.cos(), args.sin()}, 1);
    emb = torch::linear(emb, w("time_embed.0.weight"), w("time_embed.0.bias"));
    emb = torch::linear(torch::silu(emb), w("time_embed.2.weight"), w("time_embed.2.bias"));
    emb = emb + w("label_emb.weight").index_select(0, y);
    const auto h0 = conv3(x, "input_blocks.0.0");
    const auto h1 = res(h0, emb, "input_blocks.1.0");
    const auto h2 = updown ? res(h1, emb, "input_blocks.2.0", -1) : conv3(h1, "input_blocks.2.0.op", 2);
    const auto h3 = attn(res(h2, emb, "input_blocks.3.0"), "input_blocks.3.1");
    auto h = res(attn(res(h3, emb, "middle_block.0"), "middle_block.1"), emb, "middle_block.2");
    h = attn(res(torch::cat({h, h3}, 1), emb, "output_blocks.0.0"), "output_blocks.0.1");
    h = attn(res(torch::cat({h, h2}, 1), emb, "output_blocks.1.0"), "output_blocks.1.1");
    h = updown ? res(h, emb, "output_blocks.1.2", 1) : conv3(up(h), "output_blocks.1.2.conv");
    h = res(torch::cat({h, h1}, 1), emb, "output_blocks.2.0");
    h = res(torch::cat({h, h0}, 1), emb, "output_blocks.3.0");
    return conv3(torch::silu(gn(h, "out.0")), "out.2");
  }
};

}  // namespace

TEST(UNet, ForwardMatchesStraightforwardReference) {
  torch::NoGradGuard g;
  for (bool ssn : {true, false})
    for (bool updown : {false, true}) {
      auto o = small16();
      o.use_scale_shift_norm = ssn;
      o.resblock_updown = updown;
      UNet net(o);
      perturb_zero_parameters(net, 21);
      torch::manual_seed(22);
      const auto x = torch::randn({2, 3, 16, 16});
      const auto t = torch::tensor({3.0f, 640.25f});
      const auto y = torch::tensor({7, 10}, torch::kLong);
      const ReferenceUNet ref{net.named_parameters(), ssn, o.num_heads};
      const auto expected = ref.forward(x, t, y, updown);
      const auto got = net.forward(x, t, y);
      ASSERT_EQ(got.sizes(), expected.sizes());
      EXPECT_GT(expected.abs().max().item<float>(), 1e-2f);
      EXPECT_LT((got - expected).abs().max().item<float>(), 1e-5f) << "ssn=" << ssn << " updown=" << updown;
    }
}

TEST(UNet, FractionalMultipliersMakeWholeChannelCounts) {
  // guided-diffusion's 512x512 model starts at 0.5 x model_channels (int(mult * model_channels)).
  UNetOptions o = small16();
  o.out_channels = 3;
  o.model_channels = 64;
  o.channel_mult = {0.5, 1.5};  // 32 and 96 channels; the 8x8 attention has 2 heads of 48
  UNet net(o);
  const auto params = net.named_parameters();
  EXPECT_EQ(params["input_blocks.0.0.weight"].sizes().vec(), (std::vector<int64_t>{32, 3, 3, 3}));
  EXPECT_EQ(params["input_blocks.3.0.out_layers.3.weight"].size(0), 96);
  EXPECT_EQ(params["out.2.weight"].sizes().vec(), (std::vector<int64_t>{3, 32, 3, 3}));
  EXPECT_EQ(unet_level_channels(256, 0.5), 128);
  torch::NoGradGuard g;
  EXPECT_EQ(net.forward(torch::randn({2, 3, 16, 16}), torch::tensor({1.0f, 2.0f})).sizes().vec(),
            (std::vector<int64_t>{2, 3, 16, 16}));
}

namespace diffuse {
namespace {

// Phases 2^n 2 pi x at hand-picked x: whole turns give sin 0 / cos 1, a quarter of 2^-6 a quarter turn.
TEST(UNet, FourierFeaturesStackSinAndCosOfTheInputAtTwoFrequencies) {
  const auto x = torch::tensor({0.0, 1.0 / 128.0, 1.0 / 256.0, -0.5}, torch::kFloat64).reshape({1, 1, 2, 2});
  const auto f = with_fourier_features(x);
  ASSERT_EQ(f.sizes().vec(), (std::vector<int64_t>{1, 5, 2, 2}));
  EXPECT_TRUE(torch::equal(f[0][0], x[0][0]));
  const double pi = std::acos(-1.0);
  for (int64_t i = 0; i < 4; ++i) {
    const double v = x.flatten()[i].item<double>();
    const auto at = [&](int64_t c) { return f[0][c].flatten()[i].item<double>(); };
    EXPECT_NEAR(at(1), std::sin(64 * 2 * pi * v), 1e-12);
    EXPECT_NEAR(at(2), std::cos(64 * 2 * pi * v), 1e-12);
    EXPECT_NEAR(at(3), std::sin(128 * 2 * pi * v), 1e-12);
    EXPECT_NEAR(at(4), std::cos(128 * 2 * pi * v), 1e-12);
  }
  EXPECT_NEAR(f[0][1][1][0].item<double>(), 1.0, 1e-12);  // x = 1/256: a quarter turn at 2^6
  EXPECT_NEAR(f[0][3][0][1].item<double>(), 0.0, 1e-12);  // x = 1/128: one whole turn at 2^7
}

// The option widens only the first convolution: 5x its input channels, the rest unchanged.
TEST(UNet, FourierFeaturesWidenOnlyTheInputConvolution) {
  UNetOptions o = small16();
  torch::manual_seed(0);
  UNet plain(o);
  o.fourier_features = true;
  UNet fourier(o);
  EXPECT_EQ(count_parameters(fourier) - count_parameters(plain), 4 * 3 * 32 * 3 * 3);
  torch::NoGradGuard g;
  const auto out = fourier.forward(torch::randn({2, 3, 16, 16}), torch::tensor({3.0f, 500.0f}));
  EXPECT_EQ(out.sizes().vec(), (std::vector<int64_t>{2, 6, 16, 16}));
}

}  // namespace
}  // namespace diffuse

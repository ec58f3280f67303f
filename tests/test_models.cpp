#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>

#include "diffuse/config.h"
#include "diffuse/error.h"
#include "diffuse/models/layers.h"
#include "diffuse/models/mlp.h"
#include "diffuse/models/network.h"
#include "diffuse/models/super_res.h"
#include "diffuse/models/unet.h"

using namespace diffuse;

// The closed form [cos(t f_i), sin(t f_i)], f_i = 10000^(-i/half), with an odd dim zero-padded.
TEST(Models, TimestepEmbeddingClosedForm) {
  const auto t = torch::tensor({0.0f, 1.0f, 17.5f, 999.0f});
  for (int64_t dim : {8, 7, 64}) {
    const auto emb = timestep_embedding(t, dim);
    ASSERT_EQ(emb.sizes().vec(), (std::vector<int64_t>{4, dim}));
    const int64_t half = dim / 2;
    const auto a = emb.accessor<float, 2>();
    const double ts[] = {0.0, 1.0, 17.5, 999.0};
    for (int64_t b = 0; b < 4; ++b) {
      for (int64_t i = 0; i < half; ++i) {
        const double arg = ts[b] * std::pow(10000.0, -static_cast<double>(i) / half);
        // float32 arguments up to ~1000 carry ~1e-4 absolute error in the angle.
        EXPECT_NEAR(a[b][i], std::cos(arg), 2e-4) << dim << " " << b << " " << i;
        EXPECT_NEAR(a[b][half + i], std::sin(arg), 2e-4) << dim << " " << b << " " << i;
      }
      if (dim % 2) {
        EXPECT_EQ(a[b][dim - 1], 0.0f);
      }
    }
  }
  // Integer timesteps are accepted and give the same embedding.
  EXPECT_TRUE(torch::equal(timestep_embedding(torch::tensor({3, 40}, torch::kLong), 16),
                           timestep_embedding(torch::tensor({3.0f, 40.0f}), 16)));
}

TEST(Models, MakeNetworkFromConfig) {
  ModelConfig cfg;
  cfg.type = ModelType::UNet;
  cfg.model_channels = 32;
  cfg.channel_mult = {1, 2, 2};
  cfg.num_res_blocks = 1;
  cfg.attention_resolutions = {7};
  cfg.num_heads = 4;
  cfg.use_scale_shift_norm = true;
  auto net = make_network(cfg, 28, 1, 1, 10);
  EXPECT_EQ(count_parameters(*net), 1191233);  // class labels ignored: class_cond is false
  EXPECT_FALSE(net->class_conditional());
  EXPECT_NE(std::dynamic_pointer_cast<UNet>(net), nullptr);

  cfg.class_cond = true;
  auto cond = make_network(cfg, 28, 1, 2, 10);                          // learn_sigma: the caller doubles out_channels
  EXPECT_EQ(count_parameters(*cond), 1191233 + 11 * 128 + 32 * 9 + 1);  // label rows + 2nd out channel
  EXPECT_EQ(cond->num_classes(), 10);
  EXPECT_EQ(cond->out_channels(), 2);
  cfg.num_classes = 4;  // an explicit count wins over the dataset's
  EXPECT_EQ(make_network(cfg, 28, 1, 1, 10)->num_classes(), 4);
  cfg.num_classes = 0;
  try {
    make_network(cfg, 28, 1, 1, 0);
    ADD_FAILURE() << "class_cond without a class count must throw";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("model.class_cond"), std::string::npos) << e.what();
  }
  cfg.class_cond = false;
  cfg.attention_resolutions = {5};
  try {
    make_network(cfg, 28, 1, 1, 0);
    ADD_FAILURE() << "bad attention resolution must throw";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("model.attention_resolutions: 5"), std::string::npos) << e.what();
  }

  ModelConfig mlp;
  mlp.type = ModelType::Mlp;
  mlp.hidden = 16;
  mlp.num_blocks = 1;
  auto m = make_network(mlp, 0, 2, 2, 0);
  EXPECT_NE(std::dynamic_pointer_cast<Mlp>(m), nullptr);
  torch::NoGradGuard g;
  EXPECT_EQ(m->forward(torch::randn({3, 2}), torch::tensor({1.0f, 2.0f, 3.0f})).sizes().vec(),
            (std::vector<int64_t>{3, 2}));
}

TEST(Models, SummaryListsLayersAndTotal) {
  UNetOptions o;
  o.image_size = 16;
  o.in_channels = 1;
  o.out_channels = 1;
  o.model_channels = 32;
  o.channel_mult = {1, 2};
  o.num_res_blocks = 1;
  UNet net(o);  // on the stack: model_summary must not need shared_from_this
  const std::string s = model_summary(net);
  const int64_t total = count_parameters(net);
  EXPECT_NE(s.find("Total parameters: " + format_count(total)), std::string::npos) << s;
  EXPECT_NE(s.find("input_blocks.1.0.in_layers.2"), std::string::npos) << s;
  EXPECT_NE(s.find("Conv2d"), std::string::npos);
  EXPECT_NE(s.find("GroupNorm"), std::string::npos);
  EXPECT_NE(s.find("weight 32x1x3x3"), std::string::npos) << s;
  // One row per parameter-owning module: the rows' counts add up to the total.
  int64_t rows_sum = 0;
  const auto shared = std::make_shared<UNet>(o);
  for (const auto& item : shared->named_modules()) {
    int64_t n = 0;
    for (const auto& p : item.value()->named_parameters(false)) n += p.value().numel();
    if (n) {
      rows_sum += n;
      EXPECT_NE(s.find(item.key()), std::string::npos) << item.key();
    }
  }
  EXPECT_EQ(rows_sum, total);
  EXPECT_EQ(format_count(1191233), "1,191,233");
  EXPECT_EQ(format_count(999), "999");
  EXPECT_EQ(format_count(1000), "1,000");
  EXPECT_EQ(format_count(0), "0");
}

TEST(Models, ConvertToChannelsLastKeepsValues) {
  torch::nn::Sequential seq(torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 8, 3)), torch::nn::Linear(4, 5),
                            torch::nn::BatchNorm2d(8));
  std::vector<torch::Tensor> before;
  for (const auto& p : seq->parameters()) before.push_back(p.detach().clone());
  seq->parameters()[0].mutable_grad() = torch::ones_like(seq->parameters()[0]);
  convert_to_channels_last(*seq);
  const auto after = seq->parameters();
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_TRUE(torch::equal(after[i], before[i]));
    if (after[i].dim() == 4) {
      EXPECT_TRUE(after[i].is_contiguous(at::MemoryFormat::ChannelsLast));
      EXPECT_FALSE(after[i].is_contiguous());
      EXPECT_TRUE(after[i].grad().is_contiguous(at::MemoryFormat::ChannelsLast));
    } else {
      EXPECT_TRUE(after[i].is_contiguous());
    }
  }
  EXPECT_TRUE(after[0].requires_grad());
}

// GroupNorm32 computes in float32 for other dtypes and returns the input's dtype.
TEST(Models, GroupNorm32CastsThroughFloat) {
  auto norm = make_group_norm(64);
  {
    torch::NoGradGuard g;
    norm->weight.normal_();
    norm->bias.normal_();
  }
  torch::manual_seed(15);
  const auto x = torch::randn({2, 64, 4, 4}, torch::kDouble) * 3 + 1;
  const auto out = group_norm32(norm, x);
  EXPECT_EQ(out.scalar_type(), torch::kDouble);
  const auto expected = torch::group_norm(x.to(torch::kFloat), 32, norm->weight, norm->bias, 1e-5).to(torch::kDouble);
  EXPECT_TRUE(torch::equal(out, expected));
  // Against the definition: per sample and group of 2 channels, (x - mean) / sqrt(var + eps).
  const auto xf = x.to(torch::kFloat);
  const auto grp = xf.reshape({2, 32, -1});
  const auto normed = ((grp - grp.mean(-1, true)) / (grp.var(-1, false, true) + 1e-5).sqrt()).reshape(x.sizes());
  const auto manual = normed * norm->weight.view({1, 64, 1, 1}) + norm->bias.view({1, 64, 1, 1});
  EXPECT_LT((group_norm32(norm, xf) - manual).abs().max().item<float>(), 1e-4f);
}

TEST(Models, SiluOwnedIsInPlaceOnlyWithoutAutograd) {
  const auto a = torch::randn({5}).requires_grad_(true);
  const auto b = a * 2;  // an owned temporary that autograd tracks
  const auto b_before = b.detach().clone();
  const auto s = silu_owned(b);
  EXPECT_TRUE(torch::equal(b.detach(), b_before));  // left intact for backward
  EXPECT_TRUE(torch::allclose(s, b_before * torch::sigmoid(b_before)));
  torch::NoGradGuard g;
  auto c = torch::randn({5});
  const auto c_before = c.clone();
  const auto sc = silu_owned(c);
  EXPECT_EQ(sc.data_ptr(), c.data_ptr());  // in place
  EXPECT_TRUE(torch::allclose(sc, c_before * torch::sigmoid(c_before)));
}

TEST(SuperRes, AreaDownsamplingIsTheBlockMeanAndTheInputStacksTheUpsampledImage) {
  torch::manual_seed(4);
  const auto x = torch::randn({2, 3, 12, 12});
  // 12 -> 4: the mean of each 3x3 block.
  const auto blocks = x.view({2, 3, 4, 3, 4, 3}).mean({3, 5});
  EXPECT_LT((downsample_area(x, 4) - blocks).abs().max().item<double>(), 1e-6);
  ModelConfig m;
  m.channel_mult = {1, 1};
  m.model_channels = 32;
  m.num_res_blocks = 1;
  m.low_res_size = 4;
  const UNetOptions o = UNetOptions::from_config(m, /*image_size=*/12, /*in_channels=*/3, /*out_channels=*/3, 0);
  EXPECT_EQ(o.in_channels, 6);  // x_t and the upsampled image
  UNet net(o);
  EXPECT_EQ(net.low_res_size(), 4);
  // A constant image upsamples to the same constant; the input is [x_t, upsampled].
  const auto flat = torch::full({2, 3, 4, 4}, 0.25);
  const auto in = network_input(net, x, flat);
  EXPECT_EQ(in.sizes().vec(), (std::vector<int64_t>{2, 6, 12, 12}));
  EXPECT_TRUE(torch::equal(in.slice(1, 0, 3), x));
  EXPECT_LT((in.slice(1, 3, 6) - 0.25).abs().max().item<double>(), 1e-7);
  // A guided batch of two copies of x_t repeats the low-resolution images.
  EXPECT_EQ(network_input(net, torch::cat({x, x}), flat).size(0), 4);
  EXPECT_THROW(network_input(net, x, torch::Tensor()), std::invalid_argument);
  EXPECT_THROW(network_input(net, x, torch::zeros({2, 3, 5, 5})), std::invalid_argument);
  m.low_res_size = 0;
  UNet plain(UNetOptions::from_config(m, 12, 3, 3, 0));
  EXPECT_THROW(network_input(plain, x, flat), std::invalid_argument);
  EXPECT_TRUE(network_input(plain, x, torch::Tensor()).is_same(x));
}

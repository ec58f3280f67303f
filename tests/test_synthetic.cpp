#include <gtest/gtest.h>
#include <torch/torch.h>

#include "diffuse/config.h"
#include "diffuse/data/dataset.h"

using namespace diffuse;

TEST(SyntheticData, DeterministicEightBitImagesOfTheConfiguredShape) {
  DataConfig c;
  c.dataset = parse_dataset_kind("synthetic");
  c.image_size = 16;
  c.channels = 1;
  auto a = make_dataset(c, 5), b = make_dataset(c, 5), other = make_dataset(c, 6);
  EXPECT_EQ(a->shape(), (std::vector<int64_t>{1, 16, 16}));
  EXPECT_EQ(a->num_classes(), 10);
  auto x = a->get(7).x;
  EXPECT_TRUE(torch::equal(x, b->get(7).x));       // same seed and index -> same image
  EXPECT_FALSE(torch::equal(x, other->get(7).x));  // another seed -> another image
  EXPECT_FALSE(torch::equal(x, a->get(8).x));
  EXPECT_EQ(a->get(13).label, 3);
  // Pixels lie on the 8-bit grid k/127.5 - 1 and cover the range roughly uniformly.
  auto k = (x + 1.0) * 127.5;
  EXPECT_LT((k - k.round()).abs().max().item<float>(), 1e-4);
  EXPECT_GE(x.min().item<float>(), -1.0f);
  EXPECT_LE(x.max().item<float>(), 1.0f);
  EXPECT_NEAR(x.mean().item<float>(), 0.0, 0.2);  // 256 pixels of U{-1..1}: sd of mean ~0.036
  // Defaults: 32x32 RGB.
  DataConfig d;
  d.dataset = DatasetKind::Synthetic;
  EXPECT_EQ(make_dataset(d)->shape(), (std::vector<int64_t>{3, 32, 32}));
}

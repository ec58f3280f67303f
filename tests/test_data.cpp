#include <gtest/gtest.h>
#include <torch/torch.h>
#include <zlib.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "diffuse/data/cifar10.h"
#include "diffuse/data/dataset.h"
#include "diffuse/data/file_bytes.h"
#include "diffuse/data/idx.h"
#include "diffuse/data/image_folder.h"
#include "diffuse/data/image_transform.h"
#include "diffuse/data/loader.h"
#include "diffuse/data/toy2d.h"
#include "diffuse/error.h"
#include "diffuse/image_io.h"
#include "test_util.h"

using namespace diffuse;
namespace fs = std::filesystem;
namespace F = torch::nn::functional;

namespace {

void spew(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream f(p, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void spew_gz(const fs::path& p, const std::string& bytes) {
  gzFile f = gzopen(p.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  gzclose(f);
}

std::string idx_bytes(const std::vector<uint32_t>& dims, const std::vector<uint8_t>& data) {
  std::string b = {0, 0, 8, static_cast<char>(dims.size())};
  for (uint32_t d : dims)
    b += {static_cast<char>(d >> 24), static_cast<char>(d >> 16), static_cast<char>(d >> 8), static_cast<char>(d)};
  b.append(data.begin(), data.end());
  return b;
}

// Runs fn, expects an exception of type E whose message contains every one of `parts`.
template <typename E = UsageError, typename Fn>
void expect_error(Fn fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "no exception; expected one mentioning " << parts[0];
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

float unit(int p) { return static_cast<float>(p / 127.5 - 1.0); }

// Reference resize: crop the center square, then torch's antialiased bilinear interpolate.
torch::Tensor reference_resize(const torch::Tensor& u8, int64_t size) {
  const int64_t h = u8.size(1), w = u8.size(2), s = std::min(h, w);
  auto crop = u8.narrow(1, (h - s) / 2, s).narrow(2, (w - s) / 2, s).to(torch::kFloat64).unsqueeze(0);
  auto out = F::interpolate(crop, F::InterpolateFuncOptions()
                                      .size(std::vector<int64_t>{size, size})
                                      .mode(torch::kBilinear)
                                      .align_corners(false)
                                      .antialias(true));
  return (out.squeeze(0) / 127.5 - 1.0).to(torch::kFloat32);
}

// A hand-written 24-bit BMP (BITMAPINFOHEADER, bottom-up rows padded to 4 bytes), from RGB [3,H,W].
std::string bmp_bytes(const torch::Tensor& rgb) {
  const int64_t h = rgb.size(1), w = rgb.size(2), row = (3 * w + 3) / 4 * 4;
  auto le32 = [](uint32_t v) { return std::string{char(v), char(v >> 8), char(v >> 16), char(v >> 24)}; };
  auto le16 = [](uint16_t v) { return std::string{char(v), char(v >> 8)}; };
  std::string b = "BM" + le32(static_cast<uint32_t>(54 + row * h)) + le32(0) + le32(54);
  b += le32(40) + le32(static_cast<uint32_t>(w)) + le32(static_cast<uint32_t>(h)) + le16(1) + le16(24) + le32(0) +
       le32(static_cast<uint32_t>(row * h)) + le32(2835) + le32(2835) + le32(0) + le32(0);
  auto a = rgb.accessor<uint8_t, 3>();
  for (int64_t y = h - 1; y >= 0; --y) {
    std::string r;
    for (int64_t x = 0; x < w; ++x) r += {char(a[2][y][x]), char(a[1][y][x]), char(a[0][y][x])};
    r.resize(row, '\0');
    b += r;
  }
  return b;
}

torch::Tensor random_u8(std::vector<int64_t> shape, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randint(0, 256, shape, torch::kUInt8);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Image transform

TEST(DataTransform, ResizeWeightsMatchClosedForm) {
  // Downscale by 2: the triangle filter spans 2 input pixels each side; interior taps at
  // distances 1.5, 0.5, 0.5, 1.5 get 1 - d/2 = 1/4, 3/4, 3/4, 1/4, normalized to 1/8, 3/8, 3/8, 1/8.
  const auto w = resize_weights(8, 0, 8, 4);
  for (int64_t i = 0; i < 4; ++i) EXPECT_NEAR(w[i].sum().item<double>(), 1.0, 1e-12);
  const std::vector<double> interior = {1.0 / 8, 3.0 / 8, 3.0 / 8, 1.0 / 8};
  for (int64_t j = 0; j < 4; ++j) EXPECT_NEAR(w[1][1 + j].item<double>(), interior[j], 1e-12);
  // At the border the outside tap is dropped and the rest renormalized: 3/4, 3/4, 1/4 over 7/4.
  EXPECT_NEAR(w[0][0].item<double>(), 3.0 / 7, 1e-12);
  EXPECT_NEAR(w[0][2].item<double>(), 1.0 / 7, 1e-12);
  // A crop window only reads inside the window.
  const auto wc = resize_weights(10, 3, 4, 2);
  EXPECT_EQ(wc.narrow(1, 0, 3).abs().sum().item<double>(), 0.0);
  EXPECT_EQ(wc.narrow(1, 7, 3).abs().sum().item<double>(), 0.0);
}

TEST(DataTransform, MatchesTorchAntialiasedBilinear) {
  struct Case {
    int64_t c, h, w, s;
  };
  for (const Case k : {Case{1, 28, 28, 32}, Case{1, 28, 28, 10}, Case{1, 28, 28, 7}, Case{3, 17, 23, 5},
                       Case{3, 10, 14, 13}, Case{1, 5, 5, 13}, Case{3, 32, 32, 16}}) {
    const auto img = random_u8({k.c, k.h, k.w}, static_cast<uint64_t>(k.h * 100 + k.s));
    const ImageTransform t(k.c, k.h, k.w, k.s, 0);
    const auto got = t.apply(img);
    EXPECT_EQ(got.sizes().vec(), (std::vector<int64_t>{k.c, k.s, k.s}));
    EXPECT_LT((got - reference_resize(img, k.s)).abs().max().item<float>(), 2e-5)
        << k.c << "x" << k.h << "x" << k.w << " -> " << k.s;
  }
  // A constant image stays exactly constant.
  const auto flat = torch::full({1, 9, 12}, 200, torch::kUInt8);
  EXPECT_LT((ImageTransform(1, 9, 12, 5, 0).apply(flat) - unit(200)).abs().max().item<float>(), 1e-6);
}

TEST(DataTransform, ChannelsAndIdentity) {
  const auto rgb = random_u8({3, 4, 4}, 7);
  // Native geometry: exact p / 127.5 - 1.
  const auto same = ImageTransform(3, 4, 4, 0, 0).apply(rgb);
  EXPECT_TRUE(torch::equal(same, (rgb.to(torch::kFloat64) / 127.5 - 1.0).to(torch::kFloat32)));
  EXPECT_TRUE(torch::equal(ImageTransform(3, 4, 4, 4, 3).apply(rgb), same));
  // BT.601 luma.
  const auto grey = ImageTransform(3, 4, 4, 0, 1).apply(rgb);
  const auto r = rgb.to(torch::kFloat64);
  const auto luma = (0.299 * r[0] + 0.587 * r[1] + 0.114 * r[2]) / 127.5 - 1.0;
  EXPECT_LT((grey[0].to(torch::kFloat64) - luma).abs().max().item<double>(), 1e-6);
  // Grey then resize: torch's antialiased bilinear of the luma plane.
  const auto grey_resized = ImageTransform(3, 4, 4, 2, 1).apply(rgb);
  const auto luma_ref =
      F::interpolate(((luma + 1.0) * 127.5).unsqueeze(0).unsqueeze(0), F::InterpolateFuncOptions()
                                                                           .size(std::vector<int64_t>{2, 2})
                                                                           .mode(torch::kBilinear)
                                                                           .align_corners(false)
                                                                           .antialias(true));
  EXPECT_LT((grey_resized.to(torch::kFloat64) - (luma_ref.squeeze(0) / 127.5 - 1.0)).abs().max().item<double>(), 1e-5);
  // Grey to RGB replicates.
  const auto g = random_u8({1, 3, 5}, 8);
  const auto rep = ImageTransform(1, 3, 5, 0, 3).apply(g);
  for (int c = 0; c < 3; ++c) EXPECT_TRUE(torch::equal(rep[c], ImageTransform(1, 3, 5, 0, 0).apply(g)[0]));
  EXPECT_THROW(ImageTransform(2, 4, 4, 0, 0), UsageError);
  EXPECT_THROW(ImageTransform(1, 4, 4, 0, 2), UsageError);
}

// ---------------------------------------------------------------------------------------------
// IDX (MNIST / Fashion-MNIST format)

namespace {
struct IdxFixture {
  test::TempDir dir;
  int64_t n = 6, h = 3, w = 4;
  std::vector<uint8_t> pixels, labels;
  IdxFixture() {
    for (int64_t i = 0; i < n * h * w; ++i) pixels.push_back(static_cast<uint8_t>((i * 37 + 11) % 256));
    for (int64_t i = 0; i < n; ++i) labels.push_back(static_cast<uint8_t>((i * 7) % 10));
    // train: plain files; test: gzipped (with zlib's gzwrite, independent of the reader).
    spew(dir.path() / "train-images-idx3-ubyte", idx_bytes({6, 3, 4}, pixels));
    spew(dir.path() / "train-labels-idx1-ubyte", idx_bytes({6}, labels));
    spew_gz(dir.path() / "t10k-images-idx3-ubyte.gz", idx_bytes({6, 3, 4}, pixels));
    spew_gz(dir.path() / "t10k-labels-idx1-ubyte.gz", idx_bytes({6}, labels));
  }
  DataConfig config(const std::string& split) const {
    DataConfig c;
    c.dataset = DatasetKind::Mnist;
    c.path = dir.str();
    c.split = split;
    return c;
  }
};
}  // namespace

TEST(DataIdx, PlainAndGzipReadTheSameExamples) {
  IdxFixture fx;
  for (const std::string split : {"train", "test"}) {
    const auto ds = make_dataset(fx.config(split));
    ASSERT_EQ(ds->size(), fx.n);
    EXPECT_EQ(ds->num_classes(), 10);
    EXPECT_EQ(ds->shape(), (std::vector<int64_t>{1, 3, 4}));
    for (int64_t i = 0; i < fx.n; ++i) {
      const auto e = ds->get(i);
      EXPECT_EQ(e.label, fx.labels[i]);
      ASSERT_EQ(e.x.sizes().vec(), (std::vector<int64_t>{1, 3, 4}));
      auto a = e.x.accessor<float, 3>();
      for (int64_t y = 0; y < fx.h; ++y)
        for (int64_t x = 0; x < fx.w; ++x) EXPECT_EQ(a[0][y][x], unit(fx.pixels[(i * fx.h + y) * fx.w + x])) << split;
    }
    EXPECT_THROW(ds->get(fx.n), std::out_of_range);
    EXPECT_THROW(ds->get(-1), std::out_of_range);
  }
}

// The fingerprint is a function of the examples: the same bytes give the same one wherever
// they are (plain or gzipped, copied elsewhere), one pixel or label changed gives another, and
// data.limit does not change it (the limit is in the config a resume compares anyway).
TEST(DataIdx, FingerprintFollowsTheExamplesNotTheFiles) {
  IdxFixture fx;
  const auto train = make_dataset(fx.config("train"))->fingerprint();
  EXPECT_EQ(train.rfind("fnv1a64:", 0), 0u) << train;
  EXPECT_EQ(train.size(), 8u + 16u);
  EXPECT_EQ(make_dataset(fx.config("test"))->fingerprint(), train);  // gzipped copy of the same
  auto limited = fx.config("train");
  limited.limit = 2;
  EXPECT_EQ(make_dataset(limited)->fingerprint(), train);
  auto pixels = fx.pixels;
  pixels[17] ^= 1;
  spew(fx.dir.path() / "train-images-idx3-ubyte", idx_bytes({6, 3, 4}, pixels));
  const auto changed = make_dataset(fx.config("train"))->fingerprint();
  EXPECT_NE(changed, train);
  auto labels = fx.labels;
  labels[0] = (labels[0] + 1) % 10;
  spew(fx.dir.path() / "train-images-idx3-ubyte", idx_bytes({6, 3, 4}, fx.pixels));
  spew(fx.dir.path() / "train-labels-idx1-ubyte", idx_bytes({6}, labels));
  const auto relabelled = make_dataset(fx.config("train"))->fingerprint();
  EXPECT_NE(relabelled, train);
  EXPECT_NE(relabelled, changed);
  auto unlabelled = fx.config("train");
  unlabelled.class_labels = false;
  EXPECT_NE(make_dataset(unlabelled)->fingerprint(), relabelled);
}

TEST(DataIdx, ImageSizeChannelsLabelsAndLimit) {
  IdxFixture fx;
  auto cfg = fx.config("train");
  cfg.image_size = 2;
  cfg.channels = 3;
  cfg.limit = 4;
  const auto ds = make_dataset(cfg);
  EXPECT_EQ(ds->size(), 4);
  EXPECT_EQ(ds->shape(), (std::vector<int64_t>{3, 2, 2}));
  const auto img = torch::tensor(std::vector<int64_t>(fx.pixels.begin() + 2 * 12, fx.pixels.begin() + 3 * 12))
                       .to(torch::kUInt8)
                       .view({1, 3, 4});
  const auto expected = reference_resize(img, 2).expand({3, 2, 2});
  EXPECT_LT((ds->get(2).x - expected).abs().max().item<float>(), 2e-5);
  EXPECT_THROW(ds->get(4), std::out_of_range);
  cfg.class_labels = false;
  cfg.limit = 0;
  fs::remove(fx.dir.path() / "train-labels-idx1-ubyte");  // not needed without labels
  const auto unlabelled = make_dataset(cfg);
  EXPECT_EQ(unlabelled->num_classes(), 0);
  EXPECT_EQ(unlabelled->get(0).label, -1);
}

TEST(DataIdx, BadFilesAreNamed) {
  IdxFixture fx;
  const auto images = fx.dir.path() / "train-images-idx3-ubyte";
  const auto labels = fx.dir.path() / "train-labels-idx1-ubyte";
  const std::string good = slurp(images);
  auto load = [&] { make_dataset(fx.config("train")); };

  spew(images, good.substr(0, good.size() - 1));
  expect_error(load, {images.string(), "truncated", "6x3x4"});
  spew(images, good + "xx");
  expect_error(load, {images.string(), "2 bytes more"});
  std::string bad_magic = good;
  bad_magic[0] = 0x1f;
  spew(images, bad_magic);
  expect_error(load, {images.string(), "magic"});
  std::string bad_type = good;
  bad_type[2] = 0x0d;  // float elements
  spew(images, bad_type);
  expect_error(load, {images.string(), "0x0d"});
  spew(images, good.substr(0, 10));
  expect_error(load, {images.string(), "header"});
  spew(images, idx_bytes({6, 12}, fx.pixels));
  expect_error(load, {images.string(), "3 dimensions"});
  spew(images, good);

  spew(labels, idx_bytes({5}, std::vector<uint8_t>(fx.labels.begin(), fx.labels.begin() + 5)));
  expect_error(load, {labels.string(), "5 labels", "6 images"});
  auto wrong = fx.labels;
  wrong[3] = 10;
  spew(labels, idx_bytes({6}, wrong));
  expect_error(load, {labels.string(), "label 10", "example 3"});

  // A truncated gzip stream and a corrupt one.
  const auto gz = fx.dir.path() / "t10k-images-idx3-ubyte.gz";
  const std::string gzgood = slurp(gz);
  spew(gz, gzgood.substr(0, gzgood.size() / 2));
  expect_error([&] { make_dataset(fx.config("test")); }, {gz.string(), "truncated"});
  std::string gzbad = gzgood;
  for (size_t i = 12; i < 20; ++i) gzbad[i] = static_cast<char>(0xff);
  spew(gz, gzbad);
  expect_error([&] { make_dataset(fx.config("test")); }, {gz.string(), "gzip"});

  fs::remove(gz);
  expect_error([&] { make_dataset(fx.config("test")); }, {fx.dir.str(), "t10k-images-idx3-ubyte.gz"});
  auto cfg = fx.config("validation");
  expect_error([&] { make_dataset(cfg); }, {"data.split", "validation", "train, test"});
}

// Hostile files (issue 9). Dimensions whose product wraps 64 bits (65536 x 2^24 x 2^24 = 2^72,
// 0 mod 2^64) would pass the size check with no data at all; a gzip stream far longer than its
// header says is refused as soon as it passes that size, not after filling memory.
TEST(DataIdx, WrappingDimensionsAndGzipBombsAreRefusedNamingTheFile) {
  IdxFixture fx;
  const auto images = fx.dir.path() / "train-images-idx3-ubyte";
  spew(images, idx_bytes({65536, 1u << 24, 1u << 24}, {}));
  auto unlabelled = fx.config("train");
  unlabelled.class_labels = false;  // so that nothing else is refused first
  expect_error([&] { make_dataset(unlabelled); }, {images.string(), "65536x16777216x16777216", "2^40"});
  const auto gz = fx.dir.path() / "t10k-images-idx3-ubyte.gz";
  spew_gz(gz, idx_bytes({6, 3, 4}, fx.pixels) + std::string(16 << 20, '\0'));
  expect_error([&] { make_dataset(fx.config("test")); }, {gz.string(), "decompresses to more than"});
  spew_gz(gz, idx_bytes({6, 3, 4}, fx.pixels) + "xx");  // a few stray bytes keep the exact message
  expect_error([&] { make_dataset(fx.config("test")); }, {gz.string(), "2 bytes more"});
}

TEST(FileBytes, GunzipStopsAtItsLimit) {
  test::TempDir dir;
  std::string data;
  for (int i = 0; i < 100000; ++i) data += static_cast<char>('a' + i % 7);
  spew_gz(dir.path() / "x.gz", data);
  const std::string gz = slurp(dir.path() / "x.gz");
  EXPECT_EQ(gunzip(gz, "x.gz"), data);
  EXPECT_EQ(gunzip(gz, "x.gz", data.size()), data);
  expect_error([&] { gunzip(gz, "x.gz", data.size() - 1); }, {"'x.gz'", "more than 99999 bytes"});
  EXPECT_EQ(gunzip_head(gz, "x.gz", 10), data.substr(0, 10));
  EXPECT_EQ(gunzip_head(gz, "x.gz", 1 << 20), data);  // a shorter stream: all of it
}

// The real Fashion-MNIST (Debian's dataset-fashion-mnist), when installed.
TEST(DataIdx, RealFashionMnist) {
  REQUIRE_FASHION_MNIST();
  DataConfig cfg;
  for (const std::string split : {"train", "test"}) {
    cfg.split = split;
    const auto ds = make_dataset(cfg);
    const int64_t n = split == "train" ? 60000 : 10000;
    ASSERT_EQ(ds->size(), n);
    EXPECT_EQ(ds->num_classes(), 10);
    EXPECT_EQ(ds->shape(), (std::vector<int64_t>{1, 28, 28}));
    // The published class balance: exactly 6000 (train) / 1000 (test) per class.
    std::vector<int64_t> hist(10, 0);
    float lo = 1, hi = -1;
    for (int64_t i = 0; i < n; ++i) {
      const auto e = ds->get(i);
      ASSERT_GE(e.label, 0);
      ASSERT_LT(e.label, 10);
      ++hist[e.label];
      if (i < 200) {
        lo = std::min(lo, e.x.min().item<float>());
        hi = std::max(hi, e.x.max().item<float>());
        // Every value lies on the byte lattice k / 127.5 - 1.
        const auto k = (e.x.to(torch::kFloat64) + 1.0) * 127.5;
        ASSERT_LT((k - k.round()).abs().max().item<double>(), 1e-4);
      }
    }
    for (int c = 0; c < 10; ++c) EXPECT_EQ(hist[c], n / 10) << split << " class " << c;
    EXPECT_EQ(lo, -1.0f);            // black background pixels
    EXPECT_EQ(hi, 1.0f);             // some pixel is 255
    EXPECT_EQ(ds->get(0).label, 9);  // both splits start with an ankle boot
  }
  cfg.split = "test";
  cfg.image_size = 32;
  const auto ds32 = make_dataset(cfg);
  EXPECT_EQ(ds32->shape(), (std::vector<int64_t>{1, 32, 32}));
  LoaderOptions o;
  o.batch_size = 64;
  DataLoader loader(ds32, o);
  const auto b = loader.next();
  EXPECT_EQ(b.x.sizes().vec(), (std::vector<int64_t>{64, 1, 32, 32}));
  EXPECT_GE(b.x.min().item<float>(), -1.0f);
  EXPECT_LE(b.x.max().item<float>(), 1.0f);
}

// ---------------------------------------------------------------------------------------------
// CIFAR-10 binary batches

namespace {
uint8_t cifar_pixel(int64_t file, int64_t rec, int64_t c, int64_t y, int64_t x) {
  return static_cast<uint8_t>((c * 50 + y * 3 + x + file * 7 + rec * 13) % 256);
}
std::string cifar_file(int64_t file, int64_t records) {
  std::string b;
  for (int64_t r = 0; r < records; ++r) {
    b.push_back(static_cast<char>((file * 2 + r) % 10));
    for (int64_t c = 0; c < 3; ++c)
      for (int64_t y = 0; y < 32; ++y)
        for (int64_t x = 0; x < 32; ++x) b.push_back(static_cast<char>(cifar_pixel(file, r, c, y, x)));
  }
  return b;
}
}  // namespace

TEST(DataCifar10, ReadsRecordsOfEveryBatch) {
  test::TempDir dir;
  const auto sub = dir.path() / "cifar-10-batches-bin";
  for (int f = 1; f <= 5; ++f) spew(sub / ("data_batch_" + std::to_string(f) + ".bin"), cifar_file(f, 2));
  spew(sub / "test_batch.bin", cifar_file(0, 3));
  DataConfig cfg;
  cfg.dataset = DatasetKind::Cifar10;
  cfg.path = dir.str();  // the cifar-10-batches-bin subdirectory is found
  const auto train = make_dataset(cfg);
  ASSERT_EQ(train->size(), 10);
  EXPECT_EQ(train->num_classes(), 10);
  EXPECT_EQ(train->shape(), (std::vector<int64_t>{3, 32, 32}));
  for (int64_t i = 0; i < 10; ++i) {
    const int64_t file = 1 + i / 2, rec = i % 2;
    const auto e = train->get(i);
    EXPECT_EQ(e.label, (file * 2 + rec) % 10);
    auto a = e.x.accessor<float, 3>();
    for (auto [c, y, x] : {std::array<int64_t, 3>{0, 0, 0}, {1, 5, 31}, {2, 31, 7}, {0, 17, 9}})
      EXPECT_EQ(a[c][y][x], unit(cifar_pixel(file, rec, c, y, x))) << i;
  }
  cfg.split = "test";
  cfg.path = sub.string();
  cfg.image_size = 16;
  cfg.channels = 1;
  const auto test = make_dataset(cfg);
  ASSERT_EQ(test->size(), 3);
  EXPECT_EQ(test->shape(), (std::vector<int64_t>{1, 16, 16}));
  // A 2x downscale of the luma, computed independently.
  std::string rec = cifar_file(0, 3).substr(2 * kCifarRecordBytes + 1, 3072);
  const auto rgb = torch::from_blob(rec.data(), {3, 32, 32}, torch::kUInt8).to(torch::kFloat64);
  const auto luma = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]).unsqueeze(0).unsqueeze(0);
  const auto ref = F::interpolate(luma, F::InterpolateFuncOptions()
                                            .size(std::vector<int64_t>{16, 16})
                                            .mode(torch::kBilinear)
                                            .align_corners(false)
                                            .antialias(true)) /
                       127.5 -
                   1.0;
  EXPECT_LT((test->get(2).x.to(torch::kFloat64) - ref.squeeze(0)).abs().max().item<double>(), 1e-4);
  // A single file as the path.
  cfg.path = (sub / "data_batch_3.bin").string();
  EXPECT_EQ(make_dataset(cfg)->size(), 2);
}

TEST(DataCifar10, BadFilesAreNamed) {
  test::TempDir dir;
  for (int f = 1; f <= 5; ++f) spew(dir.path() / ("data_batch_" + std::to_string(f) + ".bin"), cifar_file(f, 2));
  DataConfig cfg;
  cfg.dataset = DatasetKind::Cifar10;
  cfg.path = dir.str();
  EXPECT_EQ(make_dataset(cfg)->size(), 10);
  const auto third = dir.path() / "data_batch_3.bin";
  spew(third, cifar_file(3, 2) + "12345");
  expect_error([&] { make_dataset(cfg); }, {third.string(), "3073", "5 bytes over"});
  std::string bad_label = cifar_file(3, 2);
  bad_label[kCifarRecordBytes] = 12;
  spew(third, bad_label);
  expect_error([&] { make_dataset(cfg); }, {third.string(), "record 1", "label 12"});
  spew(third, "");
  expect_error([&] { make_dataset(cfg); }, {third.string(), "0 bytes"});
  fs::remove(third);
  expect_error([&] { make_dataset(cfg); }, {"data_batch_3.bin", "missing"});
  cfg.split = "test";
  expect_error([&] { make_dataset(cfg); }, {"test_batch.bin"});
}

// ---------------------------------------------------------------------------------------------
// Image folder

namespace {
struct FolderFixture {
  test::TempDir dir;
  torch::Tensor a, b, c, d;  // the pixels written
  FolderFixture() {
    a = random_u8({3, 6, 8}, 21);  // RGB, wide: center crop keeps columns 1..6
    b = random_u8({1, 5, 5}, 22);  // grey
    c = random_u8({4, 4, 4}, 23);  // RGBA: alpha dropped
    d = random_u8({3, 4, 4}, 24);  // BMP
    fs::create_directories(dir.path() / "cat");
    fs::create_directories(dir.path() / "dog" / "sub");
    save_png((dir.path() / "cat" / "a.png").string(), a);
    save_png((dir.path() / "cat" / "b.png").string(), b);
    save_png((dir.path() / "dog" / "sub" / "c.PNG").string(), c);
    spew(dir.path() / "dog" / "d.bmp", bmp_bytes(d));
    spew(dir.path() / "dog" / "notes.txt", "not an image, and not an image extension");
  }
};
}  // namespace

TEST(DataImageFolder, ClassSubfoldersGeometryAndChannels) {
  FolderFixture fx;
  DataConfig cfg;
  cfg.dataset = DatasetKind::ImageFolder;
  cfg.path = fx.dir.str();
  cfg.image_size = 4;
  cfg.channels = 3;
  const auto ds = make_dataset(cfg);
  auto folder = std::dynamic_pointer_cast<ImageFolderDataset>(ds);
  ASSERT_TRUE(folder);
  ASSERT_EQ(ds->size(), 4);
  EXPECT_EQ(folder->class_names(), (std::vector<std::string>{"cat", "dog"}));
  EXPECT_EQ(ds->num_classes(), 2);
  EXPECT_EQ(ds->shape(), (std::vector<int64_t>{3, 4, 4}));
  // Sorted paths: cat/a.png, cat/b.png, dog/d.bmp, dog/sub/c.PNG.
  EXPECT_EQ(fs::path(folder->file(2)).filename(), "d.bmp");
  const std::vector<int64_t> labels = {0, 0, 1, 1};
  const std::vector<torch::Tensor> expected = {reference_resize(fx.a, 4), reference_resize(fx.b, 4).expand({3, 4, 4}),
                                               reference_resize(fx.d, 4), reference_resize(fx.c.narrow(0, 0, 3), 4)};
  for (int64_t i = 0; i < 4; ++i) {
    const auto e = ds->get(i);
    EXPECT_EQ(e.label, labels[i]);
    EXPECT_LT((e.x - expected[i]).abs().max().item<float>(), 2e-5) << folder->file(i);
  }
  // Native geometry: the first image's shorter side and channels; grey converts to RGB.
  cfg.image_size = 0;
  cfg.channels = 0;
  const auto native = make_dataset(cfg);
  EXPECT_EQ(native->shape(), (std::vector<int64_t>{3, 6, 6}));
  EXPECT_LT((native->get(0).x - reference_resize(fx.a, 6)).abs().max().item<float>(), 1e-6);
  // No labels.
  cfg.class_labels = false;
  cfg.channels = 1;
  const auto unl = make_dataset(cfg);
  EXPECT_EQ(unl->num_classes(), 0);
  EXPECT_EQ(unl->get(3).label, -1);
  EXPECT_EQ(unl->shape(), (std::vector<int64_t>{1, 6, 6}));
  // With labels on, an image at the top level next to class folders is an error.
  cfg.class_labels = true;
  save_png((fx.dir.path() / "top.png").string(), fx.b);
  expect_error([&] { make_dataset(cfg); }, {"top.png", "class subfolder"});
  cfg.class_labels = false;
  EXPECT_EQ(make_dataset(cfg)->size(), 5);
  // Names to ignore are matched on the file name, in any subfolder.
  ImageFolderOptions opt;
  opt.image.labels = false;
  opt.ignore_names = {"top.png", "d.bmp"};
  ImageFolderDataset some(fx.dir.str(), opt);
  ASSERT_EQ(some.size(), 3);
  for (int64_t i = 0; i < 3; ++i) {
    const auto name = fs::path(some.file(i)).filename().string();
    EXPECT_TRUE(name != "top.png" && name != "d.bmp") << name;
  }
}

// A file replaced after the folder was listed is refused when it is read, naming it, and the
// fingerprint (relative paths and sizes) does not depend on where the folder is.
TEST(DataImageFolder, AFileReplacedUnderTheDatasetIsRefused) {
  FolderFixture fx;
  DataConfig cfg;
  cfg.dataset = DatasetKind::ImageFolder;
  cfg.path = fx.dir.str();
  const auto ds = make_dataset(cfg);
  const auto fp = ds->fingerprint();
  test::TempDir copy;
  fs::copy(fx.dir.path(), copy.path(), fs::copy_options::recursive);
  cfg.path = copy.str();
  EXPECT_EQ(make_dataset(cfg)->fingerprint(), fp);
  for (int64_t i = 0; i < ds->size(); ++i) ds->get(i);
  auto folder = std::dynamic_pointer_cast<ImageFolderDataset>(ds);
  ASSERT_TRUE(folder);
  const std::string victim = folder->file(1), other = folder->file(0);
  save_png(victim, random_u8({3, 9, 9}, 99));  // another size
  expect_error([&] { ds->get(1); }, {victim, "changed"});
  fs::remove(other);
  expect_error([&] { ds->get(0); }, {other, "gone"});
  EXPECT_NO_THROW(ds->get(2));
  cfg.path = fx.dir.str();
  EXPECT_NE(make_dataset(cfg)->fingerprint(), fp);
}

TEST(DataImageFolder, BadFilesErrorOrAreSkippedAndCounted) {
  test::TempDir dir;
  const auto good = random_u8({3, 24, 24}, 31);
  save_png((dir.path() / "b_good1.png").string(), good);
  save_png((dir.path() / "c_good2.png").string(), good.flip({2}));
  const std::string png = encode_png(random_u8({3, 64, 64}, 32));
  spew(dir.path() / "d_truncated.png", png.substr(0, png.size() / 2));  // header intact, data cut
  DataConfig cfg;
  cfg.dataset = DatasetKind::ImageFolder;
  cfg.path = dir.str();
  cfg.image_size = 8;
  {
    // The header check passes; decoding the truncated file fails in get(), naming it.
    const auto ds = make_dataset(cfg);
    ASSERT_EQ(ds->size(), 3);
    EXPECT_NO_THROW(ds->get(0));
    expect_error([&] { ds->get(2); }, {"d_truncated.png"});
  }
  spew(dir.path() / "a_garbage.jpg", "definitely not a JPEG");
  expect_error([&] { make_dataset(cfg); }, {"a_garbage.jpg", "not a decodable image"});

  cfg.skip_bad_files = true;
  const auto ds = make_dataset(cfg);
  auto folder = std::dynamic_pointer_cast<ImageFolderDataset>(ds);
  ASSERT_TRUE(folder);
  EXPECT_EQ(ds->size(), 2);
  EXPECT_EQ(folder->bad_files(), 2);
  ASSERT_EQ(folder->bad_file_paths().size(), 2u);
  EXPECT_NE(folder->bad_file_paths()[0].find("a_garbage.jpg"), std::string::npos);
  EXPECT_NE(folder->bad_file_paths()[1].find("d_truncated.png"), std::string::npos);
  EXPECT_NE(ds->describe().find("2 undecodable"), std::string::npos) << ds->describe();
  EXPECT_LT((ds->get(1).x - reference_resize(good.flip({2}), 8)).abs().max().item<float>(), 2e-5);

  test::TempDir empty;
  cfg.path = empty.str();
  expect_error([&] { make_dataset(cfg); }, {empty.str(), "no images"});
  cfg.path = (empty.path() / "missing").string();
  expect_error([&] { make_dataset(cfg); }, {"missing", "not a directory"});
}

// ---------------------------------------------------------------------------------------------
// Toy distributions

namespace {
struct Moments {
  double mean_x, mean_y, var_x, var_y;
};
Moments moments(const torch::Tensor& x) {
  const auto d = x.to(torch::kFloat64);
  const auto m = d.mean(0), v = d.var(0);
  return {m[0].item<double>(), m[1].item<double>(), v[0].item<double>(), v[1].item<double>()};
}
constexpr double kPi = 3.14159265358979323846;
}  // namespace

TEST(DataToy, StandardizedMomentsAndDeterminism) {
  const int64_t n = 20000;
  for (ToyKind k : {ToyKind::SwissRoll, ToyKind::TwoMoons, ToyKind::EightGaussians, ToyKind::Checkerboard}) {
    const auto x = sample_toy(k, n, 1);
    ASSERT_EQ(x.sizes().vec(), (std::vector<int64_t>{n, 2}));
    ASSERT_EQ(x.scalar_type(), torch::kFloat32);
    const auto m = moments(x);
    // Per-coordinate std is at most ~1.23 (two_moons x), so the mean's standard error is
    // < 0.009 and the mean variance's < 0.015: bounds of ~5 standard errors.
    EXPECT_NEAR(m.mean_x, 0.0, 0.045) << to_string(k);
    EXPECT_NEAR(m.mean_y, 0.0, 0.045) << to_string(k);
    EXPECT_NEAR((m.var_x + m.var_y) / 2, 1.0, 0.06) << to_string(k);
    EXPECT_TRUE(torch::equal(x, sample_toy(k, n, 1)));
    EXPECT_FALSE(torch::equal(x, sample_toy(k, n, 2)));
    EXPECT_TRUE(torch::equal(sample_toy(k, 10, 1), x.narrow(0, 0, 10)));  // a prefix of the stream
  }
  // Checkerboard and 8 gaussians are isotropic: each coordinate has variance 1 on its own.
  for (ToyKind k : {ToyKind::EightGaussians, ToyKind::Checkerboard}) {
    const auto m = moments(sample_toy(k, n, 3));
    EXPECT_NEAR(m.var_x, 1.0, 0.06) << to_string(k);
    EXPECT_NEAR(m.var_y, 1.0, 0.06) << to_string(k);
  }
}

TEST(DataToy, EightGaussiansSitOnTheirCentres) {
  const int64_t n = 20000;
  const auto s = sample_toy_labeled(ToyKind::EightGaussians, n, 4);
  EXPECT_TRUE(torch::equal(s.x, sample_toy(ToyKind::EightGaussians, n, 4)));
  const double r = 1.0 / std::sqrt(0.5 + 1.0 / 64), sigma = r / 8;
  auto x = s.x.accessor<float, 2>();
  auto lab = s.labels.accessor<int64_t, 1>();
  std::vector<int64_t> count(8, 0);
  int64_t nearest_is_label = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = lab[i];
    ASSERT_GE(k, 0);
    ASSERT_LT(k, 8);
    ++count[k];
    const double dx = x[i][0] - r * std::cos(k * kPi / 4), dy = x[i][1] - r * std::sin(k * kPi / 4);
    // P(|N(0, s^2 I_2)| > 6s) = exp(-18) ~ 1.5e-8 per point.
    ASSERT_LT(std::hypot(dx, dy), 6 * sigma) << i;
    int64_t best = 0;
    double best_d = 1e9;
    for (int64_t j = 0; j < 8; ++j) {
      const double d = std::hypot(x[i][0] - r * std::cos(j * kPi / 4), x[i][1] - r * std::sin(j * kPi / 4));
      if (d < best_d) best_d = d, best = j;
    }
    nearest_is_label += best == k;
  }
  // Neighbouring centres are 3.06 sigma from the bisector: ~0.2% land nearer another centre.
  EXPECT_GT(nearest_is_label, n * 99 / 100);
  for (int64_t j = 0; j < 8; ++j) EXPECT_NEAR(count[j] / double(n), 0.125, 0.012) << j;  // sd 0.0023
}

TEST(DataToy, CheckerboardTwoMoonsAndSwissRollStructure) {
  const int64_t n = 20000;
  {  // Checkerboard: all points in the squares with even (col + row), inside [-sqrt 3, sqrt 3]^2.
    const auto x = sample_toy(ToyKind::Checkerboard, n, 5);
    const double scale = 2.0 / std::sqrt(3.0);
    auto a = x.accessor<float, 2>();
    int64_t checked = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double u = a[i][0] * scale, v = a[i][1] * scale;
      ASSERT_LE(std::abs(u), 2.0 + 1e-5);
      ASSERT_LE(std::abs(v), 2.0 + 1e-5);
      // Float rounding may move a point across a grid line; ignore those within 1e-4 of one.
      if (std::abs(u - std::round(u)) < 1e-4 || std::abs(v - std::round(v)) < 1e-4) continue;
      ++checked;
      ASSERT_EQ(((static_cast<int64_t>(std::floor(u)) + static_cast<int64_t>(std::floor(v))) % 2 + 2) % 2, 0)
          << u << "," << v;
    }
    EXPECT_GT(checked, n * 99 / 100);
  }
  {  // Two moons: every point within 6 noise sds of its own arc.
    const auto s = sample_toy_labeled(ToyKind::TwoMoons, n, 6);
    const auto norm = toy_normalization(ToyKind::TwoMoons);
    auto a = s.x.accessor<float, 2>();
    auto lab = s.labels.accessor<int64_t, 1>();
    int64_t inner = 0;
    for (int64_t i = 0; i < n; ++i) {
      double px = a[i][0] * norm.scale + norm.mean_x, py = a[i][1] * norm.scale + norm.mean_y;
      if (lab[i] == 1) {  // inner moon: the outer one mirrored through (0.5, 0.25)
        px = 1.0 - px;
        py = 0.5 - py;
        ++inner;
      }
      // Distance to the upper unit half circle.
      const double d =
          py >= 0 ? std::abs(std::hypot(px, py) - 1.0) : std::min(std::hypot(px - 1, py), std::hypot(px + 1, py));
      ASSERT_LT(d, 0.6) << i;
    }
    EXPECT_NEAR(inner / double(n), 0.5, 0.02);
  }
  {  // Swiss roll: the radius tracks the angle, r ~ t with theta = t mod 2 pi.
    const auto x = sample_toy(ToyKind::SwissRoll, n, 7);
    const auto norm = toy_normalization(ToyKind::SwissRoll);
    auto a = x.accessor<float, 2>();
    int64_t on_spiral = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double px = a[i][0] * norm.scale + norm.mean_x, py = a[i][1] * norm.scale + norm.mean_y;
      const double r = std::hypot(px, py), theta = std::atan2(py, px);
      ASSERT_GT(r, 1.5 * kPi - 3.0);
      ASSERT_LT(r, 4.5 * kPi + 3.0);
      const double t = theta + 2 * kPi * std::round((r - theta) / (2 * kPi));
      on_spiral += std::abs(r - t) < 1.5;
    }
    // Noise sd 0.5: ~99.7% within 1.5 of the curve; a structureless annulus would give ~48%.
    EXPECT_GT(on_spiral, n * 97 / 100);
  }
}

TEST(DataToy, DatasetFromConfig) {
  DataConfig cfg;
  cfg.dataset = DatasetKind::Toy2d;
  cfg.toy = ToyKind::EightGaussians;
  cfg.toy_size = 500;
  const auto ds = make_dataset(cfg, 9);
  ASSERT_EQ(ds->size(), 500);
  EXPECT_EQ(ds->shape(), (std::vector<int64_t>{2}));
  EXPECT_EQ(ds->num_classes(), 8);
  auto toy = std::dynamic_pointer_cast<Toy2dDataset>(ds);
  ASSERT_TRUE(toy);
  EXPECT_TRUE(torch::equal(ds->get(17).x, toy->points()[17]));
  EXPECT_TRUE(torch::equal(make_dataset(cfg, 9)->get(17).x, ds->get(17).x));
  // The training points, the test split and evaluation samples are different draws.
  EXPECT_FALSE(torch::equal(toy->points(), sample_toy(ToyKind::EightGaussians, 500, 9)));
  cfg.split = "test";
  EXPECT_FALSE(torch::equal(make_dataset(cfg, 9)->get(17).x, ds->get(17).x));
  cfg.class_labels = false;
  EXPECT_EQ(make_dataset(cfg, 9)->get(0).label, -1);
  cfg.toy_size = 0;
  EXPECT_THROW(make_dataset(cfg), UsageError);
}

// ---------------------------------------------------------------------------------------------
// Loader

namespace {
// Example i is x = [i, i + 0.25, i + 0.5] as a [1,1,3] image (flips are visible), label i.
// Optionally sleeps a pseudo-random time to scramble worker timing, or throws at one index.
class CountingDataset : public Dataset {
 public:
  explicit CountingDataset(int64_t n, bool jitter = false, int64_t throw_at = -1)
      : n_(n), jitter_(jitter), throw_at_(throw_at) {}
  int64_t size() const override { return n_; }
  Example get(int64_t i) const override {
    check_index(i);
    if (i == throw_at_) throw std::runtime_error("cannot load example " + std::to_string(i));
    if (jitter_) std::this_thread::sleep_for(std::chrono::microseconds((i * 7919) % 400));
    return {torch::tensor({float(i), i + 0.25f, i + 0.5f}).view({1, 1, 3}), i};
  }
  std::vector<int64_t> shape() const override { return {1, 1, 3}; }

 private:
  int64_t n_;
  bool jitter_;
  int64_t throw_at_;
};

std::vector<Batch> take(DataLoader& l, int64_t k) {
  std::vector<Batch> out;
  for (int64_t i = 0; i < k; ++i) out.push_back(l.next());
  return out;
}

void expect_same(const std::vector<Batch>& a, const std::vector<Batch>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::equal(a[i].x, b[i].x)) << "batch " << i;
    EXPECT_TRUE(torch::equal(a[i].y, b[i].y)) << "batch " << i;
  }
}

std::vector<int64_t> ids(const std::vector<Batch>& bs) {
  std::vector<int64_t> out;
  for (const auto& b : bs)
    for (int64_t i = 0; i < b.y.size(0); ++i) out.push_back(b.y[i].item<int64_t>());
  return out;
}
}  // namespace

TEST(DataLoader, SameSeedSameBatchesWhateverTheThreads) {
  auto ds = std::make_shared<CountingDataset>(40, /*jitter=*/true);
  LoaderOptions o;
  o.batch_size = 6;
  o.seed = 11;
  o.random_flip = true;
  o.workers = 0;
  DataLoader sync(ds, o);
  const auto ref = take(sync, 20);  // 3+ epochs of 6 batches
  for (int64_t workers : {1, 4}) {
    o.workers = workers;
    o.prefetch = workers == 1 ? 1 : 3;
    DataLoader threaded(ds, o);
    expect_same(take(threaded, 20), ref);
  }
  o.seed = 12;
  DataLoader other(ds, o);
  EXPECT_FALSE(torch::equal(other.next().y, ref[0].y));
}

TEST(DataLoader, EpochsArePermutationsAndPositionsAdvance) {
  auto ds = std::make_shared<CountingDataset>(23);
  LoaderOptions o;
  o.batch_size = 5;
  o.drop_last = false;
  o.seed = 3;
  DataLoader l(ds, o);
  EXPECT_EQ(l.batches_per_epoch(), 5);
  EXPECT_EQ(l.position(), (LoaderPosition{0, 0}));
  std::vector<std::vector<int64_t>> epochs;
  for (int e = 0; e < 3; ++e) {
    std::vector<Batch> bs;
    for (int64_t k = 0; k < 5; ++k) {
      EXPECT_EQ(l.position(), (LoaderPosition{e, 5 * k}));
      bs.push_back(l.next());
      EXPECT_EQ(bs.back().y.size(0), k < 4 ? 5 : 3);  // the short last batch
      // Examples are untouched (no flip): x = [i, i + .25, i + .5].
      const auto y = bs.back().y.to(torch::kFloat32);
      EXPECT_TRUE(torch::equal(bs.back().x.select(3, 0).flatten(), y));
    }
    auto v = ids(bs);
    EXPECT_EQ(v, l.epoch_indices(e));
    std::sort(v.begin(), v.end());
    std::vector<int64_t> all(23);
    std::iota(all.begin(), all.end(), 0);
    EXPECT_EQ(v, all) << "epoch " << e;
    epochs.push_back(ids(bs));
  }
  EXPECT_EQ(l.position(), (LoaderPosition{3, 0}));
  EXPECT_NE(epochs[0], epochs[1]);
  EXPECT_NE(epochs[1], epochs[2]);
  // No shuffle: the identity order; drop_last: 4 full batches per epoch, the tail skipped.
  o.shuffle = false;
  o.drop_last = true;
  DataLoader seq(ds, o);
  EXPECT_EQ(seq.batches_per_epoch(), 4);
  const auto bs = take(seq, 5);
  EXPECT_EQ(ids({bs[0]}), (std::vector<int64_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(ids({bs[4]}), (std::vector<int64_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(seq.position(), (LoaderPosition{1, 5}));
}

TEST(DataLoader, ResumeFromPositionContinuesIdentically) {
  auto ds = std::make_shared<CountingDataset>(50);
  LoaderOptions o;
  o.batch_size = 8;
  o.seed = 5;
  o.random_flip = true;
  o.workers = 3;
  o.prefetch = 2;
  DataLoader a(ds, o);
  take(a, 9);  // 6 batches per epoch: into epoch 1
  const LoaderPosition pos = a.position();
  EXPECT_EQ(pos, (LoaderPosition{1, 24}));
  const auto continued = take(a, 10);
  DataLoader b(ds, o, pos);
  expect_same(take(b, 10), continued);
  // seek() on a loader that has already run (and prefetched) elsewhere.
  DataLoader c(ds, o);
  take(c, 3);
  c.seek(pos);
  EXPECT_EQ(c.position(), pos);
  expect_same(take(c, 10), continued);
  // A position past the epoch's end is refused; the end itself is the next epoch's start.
  EXPECT_THROW(c.seek({0, 51}), UsageError);
  c.seek({2, 50});
  EXPECT_EQ(c.position(), (LoaderPosition{3, 0}));
}

TEST(DataLoader, RanksTakeDisjointShardsCoveringTheEpoch) {
  auto ds = std::make_shared<CountingDataset>(51);
  for (bool drop_last : {true, false}) {
    LoaderOptions o;
    o.batch_size = 5;
    o.seed = 8;
    o.drop_last = drop_last;
    o.world_size = 2;
    std::vector<std::vector<int64_t>> shard(2);
    for (int64_t r = 0; r < 2; ++r) {
      o.rank = r;
      DataLoader l(ds, o);
      EXPECT_EQ(l.examples_per_epoch(), drop_last ? 25 : 26);
      shard[r] = ids(take(l, l.batches_per_epoch()));
      if (drop_last) shard[r].resize(25);  // 5 full batches of 5
      EXPECT_EQ(shard[r], l.epoch_indices(0));
    }
    std::set<int64_t> s0(shard[0].begin(), shard[0].end()), s1(shard[1].begin(), shard[1].end());
    std::set<int64_t> both;
    std::set_intersection(s0.begin(), s0.end(), s1.begin(), s1.end(), std::inserter(both, both.begin()));
    std::set<int64_t> all(s0);
    all.insert(s1.begin(), s1.end());
    if (drop_last) {
      EXPECT_TRUE(both.empty());
      EXPECT_EQ(all.size(), 50u);  // one example of 51 dropped
    } else {
      EXPECT_EQ(both.size(), 1u);  // one wrapped-around example pads rank 1
      EXPECT_EQ(all.size(), 51u);
    }
    // The shards interleave the single-process order of the same seed.
    LoaderOptions one = o;
    one.world_size = 1;
    one.rank = 0;
    DataLoader single(ds, one);
    const auto order = single.epoch_indices(0);
    for (int64_t j = 0; j < 25; ++j) {
      EXPECT_EQ(shard[0][j], order[2 * j]);
      EXPECT_EQ(shard[1][j], order[2 * j + 1]);
    }
  }
  LoaderOptions bad;
  bad.batch_size = 4;
  bad.world_size = 2;
  bad.rank = 2;
  EXPECT_THROW(DataLoader(ds, bad), UsageError);
}

TEST(DataLoader, FlipsAreAFunctionOfSeedEpochAndPosition) {
  auto ds = std::make_shared<CountingDataset>(64);
  LoaderOptions o;
  o.batch_size = 8;
  o.seed = 21;
  o.random_flip = true;
  o.workers = 2;
  DataLoader l(ds, o);
  int64_t flipped = 0, total = 0;
  for (int64_t k = 0; k < 24; ++k) {
    const LoaderPosition p = l.position();
    const auto b = l.next();
    for (int64_t i = 0; i < 8; ++i) {
      const float id = b.y[i].item<float>();
      const auto row = b.x[i].flatten();
      const bool f = l.flipped(p.epoch, p.offset + i);
      const auto expected = f ? torch::tensor({id + 0.5f, id + 0.25f, id}) : torch::tensor({id, id + 0.25f, id + 0.5f});
      EXPECT_TRUE(torch::equal(row, expected)) << "batch " << k << " item " << i;
      flipped += f;
      ++total;
    }
  }
  EXPECT_NEAR(flipped / double(total), 0.5, 0.1);  // 192 fair coins: sd 0.036
  // Rank 1 of 2 at offset j is position 2j + 1 of the epoch: the same flip as a single process.
  LoaderOptions r1 = o;
  r1.world_size = 2;
  r1.rank = 1;
  DataLoader shard(ds, r1);
  for (int64_t e = 0; e < 2; ++e)
    for (int64_t j = 0; j < 32; ++j) EXPECT_EQ(shard.flipped(e, j), l.flipped(e, 2 * j + 1));
  // Flips need images; toy points are refused.
  DataConfig toy;
  toy.dataset = DatasetKind::Toy2d;
  toy.toy_size = 100;
  EXPECT_THROW(DataLoader(make_dataset(toy), o), UsageError);
}

TEST(DataLoader, WorkerExceptionsAreRethrownInOrder) {
  auto ds = std::make_shared<CountingDataset>(40, false, /*throw_at=*/13);
  LoaderOptions o;
  o.batch_size = 4;
  o.shuffle = false;
  for (int64_t workers : {0, 3}) {
    o.workers = workers;
    DataLoader l(ds, o);
    take(l, 3);  // examples 0..11
    expect_error<std::runtime_error>([&] { l.next(); }, {"cannot load example 13"});
    expect_error<std::runtime_error>([&] { l.next(); }, {"cannot load example 13"});
    EXPECT_EQ(l.position(), (LoaderPosition{0, 12}));
    l.seek({0, 16});  // past the bad batch, the loader works again
    EXPECT_EQ(ids({l.next()}), (std::vector<int64_t>{16, 17, 18, 19}));
  }  // destructors join the workers, some blocked on a full prefetch queue
}

TEST(DataLoader, OptionsAreValidated) {
  auto ds = std::make_shared<CountingDataset>(10);
  LoaderOptions o;
  o.batch_size = 11;
  expect_error([&] { DataLoader l(ds, o); }, {"10 examples", "batch of 11"});
  o.drop_last = false;
  EXPECT_NO_THROW(DataLoader(ds, o));
  o.batch_size = 0;
  EXPECT_THROW(DataLoader(ds, o), UsageError);
  o.batch_size = 2;
  o.prefetch = 0;
  EXPECT_THROW(DataLoader(ds, o), UsageError);
  o.prefetch = 1;
  EXPECT_THROW(DataLoader(ds, o, {-1, 0}), UsageError);
  // Unlabelled datasets give -1 labels.
  DataConfig toy;
  toy.dataset = DatasetKind::Toy2d;
  toy.toy = ToyKind::SwissRoll;
  toy.toy_size = 16;
  LoaderOptions t;
  t.batch_size = 4;
  DataLoader l(make_dataset(toy), t);
  const auto b = l.next();
  EXPECT_EQ(b.x.sizes().vec(), (std::vector<int64_t>{4, 2}));
  EXPECT_TRUE(torch::equal(b.y, torch::full({4}, -1, torch::kInt64)));
}

#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "diffuse/config.h"
#include "diffuse/error.h"
#include "diffuse/eval/fid.h"
#include "diffuse/models/encoder_unet.h"
#include "diffuse/train/checkpoint.h"
#include "diffuse/train/trainer.h"
#include "diffuse/safetensors.h"
#include "test_util.h"

using namespace diffuse;

namespace {

torch::Generator seeded(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

FeatureStats stats_of(const torch::Tensor& mu, const torch::Tensor& sigma) { return {mu, sigma, 1000, {}, {}}; }

torch::Tensor mat2(double a, double b, double c, double d) {
  return torch::tensor({a, b, c, d}, torch::kFloat64).view({2, 2});
}

// Brute-force unbiased MMD^2 with the cubic polynomial kernel, by explicit loops.
double mmd2_loops(const torch::Tensor& X, const torch::Tensor& Y) {
  const int64_t m = X.size(0), d = X.size(1);
  auto x = X.accessor<double, 2>();
  auto y = Y.accessor<double, 2>();
  auto k = [d](auto a, auto b) {
    double dot = 0;
    for (int64_t j = 0; j < d; ++j) dot += a[j] * b[j];
    return std::pow(dot / static_cast<double>(d) + 1.0, 3);
  };
  double sxx = 0, syy = 0, sxy = 0;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < m; ++j) {
      if (i != j) sxx += k(x[i], x[j]), syy += k(y[i], y[j]);
      sxy += k(x[i], y[j]);
    }
  const double md = static_cast<double>(m);
  return sxx / (md * (md - 1)) + syy / (md * (md - 1)) - 2 * sxy / (md * md);
}

}  // namespace

TEST(EvalFid, SelfDistanceIsZero) {
  auto feats = torch::randn({300, 16}, seeded(1), torch::kFloat64) * torch::linspace(0.1, 3.0, 16, torch::kFloat64);
  auto s = feature_stats(feats);
  EXPECT_LT(std::abs(frechet_distance(s, s)), 1e-6);
  EXPECT_GT(frechet_distance(s, feature_stats(feats + 0.1)), 0.0);
}

// Diagonal covariances commute: FID = |mu1 - mu2|^2 + sum_i (sqrt(s1_i) - sqrt(s2_i))^2.
TEST(EvalFid, DiagonalCaseMatchesClosedForm) {
  const std::vector<double> s1 = {0.5, 2.0, 1.0, 4.0, 0.01}, s2 = {1.5, 0.2, 1.0, 9.0, 0.04};
  const std::vector<double> m1 = {0.0, 1.0, -2.0, 0.5, 3.0}, m2 = {1.0, 1.0, 0.0, 0.0, -1.0};
  double expected = 0;
  for (size_t i = 0; i < s1.size(); ++i)
    expected += std::pow(std::sqrt(s1[i]) - std::sqrt(s2[i]), 2) + std::pow(m1[i] - m2[i], 2);
  auto o = torch::TensorOptions().dtype(torch::kFloat64);
  auto a = stats_of(torch::tensor(m1, o), torch::diag(torch::tensor(s1, o)));
  auto b = stats_of(torch::tensor(m2, o), torch::diag(torch::tensor(s2, o)));
  EXPECT_NEAR(frechet_distance(a, b), expected, 1e-12);
  EXPECT_NEAR(frechet_distance(b, a), expected, 1e-12);
}

// Non-commuting 2x2 covariances: tr sqrt(M) for M = S1 S2 from the analytic square root of a
// 2x2 matrix with positive eigenvalues, sqrt(M) = (M + sqrt(det M) I) / sqrt(tr M + 2 sqrt(det M)).
TEST(EvalFid, NonCommuting2x2MatchesAnalyticSquareRoot) {
  auto S1 = mat2(2.0, 0.5, 0.5, 1.0), S2 = mat2(1.0, -0.3, -0.3, 0.5);
  ASSERT_GT((S1.matmul(S2) - S2.matmul(S1)).abs().max().item<double>(), 0.1);  // they do not commute
  auto M = S1.matmul(S2);
  const double det = M.det().item<double>(), tr = M.trace().item<double>();
  const double denom = std::sqrt(tr + 2 * std::sqrt(det));
  auto sqrtM = (M + std::sqrt(det) * torch::eye(2, torch::kFloat64)) / denom;
  ASSERT_LT((sqrtM.matmul(sqrtM) - M).abs().max().item<double>(), 1e-12);  // the truth is right
  const double tr_sqrt = sqrtM.trace().item<double>();
  auto mu1 = torch::tensor({0.3, -0.2}, torch::kFloat64), mu2 = torch::tensor({-0.1, 0.4}, torch::kFloat64);
  const double expected =
      (mu1 - mu2).square().sum().item<double>() + S1.trace().item<double>() + S2.trace().item<double>() - 2 * tr_sqrt;
  EXPECT_NEAR(frechet_distance(stats_of(mu1, S1), stats_of(mu2, S2)), expected, 1e-12);
}

// A larger non-commuting case against the Denman-Beavers iteration for sqrt(S1 S2).
TEST(EvalFid, NonCommutingMatchesDenmanBeavers) {
  const int64_t D = 6;
  auto A = torch::randn({D, D}, seeded(3), torch::kFloat64), B = torch::randn({D, D}, seeded(4), torch::kFloat64);
  auto S1 = A.matmul(A.t()) + 0.1 * torch::eye(D, torch::kFloat64);
  auto S2 = B.matmul(B.t()) + 0.2 * torch::eye(D, torch::kFloat64);
  auto M = S1.matmul(S2);
  auto Y = M.clone(), Z = torch::eye(D, torch::kFloat64);
  for (int i = 0; i < 60; ++i) {
    auto Yn = 0.5 * (Y + torch::inverse(Z));
    Z = 0.5 * (Z + torch::inverse(Y));
    Y = Yn;
  }
  ASSERT_LT((Y.matmul(Y) - M).abs().max().item<double>(), 1e-8 * M.abs().max().item<double>());
  auto mu = torch::zeros({D}, torch::kFloat64);
  const double expected = S1.trace().item<double>() + S2.trace().item<double>() - 2 * Y.trace().item<double>();
  EXPECT_NEAR(frechet_distance(stats_of(mu, S1), stats_of(mu, S2)), expected, 1e-9 * std::abs(expected));
}

// Sample statistics recover a known Gaussian within Monte Carlo tolerance: mean SE
// sqrt(S_ii / N), covariance SE sqrt((S_ii S_jj + S_ij^2) / N); 4.5 SE bounds.
TEST(EvalFid, StatsRecoverKnownGaussian) {
  const int64_t N = 20000;
  auto mu = torch::tensor({1.0, -2.0, 0.5}, torch::kFloat64);
  auto L = torch::tensor({1.0, 0.0, 0.0, 0.5, 2.0, 0.0, -0.3, 0.4, 0.7}, torch::kFloat64).view({3, 3});
  auto S = L.matmul(L.t());
  auto x = mu + torch::randn({N, 3}, seeded(5), torch::kFloat64).matmul(L.t());
  auto s = feature_stats(x.to(torch::kFloat32));
  EXPECT_EQ(s.n, N);
  EXPECT_EQ(s.mu.scalar_type(), torch::kFloat64);
  for (int64_t i = 0; i < 3; ++i) {
    EXPECT_NEAR(s.mu[i].item<double>(), mu[i].item<double>(), 4.5 * std::sqrt(S[i][i].item<double>() / N));
    for (int64_t j = 0; j < 3; ++j) {
      const double se =
          std::sqrt((S[i][i].item<double>() * S[j][j].item<double>() + std::pow(S[i][j].item<double>(), 2)) / N);
      EXPECT_NEAR(s.sigma[i][j].item<double>(), S[i][j].item<double>(), 4.5 * se) << i << "," << j;
    }
  }
  EXPECT_TRUE(torch::equal(s.sigma, s.sigma.t()));
}

// Batches merged by the accumulator equal the two-pass statistics of all features, even with a
// large common offset (where E[x^2] - E[x]^2 would cancel to nothing).
TEST(EvalFid, AccumulatorMatchesTwoPassWithLargeOffset) {
  auto z = torch::randn({250, 4}, seeded(6), torch::kFloat64);
  auto x = z + 1e8;
  FeatureStatsAccumulator acc;
  for (auto [b, e] : {std::pair<int64_t, int64_t>{0, 7}, {7, 100}, {100, 101}, {101, 250}}) acc.add(x.slice(0, b, e));
  auto s = acc.stats();
  auto ref = feature_stats(z);  // centred data: the reference covariance without any offset
  EXPECT_EQ(s.n, 250);
  EXPECT_LT((s.mu - 1e8 - ref.mu).abs().max().item<double>(), 1e-7);
  EXPECT_LT((s.sigma - ref.sigma).abs().max().item<double>(), 1e-6);
  EXPECT_THROW(FeatureStatsAccumulator().stats(), std::invalid_argument);

  // More rows than one chunk (8192): feature_stats merges chunks, same answer as two-pass here.
  auto big = torch::randn({9000, 3}, seeded(12), torch::kFloat64) + 5.0;
  auto bs = feature_stats(big);
  auto c = big - big.mean(0);
  EXPECT_EQ(bs.n, 9000);
  EXPECT_LT((bs.mu - big.mean(0)).abs().max().item<double>(), 1e-12);
  EXPECT_LT((bs.sigma - c.t().matmul(c) / 8999.0).abs().max().item<double>(), 1e-12);
}

TEST(EvalFid, StatsCacheRoundTripAndErrors) {
  test::TempDir dir;
  auto s = feature_stats(torch::randn({50, 5}, seeded(7), torch::kFloat64));
  s.extractor = "123 bytes, fnv1a64 0123456789abcdef";
  s.reference = "images in /data/ref at 3x32x32";
  const auto path = dir.str() + "/stats.pt";
  save_feature_stats(s, path);
  auto l = load_feature_stats(path);
  EXPECT_TRUE(torch::equal(l.mu, s.mu));
  EXPECT_TRUE(torch::equal(l.sigma, s.sigma));
  EXPECT_EQ(l.n, 50);
  EXPECT_EQ(l.extractor, s.extractor);
  EXPECT_EQ(l.reference, s.reference);
  // Written atomically: no temporary left beside it.
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) files += e.is_regular_file();
  EXPECT_EQ(files, 1);

  const auto missing = dir.str() + "/nope.pt";
  try {
    load_feature_stats(missing);
    FAIL() << "expected UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos);
  }
  const auto garbage = dir.str() + "/garbage.pt";
  std::ofstream(garbage) << "not a torch archive";
  try {
    load_feature_stats(garbage);
    FAIL() << "expected UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(garbage), std::string::npos);
  }
  // A safetensors file without the expected entries.
  const auto other = dir.str() + "/other.pt";
  save_safetensors(other, {{"something", torch::ones({2})}});
  try {
    load_feature_stats(other);
    FAIL() << "expected UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("'mu'"), std::string::npos) << e.what();
  }
  // A LibTorch archive (what older versions wrote) is refused before LibTorch parses it.
  const auto old = dir.str() + "/old.pt";
  torch::serialize::OutputArchive ar;
  ar.write("mu", torch::ones({2}));
  ar.save_to(old);
  try {
    load_feature_stats(old);
    FAIL() << "expected UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("zip archive"), std::string::npos) << e.what();
  }
  // Mismatched dimensions are a usage error, not a crash.
  auto t = feature_stats(torch::randn({50, 3}, seeded(8), torch::kFloat64));
  EXPECT_THROW(frechet_distance(s, t), UsageError);
}

// Hand-computed KID. X = {0, 1}, Y = {1, 2} in d = 1, k(x, y) = (x y + 1)^3:
// Kxx off-diagonal 1, Kyy off-diagonal 27, Kxy = {1, 1, 8, 27}:
// MMD^2 = 2/2 + 54/2 - 2 * 37/4 = 9.5.
// X = {(1,0), (0,1)}, Y = {(1,1), (0,0)} in d = 2: Kxx, Kyy off-diagonal 1, Kxy = {3.375, 1, 3.375, 1}:
// MMD^2 = 1 + 1 - 2 * 8.75 / 4 = -2.375.
TEST(EvalKid, HandComputedValues) {
  auto X = torch::tensor({0.0, 1.0}, torch::kFloat64).view({2, 1});
  auto Y = torch::tensor({1.0, 2.0}, torch::kFloat64).view({2, 1});
  auto r = kid(X, Y, 10, 2, 0);
  EXPECT_NEAR(r.mean, 9.5, 1e-12);
  EXPECT_NEAR(r.std, 0.0, 1e-12);  // every subset is the whole set
  EXPECT_EQ(r.subset_size, 2);
  EXPECT_EQ(r.subsets, 10);
  auto X2 = torch::tensor({1.0, 0.0, 0.0, 1.0}, torch::kFloat64).view({2, 2});
  auto Y2 = torch::tensor({1.0, 1.0, 0.0, 0.0}, torch::kFloat64).view({2, 2});
  EXPECT_NEAR(kid(X2, Y2, 3, 1000, 1).mean, -2.375, 1e-12);  // subset size capped at 2
  // Larger random sets against explicit loops (full subsets, float32 input).
  auto A = torch::randn({7, 3}, seeded(9), torch::kFloat64),
       B = torch::randn({7, 3}, seeded(10), torch::kFloat64) + 0.5;
  EXPECT_NEAR(kid(A.to(torch::kFloat32), B.to(torch::kFloat32), 2, 7).mean,
              mmd2_loops(A.to(torch::kFloat32).to(torch::kFloat64), B.to(torch::kFloat32).to(torch::kFloat64)), 1e-10);
}

// Unbiased: over independent pairs of samples from one distribution the mean estimate is 0
// within 4 standard errors; for shifted distributions it is clearly positive.
TEST(EvalKid, UnbiasedAndPositiveForDifferentDistributions) {
  const int reps = 120;
  std::vector<double> v;
  for (int r = 0; r < reps; ++r) {
    auto X = torch::randn({40, 4}, seeded(1000 + r), torch::kFloat64);
    auto Y = torch::randn({40, 4}, seeded(5000 + r), torch::kFloat64);
    v.push_back(kid(X, Y, 1, 40, r).mean);
  }
  double mean = 0, ss = 0;
  for (double x : v) mean += x / reps;
  for (double x : v) ss += (x - mean) * (x - mean);
  const double se = std::sqrt(ss / (reps - 1) / reps);
  EXPECT_LT(std::abs(mean), 4 * se) << "mean " << mean << " SE " << se;

  auto X = torch::randn({400, 4}, seeded(1), torch::kFloat64);
  auto Y = torch::randn({400, 4}, seeded(2), torch::kFloat64) + 1.0;
  auto r = kid(X, Y, 20, 100, 3);
  EXPECT_GT(r.mean, 20 * se);
  EXPECT_GT(r.std, 0.0);
  EXPECT_GT(r.mean, 3 * r.std);
  // Same seed, same answer.
  EXPECT_EQ(kid(X, Y, 20, 100, 3).mean, r.mean);
  EXPECT_THROW(kid(X, Y.narrow(1, 0, 3)), UsageError);
}

// The feature extractor runs a TorchScript module (scripted here from C++) on prepared images.
TEST(EvalFid, FeatureExtractorRunsTorchScript) {
  test::TempDir dir;
  const auto path = dir.str() + "/features.pt";
  {
    torch::jit::Module m("Features");
    // Per-channel means and maxima, returned as [N, 6, 1, 1] inside a tuple (pytorch-fid's
    // InceptionV3 returns a list of [N, 2048, 1, 1]).
    m.define(R"(
      def forward(self, x):
          f = torch.cat([x.mean([2, 3]), torch.amax(x, [2, 3])], 1)
          return (f.unsqueeze(2).unsqueeze(3), x.size(2))
    )");
    m.save(path);
  }
  FeatureExtractorOptions o;
  o.image_size = 0;
  o.batch_size = 2;
  FeatureExtractor fx(path, o);
  // Grey images with values off the 8-bit grid: quantised to k/127.5 - 1, then repeated to RGB.
  auto img = torch::rand({5, 1, 4, 4}, seeded(11), torch::kFloat32) * 2 - 1;
  auto f = fx.features(img);
  ASSERT_EQ(f.sizes(), (std::vector<int64_t>{5, 6}));
  auto q = (((img.to(torch::kFloat64) + 1) * 127.5).round() / 127.5 - 1).reshape({5, 16});
  for (int64_t i = 0; i < 5; ++i)
    for (int64_t c = 0; c < 3; ++c) {
      EXPECT_NEAR(f[i][c].item<double>(), q[i].mean().item<double>(), 1e-6);
      EXPECT_NEAR(f[i][3 + c].item<double>(), q[i].max().item<double>(), 1e-6);
    }

  // Resizing to the network's size keeps a constant image constant.
  o.image_size = 9;
  FeatureExtractor fx9(path, o);
  auto p = fx9.prepare(torch::full({2, 3, 4, 4}, 0.2));
  ASSERT_EQ(p.sizes(), (std::vector<int64_t>{2, 3, 9, 9}));
  EXPECT_NEAR(p.max().item<double>(), std::round(1.2 * 127.5) / 127.5 - 1, 1e-6);
  EXPECT_NEAR(p.min().item<double>(), std::round(1.2 * 127.5) / 127.5 - 1, 1e-6);
  EXPECT_THROW(fx9.prepare(torch::zeros({2, 2, 4, 4})), std::invalid_argument);

  const auto missing = dir.str() + "/inception.pt";
  try {
    FeatureExtractor bad(missing);
    FAIL() << "expected UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos);
  }
  const auto garbage = dir.str() + "/garbage.pt";
  std::ofstream(garbage) << "nope";
  try {
    FeatureExtractor bad(garbage);
    FAIL() << "expected UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(garbage), std::string::npos);
  }
}

// FNV-1a 64 against its published test vectors (the empty string and "a"), and the
// fingerprint's defining property: the same bytes anywhere give the same value, one byte changed
// gives another.
TEST(EvalFid, FeatureNetworkFingerprint) {
  test::TempDir dir;
  auto write = [&](const std::string& name, const std::string& bytes) {
    const auto p = dir.str() + "/" + name;
    std::ofstream(p, std::ios::binary) << bytes;
    return p;
  };
  EXPECT_EQ(feature_network_fingerprint(write("empty", "")), "0 bytes, fnv1a64 cbf29ce484222325");
  EXPECT_EQ(feature_network_fingerprint(write("a", "a")), "1 bytes, fnv1a64 af63dc4c8601ec8c");
  std::string big(3 << 20, '\0');  // spans several read buffers
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 2654435761u) >> 13);
  const auto one = feature_network_fingerprint(write("net1.pt", big));
  EXPECT_EQ(one, feature_network_fingerprint(write("copy-elsewhere.pt", big)));
  big[big.size() / 2] ^= 1;
  EXPECT_NE(one, feature_network_fingerprint(write("net2.pt", big)));
  EXPECT_THROW(feature_network_fingerprint(dir.str() + "/missing.pt"), UsageError);
}

// A classifier diffuse trained is a feature network: FeatureExtractor reads its checkpoint and
// returns the EncoderUNet's pooled features at t = 0 of the 8-bit-rounded images, at the
// classifier's own size and channels (no resizing to 299, no grey-to-RGB). The same network
// loaded the ordinary way gives the same features; a denoiser's checkpoint is refused naming
// its model.type.
TEST(FeatureNetwork, AClassifierCheckpointGivesItsPooledFeatures) {
  REQUIRE_FASHION_MNIST();
  test::TempDir dir;
  Config c = load_config(std::string(DIFFUSE_SOURCE_DIR) + "/configs/fashion-mnist-features.yaml");
  c.model.model_channels = 32;
  c.model.channel_mult = {1, 1};
  c.data.limit = 64;
  c.train.steps = 2;
  c.train.batch_size = 8;
  c.train.log_every = 1;
  c.train.checkpoint_every = 2;
  TrainRequest req;
  req.config = c;
  req.run_dir = (dir.path() / "cls").string();
  const auto summary = train(req);
  FeatureExtractor fx(summary.checkpoint);
  EXPECT_EQ(fx.options().image_size, 28);
  const auto images = torch::rand({5, 1, 28, 28}, seeded(3), torch::kFloat32) * 2 - 1;
  const auto f = fx.features(images);
  ASSERT_EQ(f.sizes(), (std::vector<int64_t>{5, 32}));  // the last level's 32 channels

  CheckpointReader reader(summary.checkpoint);
  const Config cfg = parse_config(reader.meta().config_yaml, summary.checkpoint);
  auto net = std::dynamic_pointer_cast<EncoderUNet>(load_network(reader, cfg, true, torch::kCPU).net);
  ASSERT_TRUE(net);
  torch::Tensor want;
  {
    torch::NoGradGuard no_grad;
    const auto rounded = ((images + 1) * 127.5).round() / 127.5 - 1;
    want = net->features(rounded, torch::zeros({5}));
  }
  EXPECT_LT((f - want).abs().max().item<double>(), 1e-5);
  EXPECT_NEAR(frechet_distance(feature_stats(f.to(torch::kFloat64)), feature_stats(want.to(torch::kFloat64))), 0.0,
              1e-6);
  EXPECT_THROW(fx.features(torch::zeros({2, 3, 28, 28})), UsageError);  // a 1-channel network

  // A denoiser's checkpoint is not a feature network.
  Config d = load_config(std::string(DIFFUSE_SOURCE_DIR) + "/configs/tiny.yaml");
  d.train.steps = 1;
  d.train.sample_every = 0;
  d.train.checkpoint_every = 1;
  req.config = d;
  req.run_dir = (dir.path() / "den").string();
  const auto den = train(req);
  try {
    FeatureExtractor bad(den.checkpoint);
    ADD_FAILURE() << "a denoiser checkpoint was taken for a feature network";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("model.type unet"), std::string::npos) << e.what();
  }
}

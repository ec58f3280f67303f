#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <fstream>

#include "diffuse/error.h"
#include "diffuse/eval/fid.h"
#include "diffuse/eval/npz.h"
#include "byte_writers.h"
#include "test_util.h"

using namespace diffuse;

using namespace diffuse::test_bytes;

TEST(EvalNpz, ParsesArraysInBothOrdersAndDtypes) {
  const double d[6] = {1, 2, 3, 4, 5, 6};
  auto c = parse_npy(npy("<f8", false, {2, 3}, d, sizeof d), "c");
  EXPECT_TRUE(torch::equal(c, torch::tensor({1.0, 2.0, 3.0, 4.0, 5.0, 6.0}, torch::kFloat64).view({2, 3})));
  // Fortran order: the same bytes are the columns.
  auto f = parse_npy(npy("<f8", true, {2, 3}, d, sizeof d), "f");
  EXPECT_TRUE(torch::equal(f, torch::tensor({1.0, 3.0, 5.0, 2.0, 4.0, 6.0}, torch::kFloat64).view({2, 3})));
  const float g[3] = {0.5f, -1.5f, 2.0f};
  auto v = parse_npy(npy("<f4", false, {3}, g, sizeof g), "v");
  EXPECT_EQ(v.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(v, torch::tensor({0.5f, -1.5f, 2.0f})));
  const int64_t n = 123;
  auto s = parse_npy(npy("<i8", false, {}, &n, sizeof n), "s");
  EXPECT_EQ(s.dim(), 0);
  EXPECT_EQ(s.item<int64_t>(), 123);
  EXPECT_THROW(parse_npy(npy(">f8", false, {2, 3}, d, sizeof d), "be"), UsageError);
  EXPECT_THROW(parse_npy(npy("<f8", false, {2, 4}, d, sizeof d), "short"), UsageError);
  EXPECT_THROW(parse_npy("not numpy", "junk"), UsageError);
}

// pytorch-fid's stats files (np.savez_compressed(mu=float32, sigma=float64)) load as FeatureStats.
TEST(EvalNpz, LoadsPytorchFidStyleStats) {
  test::TempDir dir;
  auto x = torch::randn({40, 3}, at::make_generator<at::CPUGeneratorImpl>(1), torch::kFloat64);
  auto ref = feature_stats(x);
  auto mu32 = ref.mu.to(torch::kFloat32).contiguous();
  auto sigma = ref.sigma.contiguous();
  const auto mu_npy = npy("<f4", false, {3}, mu32.data_ptr(), 3 * 4);
  const auto sigma_npy = npy("<f8", false, {3, 3}, sigma.data_ptr(), 9 * 8);
  for (bool deflate : {true, false}) {
    const auto path = dir.str() + (deflate ? "/stats_c.npz" : "/stats.npz");
    write_file(path, zip({{"mu.npy", mu_npy}, {"sigma.npy", sigma_npy}}, deflate));
    ASSERT_TRUE(is_npz_file(path));
    auto arrays = read_npz(path);
    ASSERT_EQ(arrays.size(), 2u);
    auto s = load_feature_stats(path);
    EXPECT_EQ(s.n, 0);
    EXPECT_TRUE(torch::equal(s.mu, mu32.to(torch::kFloat64)));
    EXPECT_TRUE(torch::equal(s.sigma, sigma));
    EXPECT_LT(std::abs(frechet_distance(s, ref)), 1e-12);
  }
  // Our own cache file is a zip too, but not an .npz.
  save_feature_stats(ref, dir.str() + "/ours.pt");
  EXPECT_FALSE(is_npz_file(dir.str() + "/ours.pt"));

  const auto bad = dir.str() + "/bad.npz";
  write_file(bad, zip({{"mu.npy", mu_npy}, {"sigma.npy", sigma_npy}}, true, /*corrupt_crc=*/true));
  try {
    load_feature_stats(bad);
    FAIL() << "expected UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("CRC"), std::string::npos);
  }
  const auto nomu = dir.str() + "/nomu.npz";
  write_file(nomu, zip({{"sigma.npy", sigma_npy}}, false));
  EXPECT_THROW(load_feature_stats(nomu), UsageError);
  // Truncated archive.
  const auto cut = dir.str() + "/cut.npz";
  write_file(cut, zip({{"mu.npy", mu_npy}, {"sigma.npy", sigma_npy}}, false).substr(0, 150));
  EXPECT_THROW(load_feature_stats(cut), UsageError);
}

// Hostile archives (issue 9): a ZIP64 extra field longer than the extra data that holds it (the
// sizes would be read past the end of the file), an entry claiming more than deflate can expand
// to (it would be allocated), and a shape whose element count overflows 64 bits (0 mod 2^64,
// so it matched an empty payload) are refused naming the file and entry.
TEST(EvalNpz, HostileHeadersAreRefusedNamingTheEntry) {
  test::TempDir dir;
  auto local_header = [](uint16_t method, const std::string& extra) {
    std::string out;
    put32(out, 0x04034b50u);
    put16(out, 45), put16(out, 0), put16(out, method), put16(out, 0), put16(out, 0x21);
    put32(out, 0), put32(out, 0xFFFFFFFFu), put32(out, 0xFFFFFFFFu);
    put16(out, 5), put16(out, static_cast<uint16_t>(extra.size()));
    return out + "a.npy" + extra;
  };
  auto expect_refused = [&](const std::string& bytes, const std::string& what) {
    const auto path = dir.str() + "/hostile.npz";
    write_file(path, bytes);
    try {
      read_npz(path);
      ADD_FAILURE() << "accepted; expected an error about " << what;
    } catch (const UsageError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(path), std::string::npos) << msg;
      EXPECT_NE(msg.find("'a.npy'"), std::string::npos) << msg;
      EXPECT_NE(msg.find(what), std::string::npos) << msg;
    }
  };
  std::string short_extra;
  put16(short_extra, 1), put16(short_extra, 16);  // claims 16 bytes of sizes; none follow
  expect_refused(local_header(0, short_extra), "extra field 0x0001 claims 16 bytes, 0 remain");
  std::string bomb;
  put16(bomb, 1), put16(bomb, 16), put64(bomb, uint64_t{1} << 40), put64(bomb, 10);
  expect_refused(local_header(8, bomb) + std::string(10, '\0'), "cannot inflate");

  const char none = 0;
  try {
    parse_npy(npy("<f8", false, {int64_t{1} << 32, int64_t{1} << 32, 16}, &none, 0), "wrap.npy");
    ADD_FAILURE() << "a shape of 2^68 elements was accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("wrap.npy"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("needs more than the 0 bytes"), std::string::npos) << e.what();
  }
  // A zero dimension still makes an empty array, whatever the others.
  EXPECT_EQ(parse_npy(npy("<f8", false, {int64_t{1} << 40, 0}, &none, 0), "empty").numel(), 0);
  // ... unless the others overflow LibTorch's strides (found by fuzzing: "Stride calculation
  // overflowed" escaped as a c10::Error; tests/fuzz/regressions/npz/).
  try {
    parse_npy(npy("<f4", false, {0, int64_t{1} << 40, int64_t{1} << 40}, &none, 0), "strides.npy");
    ADD_FAILURE() << "an empty shape whose other sizes overflow was accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("strides.npy: .npy shape (0, 1099511627776, 1099511627776) is empty"),
              std::string::npos)
        << e.what();
  }
}

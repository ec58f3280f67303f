// `diffuse sample` and `diffuse eval` split over two ranks (two processes with torchrun's
// environment, Gloo over loopback) give what one rank gives, and only rank 0 writes or prints.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "diffuse/image_io.h"
#include "test_util.h"

namespace fs = std::filesystem;
using diffuse::test::Background;
using diffuse::test::run_diffuse;

namespace {

const char* kFashion = diffuse::test::kFashionMnistImages;

// One tiny checkpoint for every test here (trained once, 2 steps: the numbers need not be good,
// only the same on one rank and on two).
class DistEval : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(kFashion)) return;
    dir_ = new diffuse::test::TempDir;
    const auto run = (dir_->path() / "run").string();
    const auto r = run_diffuse("train --config " + std::string(DIFFUSE_SOURCE_DIR) + "/configs/tiny.yaml --run-dir " +
                                   run + " --set train.steps=2 --set train.checkpoint_every=2 --set train.log_every=1",
                               "OMP_NUM_THREADS=1");
    trained_ = r.exit_code == 0 && fs::exists(fs::path(run) / "checkpoints" / "latest.pt");
    train_log_ = r.err;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override {
    REQUIRE_FASHION_MNIST();
    ASSERT_TRUE(trained_) << train_log_;
  }
  static std::string run_dir() { return (dir_->path() / "run").string(); }

  struct RankOutput {
    int code = -1;
    std::string out, err;
  };
  // `diffuse ARGS` as ranks 0 and 1 of a two-rank group on 127.0.0.1.
  static std::vector<RankOutput> two_ranks(const std::string& args, const fs::path& logs) {
    fs::create_directories(logs);
    const int port = diffuse::test::free_port();
    std::vector<std::unique_ptr<Background>> procs;
    for (int rank = 0; rank < 2; ++rank) {
      const auto env = "RANK=" + std::to_string(rank) + " LOCAL_RANK=" + std::to_string(rank) +
                       " WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) +
                       " OMP_NUM_THREADS=1";
      const auto name = "rank" + std::to_string(rank);
      procs.push_back(std::make_unique<Background>(args, logs / (name + ".out"), logs / (name + ".err"), env));
    }
    std::vector<RankOutput> r;
    for (auto& p : procs) {
      RankOutput o;
      o.code = p->wait();
      o.out = p->out();
      o.err = p->err();
      r.push_back(o);
    }
    return r;
  }
  // `diffuse ARGS DIR` on one rank into root/NAME1 and on two into root/NAME2; both must succeed
  // and rank 1 must print nothing. (Call under ASSERT_NO_FATAL_FAILURE.)
  struct Compared {
    fs::path one, two;
    std::string one_out, two_out;  // stdout of the one rank and of rank 0 of two
  };
  static void one_and_two_ranks(const std::string& args, const fs::path& root, const std::string& name, Compared& c) {
    c.one = root / (name + "1");
    c.two = root / (name + "2");
    const auto r1 = run_diffuse(args + c.one.string(), "OMP_NUM_THREADS=1");
    ASSERT_EQ(r1.exit_code, 0) << r1.err;
    const auto r2 = two_ranks(args + c.two.string(), root / (name + "-logs"));
    ASSERT_EQ(r2[0].code, 0) << r2[0].err;
    ASSERT_EQ(r2[1].code, 0) << r2[1].err;
    EXPECT_EQ(r2[1].out, "");
    EXPECT_EQ(r2[1].err, "");
    c.one_out = r1.out;
    c.two_out = r2[0].out;
  }
  static std::set<std::string> names_in(const fs::path& dir) {
    std::set<std::string> s;
    for (const auto& e : fs::directory_iterator(dir)) s.insert(e.path().filename().string());
    return s;
  }

  static inline diffuse::test::TempDir* dir_ = nullptr;
  static inline bool trained_ = false;
  static inline std::string train_log_;
};

// 6 samples in batches of 3: rank 0 makes 0-2, rank 1 makes 3-5, each one batch as in the
// one-rank run, so rank 0 writes the same bytes.
TEST_F(DistEval, TwoRankSampleWritesTheOneRankFiles) {
  diffuse::test::TempDir out;
  Compared c;
  ASSERT_NO_FATAL_FAILURE(
      one_and_two_ranks("sample --checkpoint " + run_dir() +
                            " --num 6 --batch-size 3 --steps 3 --seed 11 --save-tensor --trajectory 2 --out ",
                        out.path(), "s", c));
  const auto &one = c.one, &two = c.two;
  // Rank 0 gives the summary, naming the ranks.
  EXPECT_NE(c.two_out.find("sampled 6 with ddim"), std::string::npos) << c.two_out;
  EXPECT_NE(c.two_out.find("x 2 ranks"), std::string::npos) << c.two_out;
  ASSERT_EQ(names_in(one), names_in(two));
  for (const auto& name : names_in(one)) {
    if (name == "samples.pt") continue;  // compared as tensors below
    EXPECT_EQ(Background::slurp(one / name), Background::slurp(two / name)) << name;
  }
  torch::Tensor a, b;
  torch::load(a, (one / "samples.pt").string());
  torch::load(b, (two / "samples.pt").string());
  ASSERT_EQ(a.sizes(), b.sizes());
  EXPECT_TRUE(torch::equal(a, b));

  // diffuse's own launcher (--nproc-per-node) makes the same ranks: the same files.
  const auto own = out.path() / "s-launcher";
  const auto r = diffuse::test::run_diffuse("sample --checkpoint " + run_dir() +
                                            " --num 6 --batch-size 3 --steps 3 --seed 11 --save-tensor --trajectory 2"
                                            " --nproc-per-node 2 --out " +
                                            own.string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(names_in(one), names_in(own));
  for (const auto& name : names_in(one)) {
    if (name != "samples.pt") {
      EXPECT_EQ(Background::slurp(one / name), Background::slurp(own / name)) << name;
    }
  }

  // One batch of 6 on one rank, 3 + 3 on two: the trajectory's 6 rows come from both ranks, in
  // order (the batches differ, so float rounding may too: compared up to 2 levels of 255).
  Compared t;
  ASSERT_NO_FATAL_FAILURE(
      one_and_two_ranks("sample --checkpoint " + run_dir() +
                            " --num 6 --batch-size 6 --steps 3 --seed 11 --no-images --trajectory 2 --out ",
                        out.path(), "t", t));
  const auto t1 = diffuse::load_image((t.one / "trajectory.png").string()).to(torch::kInt);
  const auto t2 = diffuse::load_image((t.two / "trajectory.png").string()).to(torch::kInt);
  ASSERT_EQ(t1.sizes(), t2.sizes());
  EXPECT_EQ(t1.size(1), 12 * (28 + 2) + 2);         // x_t and x0 rows for each of the 6 samples
  EXPECT_LE((t1 - t2).abs().max().item<int>(), 2);  // 8-bit levels
}

// The bound over 5 images in batches of 2 (batches 0, 2 on rank 0; 1 on rank 1; the last round
// has no batch for rank 1) on a 20-step schedule: the same numbers, to the last bit.
TEST_F(DistEval, TwoRankBitsPerDimIsTheOneRankBound) {
  diffuse::test::TempDir out;
  Compared c;
  ASSERT_NO_FATAL_FAILURE(
      one_and_two_ranks("eval --checkpoint " + run_dir() +
                            " --metrics bpd,bpd-mc --mc-timesteps 3 --num-images 5 --batch-size 2"
                            " --split test --seed 4 --set diffusion.timesteps=20 --format json --out ",
                        out.path(), "e", c));
  const auto &one = c.one, &two = c.two;
  // Every number is printed in its shortest round-trip form, so equal text is equal bits.
  EXPECT_EQ(c.two_out, c.one_out);
  const auto j = YAML::Load(c.two_out);
  EXPECT_EQ(j["num_images"].as<int64_t>(), 5);
  EXPECT_EQ(j["total_bpd"].as<double>(), YAML::Load(c.one_out)["total_bpd"].as<double>());
  EXPECT_TRUE(std::isfinite(j["bpd_mc"].as<double>()));
  ASSERT_EQ(names_in(one), names_in(two));
  for (const char* name : {"bpd.json", "bpd_terms.csv", "eval.json"})
    EXPECT_EQ(Background::slurp(one / name), Background::slurp(two / name)) << name;
}

}  // namespace

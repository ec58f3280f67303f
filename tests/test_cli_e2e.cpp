// train -> sample -> eval through the binary, on the tiny config and real Fashion-MNIST.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>

#include "diffuse/image_io.h"
#include "diffuse/train/checkpoint.h"
#include "test_util.h"

namespace fs = std::filesystem;
using diffuse::test::run_diffuse;

namespace {
const char* kFashion = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz";
std::string tiny() { return std::string(DIFFUSE_SOURCE_DIR) + "/configs/tiny.yaml"; }
}  // namespace

TEST(CliTrain, ConfigErrorsExitTwoNamingTheKey) {
  auto r = run_diffuse("train --config " + tiny() + " --set train.lrr=1 --dry-run");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("train.lrr"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("train.lr"), std::string::npos) << r.err;
  r = run_diffuse("train --config /nonexistent/x.yaml");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("/nonexistent/x.yaml"), std::string::npos) << r.err;
  r = run_diffuse("train --config " + tiny() + " --set train.batch_size=0 --dry-run");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("train.batch_size"), std::string::npos) << r.err;
  r = run_diffuse("train --config " + tiny() + " --set model.channel_mult=[1,2,2] --set train.steps=7 --dry-run");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto y = YAML::Load(r.out);
  EXPECT_EQ(y["train"]["steps"].as<int64_t>(), 7);
  EXPECT_EQ(y["model"]["channel_mult"].size(), 3u);
}

TEST(CliTrain, PrintModelShowsParameterCount) {
  if (!fs::exists(kFashion)) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  auto r = run_diffuse("train --config " + tiny() + " --print-model");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("parameters"), std::string::npos) << r.out;
}

TEST(CliEndToEnd, TrainSampleEvalOnTinyConfig) {
  if (!fs::exists(kFashion)) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  diffuse::test::TempDir dir;
  const auto run = (dir.path() / "run").string();
  auto r = run_diffuse("train --config " + tiny() + " --run-dir " + run + " --set train.threads=2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("checkpoint"), std::string::npos) << r.out;
  ASSERT_TRUE(fs::exists(fs::path(run) / "checkpoints" / "latest.pt"));

  // Sample: one PNG per sample + grid, settings in the PNG text, same seed -> same samples
  // whatever the batch size.
  const auto out1 = (dir.path() / "s1").string(), out2 = (dir.path() / "s2").string();
  r = run_diffuse("sample --checkpoint " + run + " --num 6 --batch-size 6 --steps 5 --seed 3 --save-tensor --out " + out1);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run_diffuse("sample --checkpoint " + run + " --num 6 --batch-size 4 --steps 5 --seed 3 --save-tensor --trajectory 3 --out " + out2);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(fs::exists(fs::path(out1) / ("00000" + std::to_string(i) + ".png")));
  EXPECT_TRUE(fs::exists(fs::path(out1) / "grid.png"));
  EXPECT_TRUE(fs::exists(fs::path(out2) / "trajectory.png"));
  auto text = diffuse::read_png_text((fs::path(out1) / "000004.png").string());
  EXPECT_EQ(text["seed"], "3");
  EXPECT_EQ(text["index"], "4");
  EXPECT_EQ(text["sampler"], "ddim");
  torch::Tensor a, b;
  torch::load(a, (fs::path(out1) / "samples.pt").string());
  torch::load(b, (fs::path(out2) / "samples.pt").string());
  ASSERT_EQ(a.sizes(), b.sizes());
  // Batch composition may change floating-point summation order inside convolutions: allow 1e-4.
  EXPECT_LT((a - b).abs().max().item<float>(), 1e-4);
  // A different seed gives different samples.
  r = run_diffuse("sample --checkpoint " + run + " --num 2 --steps 5 --seed 4 --save-tensor --out " + out2);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  torch::load(b, (fs::path(out2) / "samples.pt").string());
  EXPECT_GT((a.slice(0, 0, 2) - b).abs().max().item<float>(), 1e-2);

  // Eval: a finite bound whose parts add up, as JSON.
  r = run_diffuse("eval --checkpoint " + run + " --metrics bpd --num-images 4 --batch-size 4 --format json --out " +
                  (dir.path() / "eval").string() + " --set diffusion.timesteps=1000");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = YAML::Load(r.out);
  const double total = j["total_bpd"].as<double>();
  EXPECT_TRUE(std::isfinite(total));
  EXPECT_GT(total, 0.0);
  EXPECT_NEAR(total, j["prior_bpd"].as<double>() + j["decoder_bpd"].as<double>() + j["diffusion_bpd"].as<double>(),
              1e-9 * total);
  EXPECT_EQ(j["num_images"].as<int64_t>(), 4);
  EXPECT_EQ(j["timesteps"].as<int64_t>(), 1000);
  EXPECT_TRUE(fs::exists(dir.path() / "eval" / "bpd_terms.csv"));
  EXPECT_TRUE(fs::exists(dir.path() / "eval" / "bpd_terms.png"));

  // Bad names: exit 2 with the allowed values.
  r = run_diffuse("eval --checkpoint " + run + " --metrics fidd");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("fidd"), std::string::npos) << r.err;
  r = run_diffuse("sample --checkpoint " + run + " --sampler dpm");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("ddim"), std::string::npos) << r.err;
  r = run_diffuse("sample --checkpoint " + (dir.path() / "nope").string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("nope"), std::string::npos) << r.err;
}

// SIGTERM mid-run: the current step finishes, a checkpoint is written, the exit is clean.
TEST(CliTrain, SignalMidRunLeavesALoadableCheckpoint) {
  if (!fs::exists(kFashion)) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  diffuse::test::TempDir dir;
  const auto run = (dir.path() / "run").string();
  // `timeout` sends SIGTERM after 8 s; the run would otherwise take far longer.
  auto r = run_diffuse("train --config " + tiny() + " --run-dir " + run +
                           " --set train.steps=100000 --set train.checkpoint_every=100000 --set train.log_every=1000",
                       "timeout --preserve-status -s TERM 8");
  EXPECT_EQ(r.exit_code, 128 + 15) << r.err;
  EXPECT_NE(r.out.find("resume with"), std::string::npos) << r.out;
  diffuse::CheckpointReader ck(diffuse::resolve_checkpoint(run));
  EXPECT_GT(ck.meta().step, 0);
  // And the run resumes from it.
  r = run_diffuse("train --resume " + run + " --set train.steps=" + std::to_string(ck.meta().step + 2));
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

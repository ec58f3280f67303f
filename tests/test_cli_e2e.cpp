// train -> sample -> eval through the binary, on the tiny config and real Fashion-MNIST.
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "diffuse/data/toy2d.h"
#include "diffuse/config.h"
#include "diffuse/eval/toy_metrics.h"
#include "diffuse/gamma_schedule.h"
#include "diffuse/image_io.h"
#include "diffuse/train/checkpoint.h"
#include "test_util.h"

namespace fs = std::filesystem;
using diffuse::test::run_diffuse;

namespace {
std::string tiny() { return std::string(DIFFUSE_SOURCE_DIR) + "/configs/tiny.yaml"; }

// `diffuse ARGS` must be refused as a usage error: exit 2, with each needle in stderr.
void expect_refused(const std::string& args, std::initializer_list<std::string> needles) {
  const auto r = run_diffuse(args);
  EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.err;
  for (const auto& n : needles)
    EXPECT_NE(r.err.find(n), std::string::npos) << "'" << n << "' for " << args << "\n" << r.err;
}
}  // namespace

TEST(CliTrain, ConfigErrorsExitTwoNamingTheKey) {
  auto r = run_diffuse("train --config " + tiny() + " --set train.lrr=1 --dry-run");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("train.lrr"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("train.lr"), std::string::npos) << r.err;
  expect_refused("train --config /nonexistent/x.yaml", {"/nonexistent/x.yaml"});
  expect_refused("train --config " + tiny() + " --set train.batch_size=0 --dry-run", {"train.batch_size"});
  r = run_diffuse("train --config " + tiny() + " --set model.channel_mult=[1,2,2] --set train.steps=7 --dry-run");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto y = YAML::Load(r.out);
  EXPECT_EQ(y["train"]["steps"].as<int64_t>(), 7);
  EXPECT_EQ(y["model"]["channel_mult"].size(), 3u);
}

// Hostile input (issue 9) is a usage error naming the culprit, not a raw library message with
// exit 1: a --run-dir that is a file, an IDX header whose dimensions wrap 64 bits, and counts
// of 0 (CLI11's own range check printed 2.2e-308 to 1.8e+308).
TEST(CliTrain, HostileInputExitsTwoNamingThePathOrOption) {
  diffuse::test::TempDir dir;
  const auto file = (dir.path() / "a-file").string();
  std::ofstream(file) << "not a directory";
  expect_refused(
      "train --config " + std::string(DIFFUSE_SOURCE_DIR) + "/configs/toy2d.yaml --set train.steps=1 --run-dir " + file,
      {file, "not a directory"});
  const auto idx = dir.path() / "idx";
  fs::create_directories(idx);
  auto be32 = [](uint32_t v) {
    return std::string{static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
                       static_cast<char>(v)};
  };
  std::ofstream(idx / "train-images-idx3-ubyte", std::ios::binary)
      << std::string("\0\0\x08\x03", 4) + be32(65536) + be32(1u << 24) + be32(1u << 24);  // 16 bytes: 2^72 pixels
  std::ofstream(idx / "train-labels-idx1-ubyte", std::ios::binary)
      << std::string("\0\0\x08\x01", 4) + be32(65536) + std::string(65536, '\x03');  // as many labels as images
  expect_refused(
      "train --config " + tiny() + " --run-dir " + (dir.path() / "run").string() + " --set data.path=" + idx.string(),
      {(idx / "train-images-idx3-ubyte").string(), "2^40"});
  for (const std::string opt : {"--num", "--steps", "--batch-size"}) {
    const auto r = run_diffuse("sample --checkpoint " + dir.str() + " " + opt + " 0");
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find(opt + ": must be >= 1, got 0"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("e+308"), std::string::npos) << r.err;
  }
  expect_refused("sample --checkpoint " + dir.str() + " --eta -0.5", {"--eta: must be >= 0, got -0.5"});
  expect_refused("eval --checkpoint " + dir.str() + " --num-samples 0", {"--num-samples: must be >= 1, got 0"});
}

TEST(CliTrain, PrintModelShowsParameterCount) {
  REQUIRE_FASHION_MNIST();
  auto r = run_diffuse("train --config " + tiny() + " --print-model");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("Total parameters: "), std::string::npos) << r.out;
  // The quickstart UNet, unconditional, has the settings of issue 3's reference point, where
  // improved-diffusion's UNetModel counts 1,191,233 parameters (1,112,801 without
  // use_scale_shift_norm). Class-conditional it adds a label embedding of 10 classes x 128 (the
  // time embedding's width) there, and here one more row for guidance's null label.
  const std::string quick = "train --config " + std::string(DIFFUSE_SOURCE_DIR) + "/configs/fashion-mnist-quick.yaml";
  const std::string uncond = " --set model.class_cond=false --set sample.guidance_scale=1";
  r = run_diffuse(quick + " --print-model" + uncond);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("Total parameters: 1,191,233"), std::string::npos) << r.out;
  r = run_diffuse(quick + " --print-model --set model.use_scale_shift_norm=false" + uncond);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("Total parameters: 1,112,801"), std::string::npos) << r.out;
  r = run_diffuse(quick + " --print-model");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("Total parameters: 1,192,641"), std::string::npos) << r.out;
}

// A super-resolution model (model.low_res_size) trains on its images averaged down, draws its
// periodic grid from the run's first images, samples from a folder of low-resolution images and
// has a bound given them.
TEST(CliEndToEnd, ASuperResolutionModelTrainsSamplesAndEvaluates) {
  REQUIRE_FASHION_MNIST();
  diffuse::test::TempDir dir;
  const auto run = (dir.path() / "run").string();
  auto r = run_diffuse("train --config " + tiny() + " --run-dir " + run +
                       " --set model.low_res_size=7 --set diffusion.timesteps=20 --set train.steps=4"
                       " --set train.sample_every=4 --set train.sample_num=4 --set train.sample_steps=3");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(fs::path(run) / "samples" / "step_00000004.png")) << r.out;
  fs::create_directories(dir.path() / "low");
  for (int i = 0; i < 3; ++i)
    diffuse::save_png((dir.path() / "low" / ("00000" + std::to_string(i) + ".png")).string(),
                      torch::full({1, 7, 7}, 60 * i, torch::kUInt8));
  const auto out = (dir.path() / "up").string();
  r = run_diffuse("sample --checkpoint " + run + " --steps 3 --save-tensor --low-res " + (dir.path() / "low").string() +
                  " --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  torch::Tensor up;
  torch::load(up, (fs::path(out) / "samples.pt").string());
  EXPECT_EQ(up.sizes().vec(), (std::vector<int64_t>{3, 1, 28, 28}));
  EXPECT_NE(diffuse::read_png_text((fs::path(out) / "000000.png").string())["low_res"].find("low"), std::string::npos);
  r = run_diffuse("eval --checkpoint " + run + " --metrics bpd --num-images 4 --batch-size 4 --format json --out " +
                  (dir.path() / "eval").string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("given x averaged down to 7x7"), std::string::npos) << r.out;
  expect_refused("eval --checkpoint " + run + " --metrics fid --num-samples 4 --inception /nonexistent.pth",
                 {"super-resolution", "--low-res"});
  expect_refused("sample --checkpoint " + run + " --steps 3 --out " + (dir.path() / "x").string(), {"--low-res"});
}

TEST(CliEndToEnd, TrainSampleEvalOnTinyConfig) {
  REQUIRE_FASHION_MNIST();
  diffuse::test::TempDir dir;
  const auto run = (dir.path() / "run").string();
  auto r = run_diffuse("train --config " + tiny() + " --run-dir " + run);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("checkpoint"), std::string::npos) << r.out;
  ASSERT_TRUE(fs::exists(fs::path(run) / "checkpoints" / "latest.pt"));

  // Sample: one PNG per sample + grid, settings in the PNG text, same seed -> same samples
  // whatever the batch size.
  const auto out1 = (dir.path() / "s1").string(), out2 = (dir.path() / "s2").string();
  r = run_diffuse("sample --checkpoint " + run + " --num 6 --batch-size 6 --steps 5 --seed 3 --save-tensor --out " +
                  out1);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run_diffuse("sample --checkpoint " + run +
                  " --num 6 --batch-size 4 --steps 5 --seed 3 --save-tensor --trajectory 3 --out " + out2);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(fs::exists(fs::path(out1) / ("00000" + std::to_string(i) + ".png")));
  EXPECT_TRUE(fs::exists(fs::path(out1) / "grid.png"));
  ASSERT_TRUE(fs::exists(fs::path(out2) / "trajectory.png"));
  // --trajectory 3 over 5 steps: 3 columns (first, middle, last step) of 28-pixel tiles with
  // 2-pixel padding; rows: x_t and x0 for each of the first batch's 4 samples.
  const auto traj = diffuse::image_info((fs::path(out2) / "trajectory.png").string());
  EXPECT_EQ(traj.width, 3 * (28 + 2) + 2);
  EXPECT_EQ(traj.height, 8 * (28 + 2) + 2);
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
  // bf16 autocast for the network: the same samples up to bf16 rounding (mean |diff| over pixels
  // in [-1, 1]; measured ~1e-3 here, bounded at 0.05).
  const auto out3 = (dir.path() / "s3").string();
  r = run_diffuse("sample --checkpoint " + run +
                  " --num 6 --steps 5 --seed 3 --precision bf16 --save-tensor --no-images --out " + out3);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  torch::Tensor c16;
  torch::load(c16, (fs::path(out3) / "samples.pt").string());
  EXPECT_LT((a - c16).abs().mean().item<float>(), 0.05);
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
  EXPECT_EQ(j["decoder_cdf"].as<std::string>(), "exact");  // how L_0 was measured
  EXPECT_TRUE(fs::exists(dir.path() / "eval" / "bpd_terms.csv"));
  EXPECT_TRUE(fs::exists(dir.path() / "eval" / "bpd_terms.png"));

  // FID / KID through a TorchScript feature network (here: per-channel mean and std).
  const auto fe = (dir.path() / "features.pt").string();
  {
    torch::jit::Module m("features");
    m.define(R"(
def forward(self, x):
    return torch.cat([x.mean([2, 3]), x.std([2, 3])], 1)
)");
    m.save(fe);
  }
  r = run_diffuse("eval --checkpoint " + run + " --metrics fid,precision,recall --samples " + out1 + " --reference " +
                  out1 + " --feature-extractor " + fe + " --format json --out " + (dir.path() / "fid-same").string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_LT(YAML::Load(r.out)["fid"].as<double>(), 1e-6);  // a set against itself
  // ... and each point is the centre of a ball of its own manifold.
  EXPECT_DOUBLE_EQ(YAML::Load(r.out)["precision"].as<double>(), 1.0);
  EXPECT_DOUBLE_EQ(YAML::Load(r.out)["recall"].as<double>(), 1.0);
  // Only the six numbered samples count, not the grid written beside them.
  EXPECT_EQ(YAML::Load(r.out)["num_samples"].as<int64_t>(), 6);
  r = run_diffuse("eval --checkpoint " + run + " --metrics fid,kid --num-samples 8 --reference " + out2 +
                  " --set sample.steps=5 --feature-extractor " + fe + " --format json --out " +
                  (dir.path() / "fid").string() + " --reference-stats " + (dir.path() / "ref.pt").string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // stderr is not a terminal here: the sampling's progress comes as plain lines, the last at the end.
  EXPECT_NE(r.err.find(": 8/8 (100%)"), std::string::npos) << r.err;
  j = YAML::Load(r.out);
  EXPECT_GT(j["fid"].as<double>(), 0.0);
  EXPECT_TRUE(std::isfinite(j["kid"].as<double>()));
  EXPECT_EQ(j["num_samples"].as<int64_t>(), 8);
  EXPECT_TRUE(fs::exists(dir.path() / "ref.pt"));
  // The cache is reused for the same network and reference, and refused for another reference.
  const std::string again = "eval --checkpoint " + run +
                            " --metrics fid --num-samples 8 --set sample.steps=5"
                            " --feature-extractor " +
                            fe + " --format json --reference-stats " + (dir.path() / "ref.pt").string() +
                            " --reference ";
  r = run_diffuse(again + out2);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_DOUBLE_EQ(YAML::Load(r.out)["fid"].as<double>(), j["fid"].as<double>());
  // Refused before any sampling, and with kid too (which needs fresh features): the cache is
  // left as it was, not overwritten with statistics of other images.
  const auto cache_bytes = diffuse::test::Background::slurp(dir.path() / "ref.pt");
  for (const char* metrics : {"fid", "fid,kid"}) {
    auto mismatch = again + out1;
    mismatch.replace(mismatch.find("--metrics fid"), 13, std::string("--metrics ") + metrics);
    r = run_diffuse(mismatch);
    EXPECT_EQ(r.exit_code, 2) << metrics;
    EXPECT_NE(r.err.find((dir.path() / "ref.pt").string()), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(fs::weakly_canonical(out2).string()), std::string::npos) << r.err;
    EXPECT_EQ(diffuse::test::Background::slurp(dir.path() / "ref.pt"), cache_bytes);
  }
  // The check comes before the samples are made or read: with a samples folder that does not
  // exist, the error is still the cache's.
  expect_refused(again + out1 + " --samples " + (dir.path() / "missing").string(), {"reference statistics"});
  // No feature extractor given.
  expect_refused("eval --checkpoint " + run + " --metrics fid --num-samples 4 --format json", {"feature_extractor"});

  // Bad names: exit 2 with the allowed values.
  expect_refused("eval --checkpoint " + run + " --metrics fidd", {"fidd"});
  expect_refused("eval --checkpoint " + run + " --decoder-cdf erf", {"tanh"});
  expect_refused("eval --checkpoint " + run + " --set eval.decoder_cdf=erf", {"eval.decoder_cdf"});
  expect_refused("sample --checkpoint " + run + " --sampler dpm", {"ddim"});
  expect_refused("sample --checkpoint " + (dir.path() / "nope").string(), {"nope"});
  // The error lists the allowed values.
  expect_refused("eval --checkpoint " + run + " --metrics bpd --set data.dataset=fashion",
                 {"data.dataset", "fashion-mnist"});
  // Options the chosen sampler would ignore are refused, naming the ones that take them.
  expect_refused("sample --checkpoint " + run + " --sampler dpmpp-2m --eta 0.5", {"euler-ancestral"});
  expect_refused("sample --checkpoint " + run + " --sampler ddim --sigmas karras", {"sigma"});
  // A file that is not a checkpoint, and a truncated checkpoint: exit 2 naming the file.
  {
    const auto junk = (dir.path() / "junk.pt").string();
    std::ofstream(junk) << "not a checkpoint";
    r = run_diffuse("sample --checkpoint " + junk);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find(junk), std::string::npos) << r.err;
    const auto cut = (dir.path() / "cut.pt").string();
    const auto bytes = diffuse::test::Background::slurp(fs::path(run) / "checkpoints" / "latest.pt");
    std::ofstream(cut, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
    r = run_diffuse("sample --checkpoint " + cut);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find(cut), std::string::npos) << r.err;
  }

  // The Monte Carlo bound: a mean and a standard error, near the exact bound computed above.
  r = run_diffuse("eval --checkpoint " + run +
                  " --metrics bpd-mc --num-images 4 --batch-size 4 --mc-timesteps 64"
                  " --format json --out " +
                  (dir.path() / "eval-mc").string() + " --set diffusion.timesteps=1000");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  j = YAML::Load(r.out);
  const double mc = j["bpd_mc"].as<double>(), se = j["bpd_mc_std_error"].as<double>();
  EXPECT_GT(se, 0.0);
  EXPECT_NEAR(mc, total, 5 * se + 0.05 * total) << "MC " << mc << " +- " << se << " vs exact " << total;
  // --importance needs a warmed-up loss-aware sampler; this run trained with the uniform one.
  expect_refused("eval --checkpoint " + run + " --metrics bpd-mc --importance --num-images 4", {"--importance"});

  // Fewer samples into a folder that holds more: the leftovers are pointed out.
  r = run_diffuse("sample --checkpoint " + run + " --num 2 --steps 5 --seed 3 --out " + out1);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("4 other numbered sample(s) (e.g. 000002.png)"), std::string::npos) << r.err;
}

// SIGTERM mid-run: the current step finishes, a checkpoint is written, the exit is 128+15, and
// the run resumes from it. The signal is sent twice, 50 ms apart, as `timeout` does (to the child
// and then to its process group): the duplicate must not turn the clean stop into a kill.
// A class-conditional tiny model: --label and --guidance-scale sample, the labels reach the
// PNGs, guidance changes the samples, and a label outside the classes is refused.
// A VDM model (schedule vdm, learned gamma network) trains on its bound, samples through the
// discrete view of its learned schedule with both kinds of sampler, and evaluates both bounds.
TEST(CliEndToEnd, AVdmModelWithALearnedScheduleTrainsSamplesAndEvaluatesItsBounds) {
  REQUIRE_FASHION_MNIST();
  diffuse::test::TempDir dir;
  const auto run = (dir.path() / "run").string();
  const std::string vdm =
      " --set diffusion.schedule=vdm --set diffusion.gamma_schedule=learned --set diffusion.gamma_hidden=16"
      " --set diffusion.timestep_sampler=antithetic --set diffusion.timesteps=100";
  auto r = run_diffuse("train --config " + tiny() + " --run-dir " + run + vdm + " --set train.steps=6");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // The logged bound (vb, bits/dim) is finite and of the size of an untrained model's.
  std::ifstream metrics(fs::path(run) / "metrics.jsonl");
  std::string line, last;
  while (std::getline(metrics, line))
    if (line.find("\"vb\"") != std::string::npos) last = line;
  ASSERT_FALSE(last.empty());
  const double vb = YAML::Load(last)["vb"].as<double>();
  EXPECT_TRUE(std::isfinite(vb) && vb > 0.5 && vb < 100) << last;
  // The checkpoint holds the schedule beside the network, and training moved its ends.
  const diffuse::CheckpointReader reader((fs::path(run) / "checkpoints" / "latest.pt").string());
  const auto cfg = diffuse::parse_config(reader.meta().config_yaml, "checkpoint");
  const auto loaded = diffuse::load_network(reader, cfg, /*prefer_ema=*/false, torch::kCPU);
  const auto gamma = diffuse::find_gamma_schedule(*loaded.net);
  ASSERT_TRUE(gamma);
  EXPECT_EQ(gamma->spec().kind, diffuse::GammaKind::Learned);
  EXPECT_GT(std::abs(gamma->gamma0().item<double>() - static_cast<double>(-13.3f)), 1e-5);

  for (const std::string sampler : {"ddpm", "heun"}) {
    const auto out = (dir.path() / sampler).string();
    r = run_diffuse("sample --checkpoint " + run + " --num 2 --steps 4 --sampler " + sampler +
                    " --save-tensor --no-images --out " + out);
    ASSERT_EQ(r.exit_code, 0) << sampler << ": " << r.err;
    torch::Tensor x;
    torch::load(x, (fs::path(out) / "samples.pt").string());
    EXPECT_TRUE(torch::isfinite(x).all().item<bool>()) << sampler;
  }

  const auto eval_dir = (dir.path() / "eval").string();
  r = run_diffuse("eval --checkpoint " + run +
                  " --metrics bpd,bpd-mc --num-images 4 --batch-size 4 --mc-timesteps 3 --format json --out " +
                  eval_dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = YAML::Load(r.out);
  // The 100-step discrete bound runs over the 101 latents t = i / 100.
  EXPECT_EQ(j["timesteps"].as<int64_t>(), 101);
  EXPECT_TRUE(std::isfinite(j["total_bpd"].as<double>()));
  const double mc = j["bpd_mc"].as<double>();
  EXPECT_NEAR(mc, j["bpd_mc_prior"].as<double>() + j["bpd_mc_recon"].as<double>() + j["bpd_mc_diffusion"].as<double>(),
              1e-9 * mc);
  EXPECT_GT(j["bpd_mc_std_error"].as<double>(), 0.0);
  EXPECT_GT(j["bpd_mc_batch_loss_variance"].as<double>(), 0.0);
  EXPECT_NE(j["bpd_mc_bound"].as<std::string>().find("continuous"), std::string::npos);
  EXPECT_TRUE(fs::exists(fs::path(eval_dir) / "snr.png"));

  // Keys of the vdm schedule on another schedule are refused, naming them.
  expect_refused("train --config " + tiny() + " --run-dir " + (dir.path() / "bad").string() +
                     " --set diffusion.gamma_schedule=learned",
                 {"diffusion.gamma_schedule", "schedule vdm"});
}

TEST(CliEndToEnd, ClassConditionalSamplingWithGuidance) {
  REQUIRE_FASHION_MNIST();
  diffuse::test::TempDir dir;
  const auto run = (dir.path() / "run").string();
  auto r =
      run_diffuse("train --config " + tiny() + " --run-dir " + run +
                  " --set model.class_cond=true --set model.p_uncond=0.2 --set train.steps=4 --set data.limit=256");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto guided = (dir.path() / "g").string(), plain = (dir.path() / "p").string();
  r = run_diffuse("sample --checkpoint " + run +
                  " --num 4 --steps 3 --seed 2 --label 3 --label 7 --guidance-scale 3 "
                  "--save-tensor --out " +
                  guided);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("network evaluations of a doubled batch, guidance 3)"), std::string::npos) << r.out;
  r = run_diffuse("sample --checkpoint " + run +
                  " --num 4 --steps 3 --seed 2 --label 3 --label 7 --save-tensor --out " + plain);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.find("doubled batch"), std::string::npos) << r.out;
  for (int i = 0; i < 4; ++i) {
    const auto text = diffuse::read_png_text((fs::path(guided) / ("00000" + std::to_string(i) + ".png")).string());
    EXPECT_EQ(text.at("label"), i % 2 ? "7" : "3") << i;
    EXPECT_EQ(text.at("guidance_scale"), "3") << i;
  }
  torch::Tensor a, b;
  torch::load(a, (fs::path(guided) / "samples.pt").string());
  torch::load(b, (fs::path(plain) / "samples.pt").string());
  EXPECT_GT((a - b).abs().max().item<double>(), 1e-4);
  expect_refused("sample --checkpoint " + run + " --num 2 --steps 2 --label 12 --out " + plain, {"12"});
}

// export -> safetensors -> import gives a checkpoint that samples exactly as the original.
TEST(CliEndToEnd, ExportImportSafetensorsSamplesTheSame) {
  REQUIRE_FASHION_MNIST();
  diffuse::test::TempDir dir;
  const auto run = (dir.path() / "run").string(), st = (dir.path() / "m.safetensors").string(),
             back = (dir.path() / "back.pt").string();
  auto r = run_diffuse("train --config " + tiny() + " --run-dir " + run + " --set train.steps=2 --set data.limit=64");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run_diffuse("export " + run + " --out " + st);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find(st), std::string::npos) << r.out;
  r = run_diffuse("import " + st + " --out " + back);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  torch::Tensor a, b, c;
  for (const auto& [ckpt, out] : {std::pair{run, (dir.path() / "sa").string()},
                                  {back, (dir.path() / "sb").string()},
                                  {st, (dir.path() / "sc").string()}}) {
    r = run_diffuse("sample --checkpoint " + ckpt + " --num 2 --steps 3 --seed 5 --save-tensor --no-images --out " +
                    out);
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  torch::load(a, (dir.path() / "sa" / "samples.pt").string());
  torch::load(b, (dir.path() / "sb" / "samples.pt").string());
  torch::load(c, (dir.path() / "sc" / "samples.pt").string());
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_TRUE(torch::equal(a, c));  // the exported file itself reads as a (weights-only) checkpoint
  expect_refused("import " + tiny() + " --out " + (dir.path() / "x.pt").string(), {tiny(), "header length"});
  EXPECT_FALSE(fs::exists(dir.path() / "x.pt"));
}

TEST(CliTrain, SignalMidRunLeavesALoadableCheckpoint) {
  REQUIRE_FASHION_MNIST();
  diffuse::test::TempDir dir;
  const auto run = dir.path() / "run";
  diffuse::test::Background proc("train --config " + tiny() + " --run-dir " + run.string() +
                                     " --set train.steps=100000 --set train.checkpoint_every=100000"
                                     " --set train.log_every=1 --set train.threads=1",
                                 dir.path() / "out.txt", dir.path() / "err.txt");
  // Wait (up to 5 minutes, for a loaded machine) until a few steps are logged; then signal.
  const auto metrics = run / "metrics.jsonl";
  auto lines = [&] {
    const auto s = diffuse::test::Background::slurp(metrics);
    return std::count(s.begin(), s.end(), '\n');
  };
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
  while (lines() < 3 && proc.running() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(proc.running()) << "train ended before it was signalled:\n" << proc.err();
  ASSERT_GE(lines(), 3) << "no training steps logged within 5 minutes";
  ::kill(proc.pid(), SIGTERM);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ::kill(proc.pid(), SIGTERM);  // a zombie by now is fine: not reaped until wait()
  const int code = proc.wait();
  EXPECT_EQ(code, 128 + 15) << proc.err();
  EXPECT_NE(proc.out().find("resume with"), std::string::npos) << proc.out() << proc.err();
  diffuse::CheckpointReader ck(diffuse::resolve_checkpoint(run.string()));
  EXPECT_GE(ck.meta().step, 3);
  // And the run resumes from it.
  auto r = run_diffuse("train --resume " + run.string() + " --set train.steps=" + std::to_string(ck.meta().step + 2));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("(" + std::to_string(ck.meta().step) + " -> " + std::to_string(ck.meta().step + 2) + ")"),
            std::string::npos)
      << r.out;
  // A fresh run into the same directory is refused (exit 2, naming the way to resume).
  expect_refused("train --config " + tiny() + " --run-dir " + run.string(), {"--resume", run.string()});
  r = run_diffuse("train --resume " + run.string() + " --overwrite");
  EXPECT_EQ(r.exit_code, 2);  // the two contradict each other
}

// The toy pipeline: train an MLP on two moons, then measure samples against the true
// distribution and sweep samplers over step counts.
TEST(CliEndToEnd, ToyTrainEvalSweep) {
  diffuse::test::TempDir dir;
  const auto run = (dir.path() / "toy").string();
  const auto cfg = std::string(DIFFUSE_SOURCE_DIR) + "/configs/toy2d.yaml";
  auto r = run_diffuse("train --config " + cfg + " --run-dir " + run +
                       " --set train.steps=400 --set train.sample_every=400 --set train.sample_num=500"
                       " --set train.sample_steps=20 --set train.log_every=100");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(fs::path(run) / "samples" / "step_00000400.png"));
  const auto out = (dir.path() / "eval").string();
  r = run_diffuse("eval --checkpoint " + run +
                  " --metrics toy --num-samples 1000 --sweep ddim:5,20 --sweep dpmpp-2m:10"
                  " --set sample.sampler=ddpm --set sample.steps=250 --format json --out " +
                  out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = YAML::Load(r.out);
  const double sw = j["sliced_w2"].as<double>();
  r = run_diffuse("sample --checkpoint " + run + " --num 1000 --steps 50 --out " + (dir.path() / "pts").string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir.path() / "pts" / "scatter.png"));
  EXPECT_TRUE(std::isfinite(sw));
  EXPECT_GT(sw, 0.0);
  // Baseline: standard-normal points (same mean and variance as the standardised moons, which
  // is what a model that learned only the first two moments would give) are clearly farther.
  torch::manual_seed(0);
  const double baseline = diffuse::sliced_wasserstein2(torch::randn({1000, 2}),
                                                       diffuse::sample_toy(diffuse::ToyKind::TwoMoons, 1000, 99), {});
  EXPECT_LT(sw, 0.5 * baseline) << "two moons are not learned: sliced W2^2 " << sw << " vs N(0,I) " << baseline;
  EXPECT_TRUE(std::isfinite(j["mmd2_rbf"].as<double>()));
  // The sweep table: a header and one row per (sampler, steps).
  std::ifstream csv(fs::path(out) / "sweep.csv");
  std::string line;
  int rows = -1;
  while (std::getline(csv, line)) ++rows;
  EXPECT_EQ(rows, 3);
  EXPECT_TRUE(fs::exists(fs::path(out) / "sweep.png"));
}

// `diffuse bench` measures the machine's ceilings once, before the first figure, and reports each
// figure against the best ceiling of its dtype.
TEST(CliBench, ReportsEachFigureAgainstTheBestCeilingOfItsDtype) {
  REQUIRE_FASHION_MNIST();
  const auto r = run_diffuse("bench sample -c " + tiny() + " --steps 2 --num 2 --sampler ddim --sampler euler");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<YAML::Node> lines;  // JSON lines are YAML flow mappings
  std::istringstream in(r.out);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(YAML::Load(line));
  ASSERT_EQ(lines.size(), 3u) << r.out;
  ASSERT_EQ(lines[0]["bench"].as<std::string>(), "ceilings");
  double best_fp32 = 0;
  for (const auto& c : lines[0]["ceilings"])
    if (c["dtype"].as<std::string>() == "fp32") best_fp32 = std::max(best_fp32, c["gflops"].as<double>());
  EXPECT_EQ(lines[0]["ceilings"].size(), 6u);
  for (size_t i = 1; i < lines.size(); ++i) {
    const auto& s = lines[i];
    EXPECT_EQ(s["bench"].as<std::string>(), "sample");
    EXPECT_EQ(s["precision"].as<std::string>(), "fp32");
    EXPECT_NEAR(s["ceiling_gflops"].as<double>(), best_fp32, 1e-5 * best_fp32);
    EXPECT_NEAR(s["fraction_of_ceiling"].as<double>(), s["achieved_gflops"].as<double>() / best_fp32, 1e-4);
  }
}

// Classifier-free guidance evaluates each sample twice per call (labels and null label), so a
// guided bench counts twice the forward work per evaluation, and an unguided one does not.
TEST(CliBench, CountsTheDoubledBatchOfGuidanceInTheAchievedRate) {
  REQUIRE_FASHION_MNIST();
  for (const char* scale : {"1", "2"}) {
    const auto r = run_diffuse("bench sample -c " + tiny() + " --steps 2 --num 2 --sampler ddim" +
                               " --set model.class_cond=true --set sample.guidance_scale=" + scale);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::istringstream in(r.out);
    std::string line, last;
    while (std::getline(in, line))
      if (!line.empty()) last = line;
    const auto s = YAML::Load(last);
    const int64_t rows = s["rows_per_evaluation"].as<int64_t>();
    EXPECT_EQ(rows, std::string(scale) == "1" ? 1 : 2) << last;
    const double work = s["fwd_gflops_per_image"].as<double>() * s["nfe_per_batch"].as<double>() * rows * 2;
    EXPECT_NEAR(s["achieved_gflops"].as<double>(), work / s["seconds"].as<double>(),
                1e-6 * s["achieved_gflops"].as<double>())
        << last;
  }
}

// The training loop: it learns, resumes bit-for-bit, refuses corrupt checkpoints, and stops
// on non-finite losses without touching the last good checkpoint.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "diffuse/config.h"
#include "diffuse/error.h"
#include "diffuse/models/network.h"
#include "diffuse/train/checkpoint.h"
#include "diffuse/train/trainer.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace diffuse;

namespace {

TrainRequest request(const Config& c, const std::string& run_dir, const std::string& resume_from = "") {
  TrainRequest r;
  r.config = c;
  r.run_dir = run_dir;
  r.resume_from = resume_from;
  return r;
}

const char* kFashion = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz";

std::vector<YAML::Node> read_metrics(const std::string& path) {
  std::vector<YAML::Node> rows;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) rows.push_back(YAML::Load(line));
  return rows;
}

// The toy2d config, short: `steps` steps of `batch_size` points, every step logged, no grids
// and no checkpoints but the final one.
Config toy_config(int64_t steps = 2, int64_t batch_size = 512) {
  Config c = load_config(std::string(DIFFUSE_SOURCE_DIR) + "/configs/toy2d.yaml");
  c.train.threads = 0;  // OMP_NUM_THREADS under ctest (1), else every core
  c.train.sample_every = 0;
  c.train.checkpoint_every = 1000000;
  c.train.steps = steps;
  c.train.batch_size = batch_size;
  c.train.log_every = 1;
  return c;
}

Config tiny_config() {
  Config c = load_config(std::string(DIFFUSE_SOURCE_DIR) + "/configs/tiny.yaml");
  c.train.threads = 0;  // OMP_NUM_THREADS under ctest (1), else every core
  c.train.sample_every = 0;
  return c;
}

}  // namespace

TEST(Train, LossDecreasesOnToyData) {
  test::TempDir dir;
  Config c = toy_config(300, 256);
  c.train.lr = 1e-3;
  c.train.warmup_steps = 0;
  TrainRequest req = request(c, dir.str());
  auto s = train(req);
  EXPECT_EQ(s.end_step, 300);
  auto rows = read_metrics(s.metrics);
  ASSERT_EQ(rows.size(), 300u);
  // The untrained network outputs zeros (zero-initialised last layer), so its eps-MSE is
  // E[eps^2] = 1: 512 squared normals give 1 +- 0.06 (SE), so > 0.7 holds.
  const double first = rows.front()["loss"].as<double>();
  double last = 0;
  for (size_t i = 250; i < 300; ++i) last += rows[i]["loss"].as<double>() / 50;
  EXPECT_GT(first, 0.7);
  // A model that learned nothing stays near 1; the last 50 steps must average well below.
  EXPECT_LT(last, 0.6 * first) << "first " << first << " last " << last;
  EXPECT_TRUE(fs::exists(s.checkpoint));
  EXPECT_TRUE(fs::exists(fs::path(dir.str()) / "checkpoints" / "latest.pt"));
  EXPECT_TRUE(fs::exists(s.config));
  // The resolved config written to the run reads back as the same config.
  EXPECT_EQ(to_yaml(load_config(s.config)), to_yaml(c));
}

// Gradient accumulation: k micro-batches of B make the same optimizer step as one batch of
// k*B. The loader, the timestep draws and the noise consume the same random streams either way
// (one draw per example, in order), so the two runs see the same examples, t and noise, and
// only the summation order differs: losses, gradient norms and weights agree to float32
// rounding. A missing or doubled 1/k would show as a factor of k in the loss and norm.
TEST(Train, GradAccumulationEqualsOneBatchOfTheSameExamples) {
  test::TempDir a, b;
  Config one = toy_config(4, 64);
  one.diffusion.timestep_sampler = TimestepSamplerKind::Uniform;
  one.train.lr_schedule = "cosine";
  one.train.warmup_steps = 2;
  Config acc = one;
  acc.train.batch_size = 16;
  acc.train.grad_accum = 4;
  auto sa = train(request(one, a.str())), sb = train(request(acc, b.str()));
  auto ra = read_metrics(sa.metrics), rb = read_metrics(sb.metrics);
  ASSERT_EQ(ra.size(), 4u);
  ASSERT_EQ(rb.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    const double la = ra[i]["loss"].as<double>(), lb = rb[i]["loss"].as<double>();
    const double ga = ra[i]["grad_norm"].as<double>(), gb = rb[i]["grad_norm"].as<double>();
    EXPECT_NEAR(lb, la, 1e-5 * la) << "step " << i + 1;
    EXPECT_NEAR(gb, ga, 1e-4 * ga) << "step " << i + 1;
  }
  CheckpointReader ca(sa.checkpoint), cb(sb.checkpoint);
  auto na = load_network(ca, one, false, torch::kCPU), nb = load_network(cb, acc, false, torch::kCPU);
  const auto pa = na.net->named_parameters(), pb = nb.net->named_parameters();
  // Loose enough for another BLAS's summation order after 4 AdamW steps; a wrong 1/K moves the
  // first step's update of every weight by up to lr = 1e-3.
  for (const auto& kv : pa) EXPECT_TRUE(torch::allclose(kv.value(), pb[kv.key()], 1e-4, 1e-5)) << kv.key();
}

// On CPU with the same thread count, stopping and resuming gives exactly the loss sequence of
// a run never stopped: model, EMA, optimizer, RNG, data order and sampler state all restored.
// Run twice: plainly, and with every source of randomness and state the loop has switched on
// (dropout, flips, class conditioning with label dropout, gradient accumulation, the
// loss-aware timestep sampler, warm-up and cosine LR), where the final raw and EMA weights
// must match too.
class TrainResume : public ::testing::TestWithParam<bool> {};

TEST_P(TrainResume, ResumeEqualsUninterrupted) {
  if (!fs::exists(kFashion)) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  test::TempDir a, b;
  Config c = tiny_config();
  c.train.steps = 6;
  c.train.log_every = 1;
  c.train.checkpoint_every = 3;
  c.diffusion.timestep_sampler = TimestepSamplerKind::Uniform;
  if (GetParam()) {
    c.model.dropout = 0.1;
    c.data.random_flip = true;
    c.data.class_labels = true;
    c.model.class_cond = true;
    c.model.p_uncond = 0.3;
    c.train.grad_accum = 2;
    c.train.batch_size = 8;
    c.diffusion.timestep_sampler = TimestepSamplerKind::Importance;
    c.train.warmup_steps = 2;
    c.train.lr_schedule = "cosine";
    c.train.ema_warmup = true;
  }
  auto full = train(request(c, a.str()));
  TrainRequest first = request(c, b.str());
  first.stop_after_step = 3;  // stopped as a signal would stop it: the LR schedule still spans 6 steps
  EXPECT_EQ(train(first).end_step, 3);
  TrainRequest resume = request(c, b.str(), b.str());
  auto rest = train(resume);
  EXPECT_EQ(rest.start_step, 3);
  auto ra = read_metrics(full.metrics), rb = read_metrics(rest.metrics);
  ASSERT_EQ(ra.size(), 6u);
  ASSERT_EQ(rb.size(), 6u);  // steps 1-3 from the first part, 4-6 after the resume
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(ra[i]["step"].as<int64_t>(), rb[i]["step"].as<int64_t>());
    EXPECT_EQ(ra[i]["loss"].as<double>(), rb[i]["loss"].as<double>()) << "step " << i + 1;
    EXPECT_EQ(ra[i]["grad_norm"].as<double>(), rb[i]["grad_norm"].as<double>()) << "step " << i + 1;
  }
  // The weights at the end, raw and EMA, bit for bit.
  CheckpointReader ca(full.checkpoint), cb(rest.checkpoint);
  EXPECT_EQ(ca.meta().step, 6);
  EXPECT_EQ(cb.meta().step, 6);
  for (bool ema : {false, true}) {
    auto na = load_network(ca, c, ema, torch::kCPU), nb = load_network(cb, c, ema, torch::kCPU);
    EXPECT_EQ(na.ema, ema);
    const auto pa = na.net->named_parameters(), pb = nb.net->named_parameters();
    ASSERT_EQ(pa.size(), pb.size());
    for (const auto& kv : pa)
      EXPECT_TRUE(torch::equal(kv.value(), pb[kv.key()])) << (ema ? "ema " : "raw ") << kv.key();
  }
}

INSTANTIATE_TEST_SUITE_P(Train, TrainResume, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "EverythingOn" : "Plain"; });

TEST(Train, CorruptCheckpointIsRefusedWithItsName) {
  test::TempDir dir;
  Config c = toy_config(2);
  auto s = train(request(c, dir.str()));
  const auto good = s.checkpoint;
  CheckpointReader ok(good);
  EXPECT_EQ(ok.meta().step, 2);
  // Truncated copy.
  const auto bad = (fs::path(dir.str()) / "truncated.pt").string();
  {
    std::ifstream in(good, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream out(bad, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  }
  try {
    CheckpointReader r(bad);
    FAIL() << "a truncated checkpoint was accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("truncated.pt"), std::string::npos) << e.what();
  }
  // Not a checkpoint at all.
  const auto text = (fs::path(dir.str()) / "notes.pt").string();
  std::ofstream(text) << "hello";
  EXPECT_THROW(CheckpointReader r(text), UsageError);
  EXPECT_THROW(CheckpointReader r((fs::path(dir.str()) / "missing.pt").string()), UsageError);
  // A checkpoint whose weights do not fit the model asked for.
  TrainRequest req = request(c, dir.str(), good);
  req.config.model.hidden = c.model.hidden * 2;
  EXPECT_THROW(train(req), UsageError);
}

// A fresh run never writes over another run: the directory is refused with an error naming it
// and the ways on, and the old run's files stay byte for byte; with overwrite the old run is
// replaced (its later-step checkpoints do not linger to be mixed with the new run's).
TEST(Train, FreshRunRefusesADirectoryHoldingARunUnlessOverwrite) {
  test::TempDir dir;
  Config c = toy_config(4, 64);
  c.train.checkpoint_every = 2;
  const auto first = train(request(c, dir.str()));
  const auto slurp = [](const fs::path& p) { return test::Background::slurp(p); };
  const auto ck_before = slurp(first.checkpoint), cfg_before = slurp(first.config),
             metrics_before = slurp(first.metrics);
  const auto ckpts_before = run_checkpoints(dir.str());
  ASSERT_EQ(ckpts_before.size(), 2u);

  Config c2 = c;
  c2.train.steps = 2;
  c2.train.lr = c.train.lr / 2;
  try {
    train(request(c2, dir.str()));
    FAIL() << "a fresh run wrote into a directory holding a run";
  } catch (const UsageError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(dir.str()), std::string::npos) << m;
    EXPECT_NE(m.find("--resume"), std::string::npos) << m;
    EXPECT_NE(m.find("--overwrite"), std::string::npos) << m;
    EXPECT_NE(m.find("ckpt_00000004.pt"), std::string::npos) << m;
  }
  EXPECT_EQ(run_checkpoints(dir.str()), ckpts_before);
  EXPECT_EQ(slurp(first.checkpoint), ck_before);
  EXPECT_EQ(slurp(first.config), cfg_before);
  EXPECT_EQ(slurp(first.metrics), metrics_before);

  TrainRequest ow = request(c2, dir.str());
  ow.overwrite = true;
  const auto second = train(ow);
  const auto ckpts = run_checkpoints(dir.str());
  ASSERT_EQ(ckpts.size(), 1u);
  EXPECT_EQ(fs::path(ckpts[0]).filename(), "ckpt_00000002.pt");
  CheckpointReader latest(resolve_checkpoint(dir.str()));
  EXPECT_EQ(latest.meta().step, 2);
  EXPECT_EQ(parse_config(latest.meta().config_yaml, "ckpt").train.lr, c2.train.lr);
  EXPECT_EQ(read_metrics(second.metrics).size(), 2u);
  EXPECT_EQ(load_config(second.config).train.lr, c2.train.lr);
}

TEST(Train, NonFiniteLossStopsNamingTheStepAndKeepsTheCheckpoint) {
  test::TempDir dir;
  Config c = toy_config(50);
  c.train.checkpoint_every = 1;
  c.train.lr = 1e30;  // diverges within a few steps
  c.train.grad_clip = 0;
  c.train.warmup_steps = 0;
  std::string message;
  try {
    train(request(c, dir.str()));
    FAIL() << "a diverging run finished";
  } catch (const std::runtime_error& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("non-finite"), std::string::npos) << message;
  // The last checkpoint written is a good one: loadable, one step before the bad one that the
  // error names, with finite weights.
  CheckpointReader r(resolve_checkpoint(dir.str()));
  EXPECT_GE(r.meta().step, 1);
  EXPECT_EQ(message.rfind(fmt::format("step {}:", r.meta().step + 1), 0), 0u) << message;
  auto net = load_network(r, c, false, torch::kCPU).net;
  for (const auto& p : net->parameters()) EXPECT_TRUE(torch::isfinite(p).all().item<bool>());
  // With on_nonfinite: skip the run goes on and counts the skipped steps; the periodic
  // checkpoints keep coming at skipped steps too.
  test::TempDir dir2;
  c.train.on_nonfinite = "skip";
  c.train.steps = 10;
  c.train.checkpoint_every = 1;
  c.train.keep_checkpoints = 100;
  auto s = train(request(c, dir2.str()));
  EXPECT_EQ(s.end_step, 10);
  EXPECT_GT(s.skipped_steps, 0);
  EXPECT_EQ(run_checkpoints(dir2.str()).size(), 10u);
}

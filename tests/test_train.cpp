// The training loop: it learns, resumes bit-for-bit, refuses corrupt checkpoints, and stops
// on non-finite losses without touching the last good checkpoint.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iomanip>

#include <fmt/format.h>

#include "diffuse/config.h"
#include "diffuse/error.h"
#include "diffuse/factory.h"
#include "diffuse/generate.h"
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

// EDM's formulation end to end: the edm grid, the edm preconditioning with sigma_data = 1 (the
// toy points are standardised to unit variance) and log-normal noise levels. EDM's scalings give
// the untrained network (output 0) a loss of exactly E[F*^2] = 1 at every sigma (512 points per
// step: 1 +- 0.15 holds at several SE). Training must bring it clearly below: for unit-variance
// Gaussian data the optimum is 1 itself, so what it gains is the data's structure; averaged over
// 50 steps (SE about 0.01) the last steps sit below 0.9.
TEST(Train, EdmFormulationLearnsOnToyData) {
  test::TempDir dir;
  Config c = toy_config(300, 512);
  c.train.lr = 1e-3;
  c.train.warmup_steps = 0;
  c.diffusion.schedule = ScheduleKind::Edm;
  c.diffusion.prediction = Prediction::Edm;
  c.diffusion.sigma_data = 1.0;
  c.diffusion.timestep_sampler = TimestepSamplerKind::Lognormal;
  validate(c);
  auto s = train(request(c, dir.str()));
  auto rows = read_metrics(s.metrics);
  ASSERT_EQ(rows.size(), 300u);
  const double first = rows.front()["loss"].as<double>();
  double last = 0;
  for (size_t i = 250; i < 300; ++i) last += rows[i]["loss"].as<double>() / 50;
  EXPECT_NEAR(first, 1.0, 0.15);
  EXPECT_LT(last, 0.9) << "first " << first << " last " << last;
  EXPECT_EQ(load_config(s.config).diffusion.timestep_sampler, TimestepSamplerKind::Lognormal);
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
  REQUIRE_FASHION_MNIST();
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

// train.channels_last belongs to the network: a checkpoint trained with it loads with its 4-D
// weights channels-last (so sampling runs in the layout it trained in), one trained without loads
// plain, and both layouts of the same weights draw the same samples (same seed) up to fp32 rounding.
TEST(Train, AChannelsLastRunLoadsAndSamplesInItsLayout) {
  REQUIRE_FASHION_MNIST();
  test::TempDir dir;
  Config c = tiny_config();
  c.train.steps = 2;
  c.train.channels_last = true;
  c.train.precision = "fp32";
  c.sample.precision = "fp32";
  const auto run = train(request(c, dir.str()));
  CheckpointReader reader(run.checkpoint);
  const Config stored = parse_config(reader.meta().config_yaml, reader.path());
  ASSERT_TRUE(stored.train.channels_last);
  Config plain = stored;
  plain.train.channels_last = false;
  const auto cl_net = load_network(reader, stored, true, torch::kCPU).net;
  const auto plain_net = load_network(reader, plain, true, torch::kCPU).net;
  int64_t four_d = 0;
  for (const auto& p : cl_net->parameters()) {
    if (p.dim() != 4 || p.size(1) == 1 || p.size(2) * p.size(3) == 1) continue;  // 1 x 1 or one channel: both layouts
    ++four_d;
    EXPECT_TRUE(p.is_contiguous(at::MemoryFormat::ChannelsLast)) << p.sizes();
    EXPECT_FALSE(p.is_contiguous()) << p.sizes();
  }
  EXPECT_GT(four_d, 4);
  for (const auto& p : plain_net->parameters()) EXPECT_TRUE(p.is_contiguous()) << p.sizes();

  GenerateRequest req;
  req.sample = stored.sample;
  req.sample.sampler = "ddim";
  req.sample.steps = 5;
  req.sample.num = 4;
  req.sample.batch_size = 4;
  req.sample.seed = 3;
  const DataShape shape = reader.meta().data;
  const auto diffusion = make_diffusion(stored);
  const auto a = generate_samples(*cl_net, diffusion, shape, req).samples;
  const auto b = generate_samples(*plain_net, diffusion, shape, req).samples;
  ASSERT_EQ(a.sizes(), b.sizes());
  EXPECT_LT((a - b).abs().max().item<double>(), 1e-4);
  EXPECT_GT(a.std().item<double>(), 0.05);  // real images, not a constant
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

// Issue 9: hostile input and crashes.

// A checkpoint whose timestep-sampler history was tampered with is refused on resume, naming it.
TEST(Train, BadSamplerStateInACheckpointIsRefusedNamingTheFile) {
  test::TempDir dir;
  Config c = toy_config(2, 64);
  c.diffusion.timestep_sampler = TimestepSamplerKind::Importance;
  const auto s = train(request(c, dir.str()));
  CheckpointReader r(s.checkpoint);
  CheckpointMeta m = r.meta();
  ASSERT_TRUE(m.timestep_sampler_state.defined());
  m.timestep_sampler_state = m.timestep_sampler_state.clone();
  m.timestep_sampler_state[7][m.timestep_sampler_state.size(1) - 1] = -3.0;  // the count of t = 7
  auto net = load_network(r, c, false, torch::kCPU).net;
  torch::optim::AdamW opt(net->parameters(), torch::optim::AdamWOptions(c.train.lr));
  r.load_optimizer(opt);
  const auto bad = (dir.path() / "tampered.pt").string();
  save_checkpoint(bad, m, *net, nullptr, &opt);
  Config more = c;
  more.train.steps = 4;
  try {
    train(request(more, dir.str(), bad));
    FAIL() << "a tampered sampler state was accepted";
  } catch (const UsageError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(bad), std::string::npos) << msg;
    EXPECT_NE(msg.find("count for t = 7 is -3"), std::string::npos) << msg;
  }
}

// Resuming from an older checkpoint abandons the steps after it. Their checkpoints and grids
// are moved aside: left in place, name-ordered pruning kept them instead of the new ones and,
// with a smaller keep_checkpoints, deleted the checkpoint just written (latest.pt then named
// nothing).
TEST(Train, ResumeFromAnOlderCheckpointSetsTheAbandonedStepsAside) {
  test::TempDir dir;
  Config c = toy_config(6, 64);
  c.train.checkpoint_every = 2;
  c.train.keep_checkpoints = 10;
  c.train.sample_every = 2;
  c.train.sample_num = 16;
  c.train.sample_steps = 2;
  train(request(c, dir.str()));
  const auto names = [&](const std::vector<fs::path>& paths) {
    std::vector<std::string> n;
    for (const auto& p : paths) n.push_back(p.filename().string());
    std::sort(n.begin(), n.end());
    return n;
  };
  const auto ls = [&](const fs::path& d) {
    std::vector<fs::path> p;
    for (const auto& e : fs::directory_iterator(d)) p.push_back(e.path());
    return names(p);
  };
  const auto ckpts = run_checkpoints(dir.str());
  ASSERT_EQ(ckpts.size(), 3u);  // steps 2, 4, 6
  Config again = c;
  again.train.steps = 3;
  again.train.keep_checkpoints = 1;
  const auto s = train(request(again, dir.str(), ckpts[0]));
  EXPECT_EQ(s.end_step, 3);
  const auto kept = run_checkpoints(dir.str());
  EXPECT_EQ(names({kept.begin(), kept.end()}), (std::vector<std::string>{"ckpt_00000003.pt"}));
  EXPECT_EQ(CheckpointReader(resolve_checkpoint(dir.str())).meta().step, 3);
  EXPECT_EQ(ls(dir.path() / "samples"), (std::vector<std::string>{"step_00000002.png", "step_00000003.png"}));
  EXPECT_EQ(
      ls(dir.path() / "abandoned_after_step_2"),
      (std::vector<std::string>{"ckpt_00000004.pt", "ckpt_00000006.pt", "step_00000004.png", "step_00000006.png"}));
  EXPECT_NE(test::Background::slurp(s.log).find("abandoned_after_step_2"), std::string::npos);
}

// A line torn by a crash at the end of metrics.jsonl is dropped on resume, so the resumed run's
// lines are not glued onto it.
TEST(Train, ATornLastMetricsLineIsDroppedOnResume) {
  test::TempDir dir;
  const auto first = train(request(toy_config(2, 64), dir.str()));
  std::ofstream(first.metrics, std::ios::app) << "{\"step\": 2, \"loss\": 0.4";  // no brace, no newline
  Config more = toy_config(4, 64);
  const auto s = train(request(more, dir.str(), first.checkpoint));
  const auto rows = read_metrics(s.metrics);  // every line parses
  ASSERT_EQ(rows.size(), 4u);
  for (size_t i = 0; i < rows.size(); ++i) EXPECT_EQ(rows[i]["step"].as<int64_t>(), static_cast<int64_t>(i + 1));
  EXPECT_EQ(test::Background::slurp(s.metrics).find("0.4{"), std::string::npos);
}

// A checkpoint that cannot be written (here: files may not grow past 64 KiB, so write() fails
// with EFBIG as it would with ENOSPC on a full disk) is logged in train.log, not only on stderr,
// and leaves no temporary behind.
TEST(Train, AFailedCheckpointWriteIsLoggedInTrainLog) {
  test::TempDir dir;
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  rlimit small = old;
  small.rlim_cur = 64 << 10;
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string message;
  try {
    train(request(toy_config(2, 64), dir.str()));
  } catch (const std::exception& e) {
    message = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  ASSERT_NE(message.find("cannot write"), std::string::npos) << message;
  const auto log = test::Background::slurp(dir.path() / "train.log");
  EXPECT_NE(log.find("error: " + message), std::string::npos) << log;
  for (const auto& e : fs::directory_iterator(dir.path() / "checkpoints"))
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
}

// A betas_file schedule is stored with the run (diffusion.betas in the resolved config):
// editing or removing the file afterwards changes nothing sample and eval use.
TEST(Train, BetasFileScheduleIsStoredWithTheRun) {
  test::TempDir dir;
  const auto file = dir.path() / "betas.txt";
  std::vector<double> betas;
  for (int i = 0; i < 50; ++i) betas.push_back(1e-4 + 0.02 * std::pow(i / 49.0, 1.7));
  {
    std::ofstream out(file);
    out << std::setprecision(17);
    for (double b : betas) out << b << ",\n";
  }
  Config c = toy_config(2, 64);
  c.diffusion.schedule = ScheduleKind::Custom;
  c.diffusion.betas_file = file.string();
  c.sample.steps = 20;
  c.train.sample_steps = 20;
  const auto run = (dir.path() / "run").string();
  const auto s = train(request(c, run));
  const auto trained = make_schedule(c.diffusion).betas();
  ASSERT_EQ(trained, betas);
  auto stored = [&] {
    CheckpointReader r(resolve_checkpoint(run));
    const Config cfg = parse_config(r.meta().config_yaml, r.path());
    EXPECT_TRUE(cfg.diffusion.betas_file.empty());
    EXPECT_EQ(cfg.diffusion.timesteps, 50);
    return make_diffusion(cfg).schedule().betas();
  };
  EXPECT_EQ(stored(), betas);
  EXPECT_EQ(load_config(s.config).diffusion.betas, betas);
  std::ofstream(file) << "0.5 0.5 0.5\n";  // edited
  EXPECT_EQ(stored(), betas);
  fs::remove(file);
  EXPECT_EQ(stored(), betas);
  const auto r =
      test::run_diffuse("sample --checkpoint " + run + " --num 4 --steps 5 --out " + (dir.path() / "samples").string());
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

// Data parallelism: the process group's collectives and the bucketed gradient all-reduce (two
// ranks as two threads of this process), then whole training runs of 2 ranks against 1 rank of
// the same global batch, resume, faults and the launchers (as processes, on loopback).
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include <fmt/format.h>

#include "diffuse/config.h"
#include "diffuse/dist/grad_sync.h"
#include "diffuse/error.h"
#include "diffuse/dist/process_group.h"
#include "diffuse/models/network.h"
#include "diffuse/train/checkpoint.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace diffuse;
using diffuse::test::Background;
using diffuse::test::free_port;
using diffuse::test::run_diffuse;
using diffuse::test::TempDir;

namespace {

// Runs fn(group) on `world` ranks, one thread each, joined over TCP on loopback.
void on_ranks(int world, const std::function<void(ProcessGroup&)>& fn) {
  const int port = free_port();
  std::vector<std::thread> threads;
  std::vector<std::string> errors(world);
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        DistEnv env;
        env.rank = r;
        env.world_size = world;
        env.local_rank = r;
        env.local_world_size = world;
        env.master_port = port;
        ProcessGroup pg(env, DistOptions{"gloo", std::chrono::seconds(30), torch::kCPU});
        fn(pg);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

TEST(Dist, RankSlicesCoverTheRangeInOrder) {
  for (int64_t n : {0, 1, 5, 64, 65}) {
    for (int64_t w : {1, 2, 3, 7}) {
      int64_t next = 0;
      for (int64_t r = 0; r < w; ++r) {
        const auto s = rank_slice(n, r, w);
        EXPECT_EQ(s.begin, next);
        EXPECT_LE(s.size(), n / w + 1);
        EXPECT_GE(s.size(), n / w);
        next = s.end;
      }
      EXPECT_EQ(next, n);
    }
  }
}

TEST(Dist, EnvironmentIsReadAndCheckedAsTorchrunWritesIt) {
  ::unsetenv("RANK");
  ::unsetenv("WORLD_SIZE");
  EXPECT_FALSE(read_dist_env().launched());
  ::setenv("RANK", "1", 1);
  ::setenv("WORLD_SIZE", "4", 1);
  ::setenv("LOCAL_RANK", "1", 1);
  ::setenv("LOCAL_WORLD_SIZE", "2", 1);
  ::setenv("MASTER_ADDR", "10.0.0.7", 1);
  ::setenv("MASTER_PORT", "29400", 1);
  ::setenv("TORCHELASTIC_USE_AGENT_STORE", "True", 1);
  ::setenv("TORCHELASTIC_RESTART_COUNT", "2", 1);
  auto e = read_dist_env();
  EXPECT_EQ(e.rank, 1);
  EXPECT_EQ(e.world_size, 4);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.local_world_size, 2);
  EXPECT_EQ(e.master_addr, "10.0.0.7");
  EXPECT_EQ(e.master_port, 29400);
  EXPECT_TRUE(e.agent_store);
  EXPECT_EQ(e.restart_count, 2);
  ::setenv("RANK", "4", 1);
  try {
    read_dist_env();
    ADD_FAILURE() << "RANK 4 of WORLD_SIZE 4 accepted";
  } catch (const UsageError& err) {
    EXPECT_NE(std::string(err.what()).find("RANK='4'"), std::string::npos) << err.what();
  }
  ::setenv("RANK", "0", 1);
  ::unsetenv("MASTER_ADDR");
  EXPECT_THROW(read_dist_env(), UsageError);
  for (const char* v : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT",
                        "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RESTART_COUNT"})
    ::unsetenv(v);
}

TEST(Dist, CollectivesGiveWhatEveryRankSent) {
  on_ranks(3, [](ProcessGroup& pg) {
    const double r = static_cast<double>(pg.rank());
    auto sum = torch::full({4}, r + 1, torch::kFloat64);
    pg.all_reduce_sum(sum, "test");
    EXPECT_TRUE(torch::equal(sum, torch::full({4}, 6.0, torch::kFloat64)));
    auto mx = torch::tensor({r, -r}, torch::kFloat64);
    pg.all_reduce_max(mx, "test");
    EXPECT_TRUE(torch::equal(mx, torch::tensor({2.0, 0.0}, torch::kFloat64)));
    auto b = pg.rank() == 1 ? torch::arange(5, torch::kFloat32) : torch::zeros({5});
    pg.broadcast(b, 1, "test");
    EXPECT_TRUE(torch::equal(b, torch::arange(5, torch::kFloat32)));
    auto g = pg.all_gather(torch::full({2}, r, torch::kFloat32), "test");
    EXPECT_TRUE(torch::equal(g, torch::tensor({0.f, 0.f, 1.f, 1.f, 2.f, 2.f}).reshape({3, 2})));
    // Rows of different counts: rank r sends r + 1 rows holding r.
    auto rows = all_gather_rows(pg, torch::full({pg.rank() + 1, 2}, r, torch::kFloat32), "test");
    EXPECT_TRUE(torch::equal(rows.select(1, 0), torch::tensor({0.f, 1.f, 1.f, 2.f, 2.f, 2.f})));
    const auto strings = all_gather_strings(pg, pg.rank() == 1 ? "" : std::string(pg.rank() + 2, 'x'), "test");
    EXPECT_EQ(strings, (std::vector<std::string>{"xx", "", "xxxx"}));
    EXPECT_EQ(broadcast_bytes(pg, pg.rank() == 0 ? std::string("hello\0world", 11) : "", 0, "test"),
              std::string("hello\0world", 11));
  });
}

// Each rank's model sees its own inputs; after finish() every rank must hold the mean of the
// gradients the ranks computed alone (checked against autograd on each rank's inputs here).
void check_gradient_sync(int64_t bucket_bytes, int64_t micro_batches) {
  on_ranks(2, [&](ProcessGroup& pg) {
    // The ranks are threads of one process: every draw comes from a generator of its own (the
    // default one is shared), so both ranks start from the same weights.
    torch::nn::Sequential net(torch::nn::Linear(5, 8), torch::nn::Tanh(), torch::nn::Linear(8, 3));
    auto unused = torch::nn::Linear(2, 2);  // a parameter backward never reaches
    net->register_module("unused", unused);
    {
      torch::NoGradGuard no_grad;
      auto gen = at::detail::createCPUGenerator(7);
      for (auto& p : net->parameters()) p.copy_(torch::randn(p.sizes(), gen));
    }
    auto inputs = [](int64_t rank, int64_t micro) {
      auto gen = at::detail::createCPUGenerator(100 + 10 * rank + micro);
      return torch::randn({4, 5}, gen);
    };
    // Truth: the per-rank gradients of the sum over micro-batches, averaged over ranks.
    std::vector<torch::Tensor> expected;
    for (auto& p : net->parameters()) expected.push_back(torch::zeros_like(p));
    for (int64_t rank = 0; rank < 2; ++rank) {
      for (int64_t m = 0; m < micro_batches; ++m) {
        net->zero_grad();
        net->forward(inputs(rank, m)).pow(2).sum().backward();
        auto ps = net->parameters();
        for (size_t i = 0; i < ps.size(); ++i)
          if (ps[i].grad().defined()) expected[i] += ps[i].grad() / 2.0;
      }
    }
    for (auto& p : net->parameters()) p.mutable_grad() = torch::Tensor();
    GradientSync sync(pg, net->parameters(), bucket_bytes);
    if (bucket_bytes < 64) {
      EXPECT_GE(sync.num_buckets(), 4);
    }
    for (int64_t m = 0; m < micro_batches; ++m) {
      if (m + 1 == micro_batches) sync.arm();
      net->forward(inputs(pg.rank(), m)).pow(2).sum().backward();
    }
    sync.finish();
    auto ps = net->parameters();
    for (size_t i = 0; i < ps.size(); ++i) {
      ASSERT_TRUE(ps[i].grad().defined()) << "parameter " << i;
      EXPECT_TRUE(torch::allclose(ps[i].grad(), expected[i], 1e-6, 1e-6)) << "parameter " << i;
    }
  });
}

TEST(Dist, GradientSyncAveragesOverRanksInOneBucket) { check_gradient_sync(1 << 20, 1); }
TEST(Dist, GradientSyncAveragesOverRanksInManyBuckets) { check_gradient_sync(16, 1); }
TEST(Dist, GradientSyncCountsAccumulatedMicroBatches) { check_gradient_sync(16, 3); }

// --- whole runs ---------------------------------------------------------------------------

const char* kFashion = diffuse::test::kFashionMnistImages;

std::vector<YAML::Node> read_metrics(const fs::path& run) {
  std::vector<YAML::Node> rows;
  std::ifstream in(run / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) rows.push_back(YAML::Load(line));
  return rows;
}

std::string tiny_args(const fs::path& run, int64_t batch, const std::string& extra) {
  return fmt::format(
      "train --config {}/configs/tiny.yaml --run-dir {} --set train.batch_size={} --set train.steps=6 "
      "--set train.log_every=1 --set train.checkpoint_every=1000 --set data.limit=512 "
      "--set train.dist_timeout=30 {}",
      DIFFUSE_SOURCE_DIR, run.string(), batch, extra);
}

std::vector<torch::Tensor> final_weights(const fs::path& run) {
  CheckpointReader r(resolve_checkpoint(run.string()));
  Config cfg = parse_config(r.meta().config_yaml, "checkpoint");
  auto loaded = load_network(r, cfg, false, torch::kCPU);
  std::vector<torch::Tensor> out;
  for (const auto& p : loaded.net->parameters()) out.push_back(p.detach().clone());
  return out;
}

// 1 rank of batch 2B against 2 ranks of B: the same examples, the same draws (every rank draws
// the global batch's t and noise and takes its share), gradients averaged by all-reduce. Not bit
// for bit: the mean over 2B is a sum in another order than the mean of two means of B, and
// oneDNN blocks a batch of B otherwise than one of 2B, so losses agree to float32 rounding:
// measured here 6e-8 relative for the loss and 2e-7 for the gradient norm; the bounds below
// leave 30x for another BLAS or CPU, and weights after 6 AdamW steps at lr 2e-4 within 1e-5.
void expect_same_training(const std::string& extra, int64_t steps_to_compare = 6) {
  REQUIRE_FASHION_MNIST();
  TempDir dir;
  const auto one = dir.path() / "one", two = dir.path() / "two";
  auto a = run_diffuse(tiny_args(one, 16, extra));
  ASSERT_EQ(a.exit_code, 0) << a.err;
  auto b = run_diffuse(tiny_args(two, 8, extra) + " --nproc-per-node 2");
  ASSERT_EQ(b.exit_code, 0) << b.err;
  const auto ma = read_metrics(one), mb = read_metrics(two);
  ASSERT_EQ(ma.size(), 6u);
  ASSERT_EQ(mb.size(), 6u);
  for (int64_t i = 0; i < steps_to_compare; ++i) {
    EXPECT_EQ(mb[i]["world_size"].as<int>(), 2);
    EXPECT_EQ(mb[i]["global_batch"].as<int>(), ma[i]["global_batch"].as<int>());
    EXPECT_EQ(ma[i]["world_size"].as<int>(), 1);
    const double la = ma[i]["loss"].as<double>(), lb = mb[i]["loss"].as<double>();
    EXPECT_NEAR(la, lb, 2e-6 * std::abs(la)) << "step " << i + 1;
    const double ga = ma[i]["grad_norm"].as<double>(), gb = mb[i]["grad_norm"].as<double>();
    EXPECT_NEAR(ga, gb, 6e-6 * std::abs(ga)) << "step " << i + 1;
  }
  const auto wa = final_weights(one), wb = final_weights(two);
  ASSERT_EQ(wa.size(), wb.size());
  double worst = 0;
  for (size_t i = 0; i < wa.size(); ++i) worst = std::max(worst, (wa[i] - wb[i]).abs().max().item<double>());
  EXPECT_LT(worst, 1e-5);
  // Only rank 0 wrote the run directory.
  EXPECT_FALSE(fs::exists(two / "rank_1.log"));
}

TEST(Dist, TwoRanksTrainAsOneRankOfTheWholeBatch) { expect_same_training(""); }
TEST(Dist, TwoRanksWithGradientAccumulation) {
  expect_same_training("--set train.grad_accum=2 --set train.dist_bucket_mb=1");
}
TEST(Dist, TwoRanksWithClassConditioning) {
  expect_same_training("--set model.class_cond=true --set model.p_uncond=0.25");
}

// The loss-aware sampler leaves its warm-up within the run (10 losses for each of 10 steps of t;
// 14 steps of 16 give each t about 22): its history, fed every rank's losses in global order, must equal the
// 1-rank run's, and so must the steps drawn from it afterwards.
TEST(Dist, TwoRanksFeedTheImportanceSamplerEveryRanksLosses) {
  REQUIRE_FASHION_MNIST();
  const std::string extra =
      "--set diffusion.timestep_sampler=importance --set diffusion.timesteps=10 "
      "--set diffusion.schedule=cosine "
      "--set train.steps=14";
  TempDir dir;
  const auto one = dir.path() / "one", two = dir.path() / "two";
  ASSERT_EQ(run_diffuse(tiny_args(one, 16, extra)).exit_code, 0);
  auto b = run_diffuse(tiny_args(two, 8, extra) + " --nproc-per-node 2");
  ASSERT_EQ(b.exit_code, 0) << b.err;
  CheckpointReader ra(resolve_checkpoint(one.string())), rb(resolve_checkpoint(two.string()));
  const auto sa = ra.meta().timestep_sampler_state, sb = rb.meta().timestep_sampler_state;
  ASSERT_TRUE(sa.defined() && sb.defined());
  ASSERT_EQ(sa.sizes(), sb.sizes());
  // Past the warm-up: every t has its full history of 10 losses (the last column counts them).
  EXPECT_GE(sa.select(1, sa.size(1) - 1).min().item<double>(), 10.0) << sa;
  EXPECT_TRUE(torch::allclose(sa, sb, 1e-5, 1e-7)) << (sa - sb).abs().max();
  const auto ma = read_metrics(one), mb = read_metrics(two);
  ASSERT_EQ(ma.size(), mb.size());
  for (size_t i = 0; i < ma.size(); ++i)
    EXPECT_NEAR(ma[i]["loss"].as<double>(), mb[i]["loss"].as<double>(), 1e-5 * ma[i]["loss"].as<double>())
        << "step " << i + 1;
}

// Stopped at step 3 and resumed: the same losses, bit for bit, as the run never stopped.
TEST(Dist, TwoRankRunResumedEqualsUninterrupted) {
  REQUIRE_FASHION_MNIST();
  TempDir dir;
  const auto full = dir.path() / "full", split = dir.path() / "split";
  ASSERT_EQ(run_diffuse(tiny_args(full, 8, "") + " --nproc-per-node 2").exit_code, 0);
  auto a = run_diffuse(tiny_args(split, 8, "--set train.steps=3") + " --nproc-per-node 2");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  auto b = run_diffuse(fmt::format("train --resume {} --set train.steps=6 --nproc-per-node 2", split.string()));
  ASSERT_EQ(b.exit_code, 0) << b.err;
  const auto mf = read_metrics(full), ms = read_metrics(split);
  ASSERT_EQ(ms.size(), 6u);
  for (size_t i = 0; i < 6; ++i)
    EXPECT_EQ(mf[i]["loss"].as<std::string>(), ms[i]["loss"].as<std::string>()) << "step " << i + 1;
  const auto wf = final_weights(full), ws = final_weights(split);
  for (size_t i = 0; i < wf.size(); ++i) EXPECT_TRUE(torch::equal(wf[i], ws[i])) << "parameter " << i;
}

// A 2-rank checkpoint resumed by 1 rank of twice the batch: its data position (per rank) maps
// to the same place in the epoch, so steps 4-6 are those of a 1-rank run throughout.
TEST(Dist, CheckpointOfTwoRanksResumesOnOne) {
  REQUIRE_FASHION_MNIST();
  TempDir dir;
  const auto one = dir.path() / "one", moved = dir.path() / "moved";
  ASSERT_EQ(run_diffuse(tiny_args(one, 16, "")).exit_code, 0);
  ASSERT_EQ(run_diffuse(tiny_args(moved, 8, "--set train.steps=3") + " --nproc-per-node 2").exit_code, 0);
  auto r = run_diffuse(fmt::format("train --resume {} --set train.steps=6 --set train.batch_size=16", moved.string()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("written by 2 rank(s), this run has 1"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("0 of them seen again"), std::string::npos) << r.err;
  const auto ma = read_metrics(one), mm = read_metrics(moved);
  ASSERT_EQ(mm.size(), 6u);
  for (size_t i = 0; i < 6; ++i)
    EXPECT_NEAR(ma[i]["loss"].as<double>(), mm[i]["loss"].as<double>(), 1e-5 * ma[i]["loss"].as<double>())
        << "step " << i + 1;
  EXPECT_EQ(mm[5]["world_size"].as<int>(), 1);
}

// Two "nodes" of one process each (LOCAL_WORLD_SIZE 1, the store on node 0's address) make
// the same run as two local ranks.
TEST(Dist, TwoNodesOfOneProcessEqualTwoLocalRanks) {
  REQUIRE_FASHION_MNIST();
  TempDir dir;
  const auto local = dir.path() / "local", nodes = dir.path() / "nodes";
  ASSERT_EQ(run_diffuse(tiny_args(local, 8, "") + " --nproc-per-node 2").exit_code, 0);
  const int port = free_port();
  std::vector<std::unique_ptr<Background>> ranks;
  for (int r = 0; r < 2; ++r)
    ranks.push_back(std::make_unique<Background>(
        tiny_args(nodes, 8, ""), dir.path() / fmt::format("out{}", r), dir.path() / fmt::format("err{}", r),
        fmt::format("RANK={} WORLD_SIZE=2 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT={} "
                    "OMP_NUM_THREADS=1",
                    r, port)));
  for (int r = 0; r < 2; ++r) EXPECT_EQ(ranks[r]->wait(), 0) << ranks[r]->err();
  const auto ml = read_metrics(local), mn = read_metrics(nodes);
  ASSERT_EQ(mn.size(), 6u);
  for (size_t i = 0; i < 6; ++i)
    EXPECT_EQ(ml[i]["loss"].as<std::string>(), mn[i]["loss"].as<std::string>()) << "step " << i + 1;
}

// A rank killed with SIGKILL (or stopped with SIGSTOP, a hang): the survivor stops with an error
// naming it. A death is noticed at once (the connection breaks); a hang when the collective
// times out. The heartbeats in the store name the rank.
void expect_death_named(int victim, int signal = SIGKILL) {
  REQUIRE_FASHION_MNIST();
  TempDir dir;
  const auto run = dir.path() / "run";
  const int port = free_port();
  std::vector<std::unique_ptr<Background>> ranks;
  const int timeout = signal == SIGKILL ? 20 : 6;
  const std::string args =
      tiny_args(run, 8, fmt::format("--set train.steps=100000 --set train.dist_timeout={}", timeout));
  for (int r = 0; r < 2; ++r)
    ranks.push_back(std::make_unique<Background>(
        args, dir.path() / fmt::format("out{}", r), dir.path() / fmt::format("err{}", r),
        fmt::format("RANK={} WORLD_SIZE=2 LOCAL_RANK={} LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT={} "
                    "OMP_NUM_THREADS=1",
                    r, r, port)));
  // Wait until training has logged a few steps.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (read_metrics(run).size() < 3 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_GE(read_metrics(run).size(), 3u) << ranks[0]->err();
  ::kill(ranks[victim]->pid(), signal);
  const auto t0 = std::chrono::steady_clock::now();
  const int survivor = 1 - victim;
  const int code = ranks[survivor]->wait();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (signal == SIGSTOP) ::kill(ranks[victim]->pid(), SIGKILL);  // the hung rank is not waited for
  EXPECT_NE(code, 0);
  // A death is noticed well within the timeout (the broken connection, then a diagnosis of a few
  // seconds); a hang once the timeout has passed, plus the diagnosis. Never a silent hang.
  if (signal == SIGKILL) {
    EXPECT_LT(seconds, timeout);
  } else {
    EXPECT_LT(seconds, timeout + 10.0);
  }
  const auto err = ranks[survivor]->err();
  EXPECT_NE(err.find(fmt::format("rank {}", survivor)), std::string::npos) << err;
  EXPECT_NE(err.find(victim == 0 ? "rank 0, which hosts it" : "rank 1 stopped responding"), std::string::npos) << err;
}

TEST(Dist, KilledRankIsNamedByTheSurvivor) { expect_death_named(1); }
TEST(Dist, KilledStoreHostIsNamedByTheSurvivor) { expect_death_named(0); }
TEST(Dist, HungRankIsNamedWithinTheTimeout) { expect_death_named(1, SIGSTOP); }

// SIGTERM to the launcher: both ranks stop after the same step, one checkpoint at that step,
// exit 128 + 15.
TEST(Dist, SignalToTheLauncherStopsEveryRankAtOneStep) {
  REQUIRE_FASHION_MNIST();
  TempDir dir;
  const auto run = dir.path() / "run";
  Background launcher(tiny_args(run, 8, "--set train.steps=100000") + " --nproc-per-node 2", dir.path() / "out",
                      dir.path() / "err");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (read_metrics(run).size() < 3 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_GE(read_metrics(run).size(), 3u) << launcher.err();
  ::kill(launcher.pid(), SIGTERM);
  EXPECT_EQ(launcher.wait(), 128 + SIGTERM) << launcher.err();
  const auto ckpts = run_checkpoints(run.string());
  ASSERT_EQ(ckpts.size(), 1u);
  CheckpointReader r(ckpts.back());
  EXPECT_EQ(r.meta().step, read_metrics(run).back()["step"].as<int64_t>());
  EXPECT_EQ(r.meta().world_size, 2);
}

// torchrun (Debian's python3-torch) launches the binary itself, hosting the store in its agent.
TEST(Dist, TorchrunLaunchesTheSameRun) {
  REQUIRE_FASHION_MNIST();
  REQUIRE_TORCHRUN();
  TempDir dir;
  const auto local = dir.path() / "local", tr = dir.path() / "torchrun";
  ASSERT_EQ(run_diffuse(tiny_args(local, 8, "") + " --nproc-per-node 2").exit_code, 0);
  // Debian's torchrun 1.13 under Python 3.11 fails in its log handling without these flags.
  const std::string cmd = fmt::format(
      "cd {} && torchrun --nproc_per_node=2 --master_port={} --redirects 1 --tee 1 --log_dir {} --no_python {} {} "
      ">{}/torchrun.out 2>&1",
      dir.str(), free_port(), (dir.path() / "logs").string(), DIFFUSE_BINARY, tiny_args(tr, 8, ""), dir.str());
  const int status = std::system(cmd.c_str());
  ASSERT_EQ(status, 0) << Background::slurp(dir.path() / "torchrun.out");
  const auto ml = read_metrics(local), mt = read_metrics(tr);
  ASSERT_EQ(mt.size(), 6u);
  for (size_t i = 0; i < 6; ++i)
    EXPECT_EQ(ml[i]["loss"].as<std::string>(), mt[i]["loss"].as<std::string>()) << "step " << i + 1;
}

// torchrun --max_restarts 1: a rank killed mid-run makes torchrun restart the ranks, which
// resume from latest.pt by themselves and finish; metrics.jsonl then has each step once.
TEST(Dist, TorchrunRestartResumesFromTheLatestCheckpoint) {
  REQUIRE_FASHION_MNIST();
  REQUIRE_TORCHRUN();
  TempDir dir;
  const auto run = dir.path() / "run";
  const std::string cmd = fmt::format(
      "cd {} && exec torchrun --nproc_per_node=2 --max_restarts=1 --master_port={} --redirects 1 --tee 1 "
      "--log_dir {} --no_python {} {} >{}/torchrun.out 2>&1",
      dir.str(), free_port(), (dir.path() / "logs").string(), DIFFUSE_BINARY,
      tiny_args(run, 8, "--set train.steps=24 --set train.checkpoint_every=5"), dir.str());
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (read_metrics(run).size() < 12 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_GE(read_metrics(run).size(), 12u);
  // One of the ranks (torchrun's own command line starts with python3).
  const std::string kill = fmt::format("pkill -KILL -n -f '^{} train .*{}'", DIFFUSE_BINARY, run.string());
  ASSERT_EQ(std::system(kill.c_str()), 0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  const auto out = Background::slurp(dir.path() / "torchrun.out");
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << out;
  EXPECT_NE(out.find("restart 1 of the job: resuming from"), std::string::npos) << out;
  const auto m = read_metrics(run);
  ASSERT_EQ(m.size(), 24u);
  for (size_t i = 0; i < m.size(); ++i) EXPECT_EQ(m[i]["step"].as<size_t>(), i + 1);
}

}  // namespace

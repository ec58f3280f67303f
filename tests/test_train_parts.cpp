// The training loop's parts against their closed forms: learning-rate warm-up and cosine
// decay, the EMA's warm-up decay and its value after k updates, gradient clipping against
// LibTorch's own clip_grad_norm_, and fp16 dynamic loss scaling.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <tuple>

#include <fmt/format.h>

#include "test_util.h"

#include "diffuse/error.h"
#include "diffuse/config.h"
#include "diffuse/factory.h"
#include "diffuse/models/network.h"
#include "diffuse/train/checkpoint.h"
#include "diffuse/train/checkpoint_info.h"
#include "diffuse/train/ema.h"
#include "diffuse/train/grad_clip.h"
#include "diffuse/train/label_dropout.h"
#include "diffuse/train/loss_scale.h"
#include "diffuse/train/lr_schedule.h"
#include "diffuse/train/metrics_file.h"
#include "diffuse/train/weights_export.h"
#include "diffuse/data/file_bytes.h"
#include "diffuse/safetensors.h"

#include <nlohmann/json.hpp>

using namespace diffuse;

TEST(LrSchedule, LinearWarmupThenConstant) {
  LrSchedule s{3e-4, 10, "constant", 0.0, 100};
  for (int64_t k = 1; k <= 10; ++k) EXPECT_DOUBLE_EQ(s.at(k), 3e-4 * k / 10.0);
  for (int64_t k : {11, 50, 100, 1000}) EXPECT_DOUBLE_EQ(s.at(k), 3e-4);
  LrSchedule none{1e-3, 0, "constant", 0.0, 5};
  EXPECT_DOUBLE_EQ(none.at(1), 1e-3);
}

TEST(LrSchedule, CosineFromPeakToMinimumOverTheRemainingSteps) {
  const double lr = 2e-4, min_lr = 2e-5;
  LrSchedule s{lr, 100, "cosine", min_lr, 1100};
  EXPECT_DOUBLE_EQ(s.at(50), lr * 0.5);                // still warming up
  EXPECT_DOUBLE_EQ(s.at(100), lr);                     // end of warm-up: cos(0)
  EXPECT_NEAR(s.at(600), 0.5 * (lr + min_lr), 1e-18);  // halfway: cos(pi/2) = 0
  EXPECT_NEAR(s.at(350), min_lr + 0.5 * (lr - min_lr) * (1 + std::cos(M_PI / 4)), 1e-18);
  EXPECT_DOUBLE_EQ(s.at(1100), min_lr);  // the last step: cos(pi)
  EXPECT_DOUBLE_EQ(s.at(5000), min_lr);  // past the end it stays there
  for (int64_t k = 101; k < 1100; ++k) EXPECT_LT(s.at(k + 1), s.at(k)) << k;
}

// A one-parameter "network" whose weight we set by hand.
struct Scalar : torch::nn::Module {
  torch::Tensor w;
  explicit Scalar(double v) { w = register_parameter("w", torch::full({3}, v, torch::kFloat64)); }
};

TEST(Ema, WarmupDecayAndClosedFormAfterKUpdates) {
  auto model = std::make_shared<Scalar>(2.0);
  auto shadow = std::make_shared<Scalar>(-7.0);
  Ema ema(model, shadow, 0.999, true);
  EXPECT_TRUE(torch::equal(shadow->w, model->w));  // starts as a copy of the model
  EXPECT_DOUBLE_EQ(ema.decay_at(1), 2.0 / 11.0);
  EXPECT_DOUBLE_EQ(ema.decay_at(100), 101.0 / 110.0);
  EXPECT_DOUBLE_EQ(ema.decay_at(1000000), 0.999);
  // The model jumps to 5 and stays: after steps 1..k the shadow is 5 + prod(d_s) (2 - 5).
  {
    torch::NoGradGuard ng;
    model->w.fill_(5.0);
  }
  double prod = 1.0;
  for (int64_t k = 1; k <= 40; ++k) {
    ema.update(k);
    prod *= ema.decay_at(k);
    EXPECT_NEAR(shadow->w[0].item<double>(), 5.0 + prod * (2.0 - 5.0), 1e-12) << "step " << k;
  }
  // Without warm-up the decay is constant.
  auto m2 = std::make_shared<Scalar>(1.0), s2 = std::make_shared<Scalar>(0.0);
  Ema plain(m2, s2, 0.9, false);
  EXPECT_DOUBLE_EQ(plain.decay_at(1), 0.9);
  {
    torch::NoGradGuard ng;
    m2->w.fill_(0.0);
  }
  plain.update(1);
  plain.update(2);
  EXPECT_NEAR(s2->w[1].item<double>(), 0.81, 1e-12);
}

TEST(GradClip, MatchesLibTorchClipGradNorm) {
  torch::manual_seed(3);
  for (double max_norm : {0.5, 3.0, 1e6}) {
    std::vector<torch::Tensor> a, b;
    for (auto shape : {std::vector<int64_t>{4, 5}, std::vector<int64_t>{7}, std::vector<int64_t>{2, 3, 3}}) {
      auto p = torch::randn(shape).requires_grad_(true);
      p.mutable_grad() = torch::randn(shape);
      auto q = p.detach().clone().requires_grad_(true);
      q.mutable_grad() = p.grad().clone();
      a.push_back(p);
      b.push_back(q);
    }
    a.push_back(torch::randn({3}).requires_grad_(true));  // no gradient: ignored by both
    b.push_back(a.back().detach().clone().requires_grad_(true));
    const double want = torch::nn::utils::clip_grad_norm_(b, max_norm);
    const auto got = clip_grad_norm(a, max_norm);
    EXPECT_NEAR(got.item<double>(), want, 1e-5 * want) << max_norm;
    for (size_t i = 0; i + 1 < a.size(); ++i)
      EXPECT_TRUE(torch::allclose(a[i].grad(), b[i].grad(), 1e-6, 1e-7)) << max_norm << " tensor " << i;
    if (max_norm < want) {
      // Clipped: the new norm is max_norm (to the 1e-6 guard).
      double sq = 0;
      for (size_t i = 0; i + 1 < a.size(); ++i) sq += a[i].grad().pow(2).sum().item<double>();
      EXPECT_NEAR(std::sqrt(sq), max_norm, 1e-5 * max_norm);
    }
  }
  // max_norm <= 0 measures only.
  auto p = torch::ones({4}).requires_grad_(true);
  p.mutable_grad() = torch::full({4}, 3.0);
  EXPECT_FLOAT_EQ(clip_grad_norm({p}, 0).item<float>(), 6.0f);
  EXPECT_TRUE(torch::equal(p.grad(), torch::full({4}, 3.0)));
}

TEST(LossScale, DisabledChangesNothing) {
  DynamicLossScale off(false);
  EXPECT_FALSE(off.enabled());
  EXPECT_EQ(off.scale(), 0.0);  // what a checkpoint stores for "unused"
  auto w = torch::ones({3}, torch::requires_grad());
  const auto loss = (w * 2.0).sum();
  EXPECT_TRUE(torch::equal(off.apply(loss), loss));
  off.apply(loss).backward();
  off.unscale({w});
  EXPECT_TRUE(torch::allclose(w.grad(), torch::full({3}, 2.0)));
  off.restore(1024.0);
  EXPECT_EQ(off.scale(), 0.0);
  EXPECT_FALSE(off.update(/*overflow=*/true));  // a non-finite step is the caller's to handle
}

// The point of loss scaling: a gradient below fp16's range (1e-8 < 6e-8, the smallest
// subnormal) is flushed to zero in an fp16 backward pass, and survives when the loss is scaled
// first and the fp32 gradient divided afterwards, as under autocast (fp32 weights, fp16 maths).
TEST(LossScale, KeepsGradientsThatFp16WouldFlushToZero) {
  auto run = [](DynamicLossScale& s) {
    auto w = torch::ones({8}, torch::requires_grad());  // fp32 weights
    const auto x = torch::full({8}, 1e-4, torch::kHalf);
    const auto y = (w.to(torch::kHalf) * x).sum();     // fp16 activations
    s.apply(y.to(torch::kFloat32) * 1e-4).backward();  // dloss/dw = 1e-8
    s.unscale({w});
    return w.grad();
  };
  DynamicLossScale off(false), on(true);
  EXPECT_EQ(run(off).abs().max().item<float>(), 0.0f);  // lost without scaling
  const auto g = run(on);
  // fp16 keeps 11 significant bits of 1e-4: within 1e-3 relative of the exact 1e-8.
  EXPECT_TRUE(torch::allclose(g, torch::full({8}, 1e-8), /*rtol=*/1e-3, /*atol=*/0.0)) << g;
  // And for gradients in range, scale-then-unscale by a power of two is exact.
  auto a = torch::randn({5}, torch::requires_grad()), b = a.detach().clone().requires_grad_();
  (a * a).sum().backward();
  on.apply((b * b).sum()).backward();
  on.unscale({b});
  EXPECT_TRUE(torch::equal(a.grad(), b.grad()));
}

// GradScaler's schedule: halve on overflow (restarting the count), double after every
// growth_interval good steps in a row, and give up below the minimum scale.
TEST(LossScale, HalvesOnOverflowGrowsAfterAnIntervalAndStopsAtTheMinimum) {
  DynamicLossScale s(true, /*initial=*/16.0, /*growth_interval=*/3, /*min_scale=*/4.0);
  EXPECT_EQ(s.scale(), 16.0);
  EXPECT_TRUE(s.update(false));
  EXPECT_TRUE(s.update(false));
  EXPECT_EQ(s.scale(), 16.0);
  EXPECT_TRUE(s.update(true));  // overflow: 8, and the two good steps no longer count
  EXPECT_EQ(s.scale(), 8.0);
  EXPECT_TRUE(s.update(false));
  EXPECT_TRUE(s.update(false));
  EXPECT_EQ(s.scale(), 8.0);
  EXPECT_TRUE(s.update(false));  // third good step in a row: 16, and the count starts again
  EXPECT_EQ(s.scale(), 16.0);
  EXPECT_EQ(s.good_steps(), 0);
  EXPECT_TRUE(s.update(true));
  EXPECT_TRUE(s.update(true));
  EXPECT_EQ(s.scale(), 4.0);
  EXPECT_FALSE(s.update(true));  // 2 < min_scale: not an fp16 range problem
  EXPECT_EQ(s.scale(), 4.0);
  s.restore(0.0);  // a checkpoint of a run that did not use fp16
  EXPECT_EQ(s.scale(), 4.0);
  s.restore(512.0, /*good_steps=*/2);  // resumed two good steps into an interval
  EXPECT_EQ(s.scale(), 512.0);
  EXPECT_EQ(s.good_steps(), 2);
  EXPECT_TRUE(s.update(false));
  EXPECT_EQ(s.scale(), 1024.0);
}

// An overflowing scaled gradient is caught by the step's finite check (the clipped norm), which
// is how the trainer tells an fp16 overflow from a good step.
TEST(LossScale, OverflowShowsInTheGradientNorm) {
  DynamicLossScale s(true, /*initial=*/std::ldexp(1.0, 120));
  auto w = torch::ones({4}, torch::requires_grad());
  s.apply((w * 1e30).sum()).backward();  // 1e30 * 2^120 > float max
  s.unscale({w});
  const double norm = clip_grad_norm({w}, 1.0).item<double>();
  EXPECT_FALSE(std::isfinite(norm));
  EXPECT_TRUE(s.update(/*overflow=*/!std::isfinite(norm)));
  EXPECT_EQ(s.scale(), std::ldexp(1.0, 119));
}

// Every field of a checkpoint's metadata, the weights and the optimizer state read back as
// written.
TEST(Checkpoint, EveryFieldRoundTrips) {
  test::TempDir dir;
  torch::manual_seed(5);
  torch::nn::Linear model(3, 2), ema(3, 2), model2(3, 2), ema2(3, 2);
  torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(1e-3));
  model(torch::randn({4, 3})).sum().backward();
  opt.step();  // so the optimizer has state (exp_avg, exp_avg_sq, step)
  CheckpointMeta m;
  m.step = 1234;
  m.config_yaml = "train:\n  steps: 5\n";
  m.data.shape = {1, 28, 28};
  m.data.num_classes = 10;
  m.data_epoch = 3;
  m.data_offset = 4096;
  m.cpu_rng_state = at::detail::getDefaultCPUGenerator().get_state();
  m.timestep_sampler_state = torch::arange(12, torch::kFloat64).reshape({3, 4});
  m.loss_scale = 32768.0;
  m.loss_scale_good_steps = 1999;
  m.elapsed_seconds = 61.25;
  m.world_size = 3;
  m.data_fingerprint = "fnv1a64:0123456789abcdef";
  const auto path = (dir.path() / "c.pt").string();
  save_checkpoint(path, m, *model, ema.get(), &opt);
  CheckpointReader r(path);
  const auto& b = r.meta();
  EXPECT_EQ(b.step, 1234);
  EXPECT_EQ(b.config_yaml, m.config_yaml);
  EXPECT_EQ(b.data.shape, m.data.shape);
  EXPECT_EQ(b.data.num_classes, 10);
  EXPECT_EQ(b.data_epoch, 3);
  EXPECT_EQ(b.data_offset, 4096);
  EXPECT_TRUE(torch::equal(b.cpu_rng_state, m.cpu_rng_state));
  EXPECT_TRUE(torch::equal(b.timestep_sampler_state, m.timestep_sampler_state));
  EXPECT_FALSE(b.device_rng_state.defined());
  EXPECT_EQ(b.loss_scale, 32768.0);
  EXPECT_EQ(b.loss_scale_good_steps, 1999);
  EXPECT_EQ(b.elapsed_seconds, 61.25);
  EXPECT_EQ(b.world_size, 3);
  EXPECT_EQ(b.data_fingerprint, m.data_fingerprint);
  EXPECT_TRUE(r.has_ema());
  r.load_weights(*model2, false);
  r.load_weights(*ema2, true);
  EXPECT_TRUE(torch::equal(model2->weight, model->weight));
  EXPECT_TRUE(torch::equal(ema2->bias, ema->bias));
  torch::optim::AdamW opt2(model2->parameters(), torch::optim::AdamWOptions(1e-3));
  r.load_optimizer(opt2);
  // The same state gives the same next step.
  for (auto* o : {&opt, &opt2}) o->zero_grad();
  const auto x = torch::randn({4, 3});
  model(x).sum().backward();
  model2(x).sum().backward();
  opt.step();
  opt2.step();
  EXPECT_TRUE(torch::equal(model2->weight, model->weight));
}

// A crafted data_shape (issue 9) in a format-1 (LibTorch archive) checkpoint was read as
// contiguous int64 whatever it was: another dtype, rank, length or sizes out of range are
// refused naming the file, and a strided tensor is read by value.
TEST(Checkpoint, BadDataShapeIsRefusedNamingTheFile) {
  test::TempDir dir;
  const auto path = (dir.path() / "crafted.pt").string();
  auto write = [&](const torch::Tensor& shape) {
    torch::serialize::OutputArchive ar;
    ar.write("diffuse_checkpoint", c10::IValue(kLegacyCheckpointMagic));
    ar.write("format", c10::IValue(kLegacyCheckpointFormat));
    for (const char* key : {"step", "num_classes", "data_epoch", "data_offset"}) ar.write(key, c10::IValue(int64_t{0}));
    ar.write("config", c10::IValue(std::string("{}")));
    if (shape.defined()) ar.write("data_shape", shape);
    ar.save_to(path);
  };
  const std::vector<std::pair<torch::Tensor, std::string>> bad = {
      {torch::tensor({1.0, 28.0, 28.0}, torch::kFloat64), "Double tensor of shape [3]"},
      {torch::ones({1, 3}, torch::kLong), "of shape [1, 3]"},
      {torch::ones({5}, torch::kLong), "expected 1 to 4 int64 sizes"},
      {torch::empty({0}, torch::kLong), "of shape [0]"},
      {torch::tensor({1, 0, 28}, torch::kLong), "[1, 0, 28] has a size outside 1..1048576"},
      {torch::tensor({1, -28, 28}, torch::kLong), "outside"},
      {torch::tensor({int64_t{1}, int64_t{1} << 40}, torch::kLong), "outside"},
      {torch::Tensor(), "lacks 'data_shape'"}};
  for (const auto& [shape, what] : bad) {
    write(shape);
    try {
      CheckpointReader r(path, torch::kCPU, /*trust_legacy=*/true);
      ADD_FAILURE() << "accepted; expected " << what;
    } catch (const UsageError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(path), std::string::npos) << msg;
      EXPECT_NE(msg.find(what), std::string::npos) << msg;
    }
  }
  write(torch::tensor({1, 9, 28, 9, 28}, torch::kLong).slice(0, 0, 5, 2));
  EXPECT_EQ(CheckpointReader(path, torch::kCPU, true).meta().data.shape, (std::vector<int64_t>{1, 28, 28}));
}

// A save (issue 9) removes the temporaries that a writer killed mid-save left behind (its pid
// is in the name; this process's own pid counts as gone, since it is not writing), keeps those
// of a live writer, and never prunes the checkpoint it just wrote, even when checkpoints of
// later steps sort after it: latest.pt always names a file.
TEST(Checkpoint, SaveRemovesStaleTemporariesAndNeverPrunesTheNewCheckpoint) {
  namespace fs = std::filesystem;
  test::TempDir dir;
  const auto ck = dir.path() / "checkpoints";
  fs::create_directories(ck);
  const pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  ::waitpid(dead, nullptr, 0);
  const auto stale = ck / fmt::format(".ckpt_00000002.pt.tmp.{}.0", dead);
  const auto own = ck / fmt::format(".ckpt_00000001.pt.tmp.{}.3", ::getpid());
  const auto live = ck / ".ckpt_00000002.pt.tmp.1.0";  // pid 1 is always there
  const auto unrelated = ck / "notes.txt";
  const auto later = ck / "ckpt_00000099.pt";  // e.g. of an abandoned continuation
  for (const auto& p : {stale, own, live, unrelated, later}) std::ofstream(p) << "partial";
  torch::nn::Linear model(3, 2);
  CheckpointMeta m;
  m.step = 2;
  m.data.shape = {2};
  const auto path = save_run_checkpoint(dir.str(), /*keep=*/1, m, *model, nullptr, nullptr);
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_FALSE(fs::exists(own));
  EXPECT_TRUE(fs::exists(live));
  EXPECT_TRUE(fs::exists(unrelated));
  ASSERT_TRUE(fs::exists(path));
  EXPECT_EQ(CheckpointReader(resolve_checkpoint(dir.str())).meta().step, 2);
}

// `diffuse info` reads a checkpoint whole and fingerprints its parts: equal states give equal
// fingerprints whatever else differs (wall time), and a change to one part changes only that
// part's fingerprint.
TEST(CheckpointInfo, FingerprintsTellTheStatesApart) {
  test::TempDir dir;
  Config cfg;
  cfg.model.type = ModelType::Mlp;
  cfg.data.dataset = DatasetKind::Toy2d;
  const DataShape shape{{2}, 0};
  torch::manual_seed(3);
  auto net = make_model(cfg, shape), ema = make_model(cfg, shape);
  torch::optim::AdamW opt(net->parameters(), torch::optim::AdamWOptions(1e-3));
  net->forward(torch::randn({4, 2}), torch::zeros({4}, torch::kLong)).pow(2).sum().backward();
  opt.step();
  CheckpointMeta m;
  m.step = 7;
  m.config_yaml = to_yaml(cfg);
  m.data = shape;
  m.cpu_rng_state = at::detail::getDefaultCPUGenerator().get_state();
  m.data_fingerprint = "fnv1a64:00000000000000aa";
  auto save = [&](const std::string& name, torch::optim::AdamW* o) {
    const auto path = (dir.path() / name).string();
    save_checkpoint(path, m, *net, ema.get(), o);
    return inspect_checkpoint(path);
  };
  const auto a = save("a.pt", &opt);
  m.elapsed_seconds = 99;
  const auto b = save("b.pt", &opt);
  EXPECT_EQ(a.meta.step, 7);
  EXPECT_EQ(a.model, "mlp");
  EXPECT_EQ(a.parameters, count_parameters(*net));
  EXPECT_TRUE(a.has_ema && a.has_optimizer);
  EXPECT_EQ(b.meta.elapsed_seconds, 99);
  EXPECT_EQ(info_json(a).find("\"data_fingerprint\":\"fnv1a64:00000000000000aa\""),
            info_json(a).find("\"data_fingerprint\""));
  for (const auto& [x, y] : {std::pair{a.weights_fingerprint, b.weights_fingerprint},
                             {a.ema_fingerprint, b.ema_fingerprint},
                             {a.optimizer_fingerprint, b.optimizer_fingerprint},
                             {a.progress_fingerprint, b.progress_fingerprint}})
    EXPECT_EQ(x, y);
  {
    torch::NoGradGuard ng;
    net->parameters()[0].view(-1)[0] += 1e-3;
  }
  const auto c = save("c.pt", &opt);
  EXPECT_NE(c.weights_fingerprint, a.weights_fingerprint);
  EXPECT_EQ(c.ema_fingerprint, a.ema_fingerprint);
  EXPECT_EQ(c.optimizer_fingerprint, a.optimizer_fingerprint);
  m.step = 8;
  const auto d = save("d.pt", nullptr);
  EXPECT_NE(d.progress_fingerprint, c.progress_fingerprint);
  EXPECT_FALSE(d.has_optimizer);
  EXPECT_NE(info_text(d).find("cannot resume"), std::string::npos);
  // A truncated file is refused naming it.
  const auto bytes = test::Background::slurp(dir.path() / "a.pt");
  std::ofstream(dir.path() / "half.pt", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  try {
    inspect_checkpoint((dir.path() / "half.pt").string());
    ADD_FAILURE() << "expected UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("half.pt"), std::string::npos) << e.what();
  }
}

// Label dropout for classifier-free guidance: the drop rate is p_uncond (200000 draws, within 5
// standard errors), and exactly the dropped entries become the null label.
TEST(LabelDropout, RateIsPUncondAndDroppedLabelsAreTheNullLabel) {
  torch::manual_seed(21);
  for (double p : {0.1, 0.25}) {
    const int64_t n = 200000;
    const auto drop = draw_label_drops(n, p, torch::kCPU);
    const double rate = drop.to(torch::kFloat64).mean().item<double>();
    EXPECT_NEAR(rate, p, 5 * std::sqrt(p * (1 - p) / n)) << p;
  }
  EXPECT_FALSE(draw_label_drops(1000, 0.0, torch::kCPU).any().item<bool>());
  const auto y = torch::tensor({3, 1, 4, 1, 5}, torch::kLong);
  const auto drop = torch::tensor({false, true, false, true, true});
  const auto out = drop_labels(y, drop, 10);
  EXPECT_TRUE(torch::equal(out, torch::tensor({3, 10, 4, 10, 10}, torch::kLong)));
}

// A format-1 checkpoint (a LibTorch archive written by diffuse before checkpoints moved to
// safetensors; tests/data/legacy/README.md) is refused by default, naming `diffuse import`, and
// converted by import_safetensors with every tensor and field kept: the fingerprints that
// `diffuse info` printed for the original (checked in beside it) equal those of the new file.
TEST(Checkpoint, LegacyArchiveIsReadOnRequestAndConvertedBitForBit) {
  const auto legacy = std::string(DIFFUSE_SOURCE_DIR) + "/tests/data/legacy/toy_mlp_step3.pt";
  try {
    CheckpointReader r(legacy);
    ADD_FAILURE() << "a format-1 checkpoint was read without trust_legacy";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("diffuse import " + legacy), std::string::npos) << e.what();
  }
  EXPECT_EQ(CheckpointReader(legacy, torch::kCPU, true).format(), kLegacyCheckpointFormat);
  test::TempDir dir;
  const auto out = (dir.path() / "converted.pt").string();
#if TORCH_VERSION_MAJOR >= 2
  // The fixture was written by LibTorch 1.13; 2.x maps its optimizer state onto the wrong
  // parameters, which import refuses (docs/decisions.md), writing nothing.
  try {
    import_safetensors(legacy, out);
    ADD_FAILURE() << "LibTorch 2.x imported a LibTorch 1.13 optimizer state";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("does not match its parameters"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(out));
  return;
#endif
  import_safetensors(legacy, out);
  const auto info = inspect_checkpoint(out);
  EXPECT_EQ(CheckpointReader(out).format(), kCheckpointFormat);
  const auto want = nlohmann::json::parse(
      read_file_bytes(std::string(DIFFUSE_SOURCE_DIR) + "/tests/data/legacy/toy_mlp_step3.info.json"));
  EXPECT_EQ(info.weights_fingerprint, want["weights_fingerprint"].get<std::string>());
  EXPECT_EQ(info.ema_fingerprint, want["ema_fingerprint"].get<std::string>());
  EXPECT_EQ(info.optimizer_fingerprint, want["optimizer_fingerprint"].get<std::string>());
  EXPECT_EQ(info.progress_fingerprint, want["progress_fingerprint"].get<std::string>());
  EXPECT_EQ(info.meta.step, want["step"].get<int64_t>());
  EXPECT_EQ(info.meta.data_offset, want["data_offset"].get<int64_t>());
  EXPECT_EQ(info.meta.elapsed_seconds, want["elapsed_seconds"].get<double>());
}

// Format 2 is checked field by field: a crafted metadata value, a missing or misshapen tensor,
// or optimizer state for another model is refused naming the file and what is wrong.
TEST(Checkpoint, CraftedFormatTwoFieldsAreRefusedNamingTheFile) {
  test::TempDir dir;
  torch::manual_seed(3);
  torch::nn::Linear model(3, 2);
  torch::optim::AdamW opt(model->parameters());
  model(torch::randn({4, 3})).sum().backward();
  opt.step();
  CheckpointMeta m;
  m.step = 7;
  m.config_yaml = "{}";
  m.data.shape = {2};
  const auto good = (dir.path() / "good.pt").string();
  save_checkpoint(good, m, *model, nullptr, &opt);
  const auto st = load_safetensors(good);
  const auto path = (dir.path() / "crafted.pt").string();
  auto expect_refused = [&](const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                            const std::map<std::string, std::string>& meta, const std::string& what, bool at_open) {
    save_safetensors(path, tensors, meta);
    try {
      CheckpointReader r(path);
      torch::nn::Linear m2(3, 2);
      torch::optim::AdamW o2(m2->parameters());
      if (!at_open) {
        r.load_weights(*m2, false);
        r.load_optimizer(o2);
      }
      ADD_FAILURE() << "accepted; expected " << what;
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  const std::vector<std::tuple<std::string, std::string, std::string>> meta_cases = {
      {"step", "-1", "metadata 'step' is '-1', expected an integer >= 0"},
      {"step", "7x", "metadata 'step' is '7x'"},
      {"data_shape", "1,,28", "is not a list of sizes"},
      {"data_shape", "1,2,3,4,5", "expected 1 to 4 int64 sizes"},
      {"data_shape", "0", "outside 1..1048576"},
      {"world_size", "0", "metadata 'world_size' is '0', expected an integer >= 1"},
      {"loss_scale", "nan", "expected a finite number"},
      {"elapsed_seconds", "1e999", "expected a finite number"},
      {"format_version", "3", "has format version 3"},
      {"format", "other", "has format 'other'"}};
  for (const auto& [key, value, what] : meta_cases) {
    auto meta = st.metadata;
    meta[key] = value;
    expect_refused(st.tensors, meta, what, true);
  }
  auto without = st.metadata;
  without.erase("data_offset");
  expect_refused(st.tensors, without, "lacks metadata 'data_offset'", true);
  expect_refused(st.tensors, {}, "without a diffuse format", true);

  auto change = [&](const std::string& name, const torch::Tensor& t) {
    auto tensors = st.tensors;
    for (auto& nt : tensors)
      if (nt.first == name) nt.second = t;
    return tensors;
  };
  expect_refused(change("model.weight", torch::zeros({3, 3})), st.metadata, "'model.weight' has shape [3, 3]", false);
  expect_refused(change("optimizer.0.exp_avg", torch::zeros({2})), st.metadata, "'optimizer.0.exp_avg' is Float [2]",
                 false);
  expect_refused(change("optimizer.0.step", torch::tensor(int64_t{-2})), st.metadata, "has a bad step", false);
  auto extra = st.tensors;
  extra.emplace_back("model.extra", torch::zeros({1}));
  expect_refused(extra, st.metadata, "holds 3 'model.' tensors, this model has 2", false);
  auto other_count = st.metadata;
  other_count["optimizer.params"] = "5";
  expect_refused(st.tensors, other_count, "optimizer state for 5 parameters", false);
}

// What a resume keeps of metrics.jsonl: whole objects with an integer step up to the resumed
// step, in either spacing (the compact lines written now, the spaced ones of earlier versions).
TEST(MetricsFile, KeepsWholeLinesThroughTheStepInEitherSpacing) {
  const std::string text =
      "{\"step\": 1, \"loss\": 0.5}\n"           // spaced, kept
      "{\"step\":2,\"loss\":0.25,\"q\":null}\n"  // compact, kept
      "{\"loss\":0.1,\"inner\":{\"step\":1}}\n"  // no step of its own
      "{\"step\":\"2\",\"loss\":0.1}\n"          // step is not a number
      "{\"step\":2.5,\"loss\":0.1}\n"            // nor an integer
      "[{\"step\":1}]\n"                         // not an object
      "{\"step\":3,\"loss\":0.125}\n"            // past the step
      "{\"step\":2,\"lo";                        // torn by a crash
  EXPECT_EQ(metrics_lines_through(text, 2), "{\"step\": 1, \"loss\": 0.5}\n{\"step\":2,\"loss\":0.25,\"q\":null}\n");
  EXPECT_EQ(metrics_lines_through(text, 0), "");
  EXPECT_EQ(metrics_lines_through(text, 3),
            "{\"step\": 1, \"loss\": 0.5}\n{\"step\":2,\"loss\":0.25,\"q\":null}\n{\"step\":3,\"loss\":0.125}\n");
}

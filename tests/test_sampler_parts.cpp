// The parts under the samplers: reproducible noise, the denoiser's time/sigma maps and
// parameterisations, classifier-free guidance, sigma schedules, the registry and its checks.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <set>

#include "diffuse/error.h"
#include "diffuse/samplers/guidance.h"
#include "diffuse/samplers/registry.h"
#include "diffuse/samplers/sigma_schedule.h"
#include "diffuse/schedule.h"

using namespace diffuse;

namespace {

NoiseSchedule make_schedule(ScheduleKind kind = ScheduleKind::Linear, int64_t T = 1000, bool ztsnr = false) {
  ScheduleSpec spec;
  spec.kind = kind;
  spec.timesteps = T;
  spec.zero_terminal_snr = ztsnr;
  return NoiseSchedule::from_spec(spec);
}

// A network that predicts a fixed function of (x, t): enough to test the plumbing.
torch::Tensor toy_output(const torch::Tensor& x, const torch::Tensor& t) {
  return torch::tanh(x) * 0.5 + broadcast_to_batch(t.to(x.scalar_type()), x) * 1e-3;
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const UsageError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("not a UsageError: ") + e.what();
  }
  return "no exception";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// NoiseSource

TEST(SamplerNoise, SampleDependsOnlyOnSeedAndIndex) {
  const std::vector<int64_t> shape{2, 3, 3};
  auto all = NoiseSource::range(7, 0, 8, shape);
  auto first = NoiseSource::range(7, 0, 3, shape);
  auto rest = NoiseSource::range(7, 3, 5, shape);
  EXPECT_TRUE(torch::equal(all.initial(), torch::cat({first.initial(), rest.initial()})));
  for (int k = 0; k < 3; ++k) EXPECT_TRUE(torch::equal(all.next(), torch::cat({first.next(), rest.next()})));
  EXPECT_EQ(all.taken(), 3u);
  // Any order or subset of indices: sample 5 alone equals row 5.
  NoiseSource one(7, {5}, shape);
  EXPECT_TRUE(torch::equal(one.draw(2), all.draw(2).slice(0, 5, 6)));
  NoiseSource shuffled(7, {6, 1}, shape);
  EXPECT_TRUE(torch::equal(shuffled.initial()[0], all.initial()[6]));
  EXPECT_TRUE(torch::equal(shuffled.initial()[1], all.initial()[1]));
  // initial() is stable; reset() restarts the per-step draws.
  EXPECT_TRUE(torch::equal(all.initial(), all.draw(0)));
  all.reset();
  EXPECT_TRUE(torch::equal(all.next(), all.draw(1)));
  EXPECT_EQ(all.taken(), 1u);
  // Other dtypes are the float32 values converted.
  auto f64 = NoiseSource::range(7, 0, 8, shape, torch::kCPU, torch::kFloat64);
  EXPECT_EQ(f64.initial().scalar_type(), torch::kFloat64);
  EXPECT_TRUE(torch::equal(f64.initial(), all.initial().to(torch::kFloat64)));
  // Different seeds, indices and draws differ.
  auto other_seed = NoiseSource::range(8, 0, 8, shape);
  EXPECT_GT((other_seed.initial() - all.initial()).abs().min().item<double>(), 0.0);
  EXPECT_FALSE(torch::equal(all.draw(1), all.draw(2)));
  EXPECT_FALSE(torch::equal(all.initial()[0], all.initial()[1]));
}

// The draws are standard normal: mean, variance, kurtosis and a tail probability against their
// standard errors for 200000 values (SE of the mean 0.0022, of the variance 0.0032, of the
// fourth moment (3) ~0.022, of P(|z| > 2) = 0.0455 ~0.00047), held to 5 SE. Samples and draws
// are uncorrelated (correlation of 20000 pairs: SE 0.007).
TEST(SamplerNoise, DrawsAreStandardNormal) {
  auto src = NoiseSource::range(123, 0, 100, {2000}, torch::kCPU, torch::kFloat64);
  const auto z = src.initial();
  const double m = z.mean().item<double>(), v = z.var().item<double>();
  const double m4 = z.pow(4).mean().item<double>();
  const double tail = (z.abs() > 2.0).to(torch::kFloat64).mean().item<double>();
  EXPECT_NEAR(m, 0.0, 5 * 0.0022);
  EXPECT_NEAR(v, 1.0, 5 * 0.0032);
  EXPECT_NEAR(m4, 3.0, 5 * 0.022);
  EXPECT_NEAR(tail, 0.0455, 5 * 0.00047);
  const auto a = z.slice(0, 0, 10).reshape({-1}), b = z.slice(0, 10, 20).reshape({-1});
  const auto c = src.draw(1).slice(0, 0, 10).reshape({-1});
  auto corr = [](const torch::Tensor& x, const torch::Tensor& y) {
    const auto xc = x - x.mean(), yc = y - y.mean();
    return ((xc * yc).mean() / (xc.std() * yc.std())).item<double>();
  };
  EXPECT_NEAR(corr(a, b), 0.0, 5 * 0.007);
  EXPECT_NEAR(corr(a, c), 0.0, 5 * 0.007);
  // Stream keys of nearby (seed, index, draw) triples are all distinct.
  std::set<uint64_t> keys;
  for (uint64_t s = 0; s < 20; ++s)
    for (int64_t i = 0; i < 50; ++i)
      for (uint64_t d = 0; d < 20; ++d) keys.insert(NoiseSource::stream_key(s, i, d));
  EXPECT_EQ(keys.size(), 20u * 50u * 20u);
}

TEST(SamplerNoise, RejectsBadArguments) {
  EXPECT_THROW(NoiseSource(0, {}, {3}), std::invalid_argument);
  EXPECT_THROW(NoiseSource(0, {0}, {3, 0}), std::invalid_argument);
  EXPECT_THROW(NoiseSource(0, {0}, {3}, torch::kCPU, torch::kLong), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// Denoiser

// sigma <-> t: the training sigmas at integer t, log-linear in between, inverse of each other.
TEST(SamplerDenoiser, SigmaTimeMaps) {
  const auto sched = make_schedule(ScheduleKind::Cosine, 1000);
  Denoiser den(toy_output, GaussianDiffusion(sched));
  for (int64_t t : {0, 1, 250, 998, 999}) {
    const double ab = sched.alpha_bar()[t];
    EXPECT_NEAR(den.sigmas()[t], std::sqrt((1 - ab) / ab), 1e-12 * den.sigmas()[t]);
    EXPECT_NEAR(den.sigma_to_t(den.sigmas()[t]), static_cast<double>(t), 1e-9);
    EXPECT_DOUBLE_EQ(den.t_to_sigma(static_cast<double>(t)), den.sigmas()[t]);
  }
  // Midpoint in t = geometric mean of the neighbouring sigmas.
  EXPECT_NEAR(den.t_to_sigma(10.5), std::sqrt(den.sigmas()[10] * den.sigmas()[11]), 1e-12);
  for (double t : {0.25, 17.3, 512.75, 998.5}) EXPECT_NEAR(den.sigma_to_t(den.t_to_sigma(t)), t, 1e-9);
  // Clamped outside the schedule.
  EXPECT_EQ(den.sigma_to_t(den.sigma_min() / 10), 0.0);
  EXPECT_EQ(den.sigma_to_t(den.sigma_max() * 10), 999.0);
  EXPECT_DOUBLE_EQ(den.sigma_max(), den.sigmas().back());
}

// at_sigma(x, sigma_t) is at_step(x / sqrt(1 + sigma^2), t): the same network call and the
// same x0; its eps is dx/dsigma of the EDM ODE, (x - D) / sigma.
TEST(SamplerDenoiser, SigmaViewMatchesStepView) {
  const auto sched = make_schedule();
  for (auto p : {Prediction::Epsilon, Prediction::X0, Prediction::V, Prediction::Score, Prediction::Edm}) {
    Denoiser den(toy_output, GaussianDiffusion(sched, p));
    const auto x = torch::randn({4, 3}, torch::kFloat64);
    ReverseOptions no_clip;
    no_clip.clip_x0 = false;
    for (int64_t t : {3, 400, 999}) {
      const double sigma = den.sigmas()[t];
      const auto a = den.at_sigma(x, sigma, no_clip);
      const auto b = den.at_step(x / std::sqrt(1 + sigma * sigma), t, no_clip);
      EXPECT_LT((a.pred.x0 - b.pred.x0).abs().max().item<double>(), 1e-9) << to_string(p) << " t=" << t;
      EXPECT_LT((a.pred.eps - b.pred.eps).abs().max().item<double>(), 1e-9) << to_string(p) << " t=" << t;
      EXPECT_LT((a.pred.eps - (x - a.pred.x0) / sigma).abs().max().item<double>(), 1e-9);
      // Per-sample steps give the same as the batch-wide step.
      const auto c = den.at_steps(x / std::sqrt(1 + sigma * sigma), torch::full({4}, t, torch::kLong), no_clip);
      EXPECT_LT((c.pred.x0 - b.pred.x0).abs().max().item<double>(), 1e-12);
    }
    EXPECT_EQ(den.nfe(), 9);
  }
}

// Each prediction type is converted through the core conversions: x0 and eps agree with
// convert(), and clipping recomputes eps from the clipped x0.
TEST(SamplerDenoiser, PredictionsAndClipping) {
  const auto sched = make_schedule();
  const auto x = torch::randn({5, 2}, torch::kFloat64) * 2;
  const auto t = torch::full({5}, 40, torch::kLong);
  for (auto p : {Prediction::Epsilon, Prediction::X0, Prediction::V, Prediction::Score}) {
    GaussianDiffusion gd(sched, p);
    Denoiser den(toy_output, gd);
    ReverseOptions no_clip;
    no_clip.clip_x0 = false;
    const auto d = den.at_step(x, 40, no_clip);
    const auto ref = convert(p, toy_output(x, t.to(torch::kFloat64)), x, gd.level(t, x));
    EXPECT_LT((d.pred.x0 - ref.x0).abs().max().item<double>(), 1e-10) << to_string(p);
    EXPECT_LT((d.pred.eps - ref.eps).abs().max().item<double>(), 1e-10) << to_string(p);
    const auto c = den.at_step(x, 40);  // default: clip
    EXPECT_LE(c.pred.x0.abs().max().item<double>(), 1.0);
    EXPECT_TRUE(torch::allclose(c.pred.x0, ref.x0.clamp(-1, 1)));
    EXPECT_TRUE(torch::allclose(c.pred.eps, eps_from_x0(x, c.pred.x0, gd.level(t, x))));
    ReverseOptions dyn;
    dyn.dynamic_threshold = 0.9;
    EXPECT_TRUE(torch::allclose(den.at_step(x, 40, dyn).pred.x0, dynamic_threshold(ref.x0, 0.9)));
  }
}

// On a respaced trained schedule the network sees original_t; fractional steps interpolate it.
TEST(SamplerDenoiser, RespacedScheduleCallsOriginalTime) {
  const auto spaced = make_schedule().respace(std::vector<int64_t>{0, 100, 500, 999});
  std::vector<double> seen;
  Denoiser den(
      [&](const torch::Tensor& x, const torch::Tensor& t) {
        seen.push_back(t[0].item<double>());
        return toy_output(x, t);
      },
      GaussianDiffusion(spaced));
  const auto x = torch::randn({2, 3});
  den.at_step(x, 2);
  den.at_steps(x, torch::tensor({3, 3}));
  EXPECT_EQ(seen, (std::vector<double>{500.0, 999.0}));
  EXPECT_DOUBLE_EQ(den.model_t(1.5), 300.0);
  EXPECT_EQ(den.network(x, 7.0).size(0), 2);
  EXPECT_EQ(den.nfe(), 3);
  // A learned-variance denoiser splits off the variance channels.
  Denoiser learned(
      [](const torch::Tensor& x, const torch::Tensor& t) {
        return torch::cat({toy_output(x, t), x * 0 + 0.25}, 1);
      },
      GaussianDiffusion(make_schedule(), Prediction::Epsilon, VarianceType::LearnedRange));
  const auto out = learned.at_step(x, 10);
  EXPECT_EQ(out.pred.x0.sizes(), x.sizes());
  EXPECT_TRUE(torch::allclose(out.var_values, torch::full_like(x, 0.25)));
  // A model whose output does not fit fails clearly.
  Denoiser wrong([](const torch::Tensor& x, const torch::Tensor&) { return x.narrow(1, 0, 2); },
                 GaussianDiffusion(make_schedule()));
  EXPECT_THROW(wrong.at_step(x, 10), c10::Error);
}

// ---------------------------------------------------------------------------------------------
// Classifier-free guidance

TEST(SamplerGuidance, OneBatchedCallCombinesPredictionChannels) {
  const int64_t B = 3, C = 2, null_label = 10;
  int calls = 0;
  // Output channels: prediction = x * (label + 1), variance = label (+ 100 for the null label).
  LabeledModelFn net = [&](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& y) {
    ++calls;
    auto yf = broadcast_to_batch(y.to(x.scalar_type()), x);
    return torch::cat(
        {x * (yf + 1.0), (yf + (y == null_label).to(x.scalar_type()).reshape({-1, 1}) * 100.0).expand_as(x)}, 1);
  };
  const auto labels = torch::tensor({0, 3, 7});
  const auto x = torch::randn({B, C}, torch::kFloat64);
  const auto t = torch::full({B}, 5.0, torch::kFloat64);
  for (double w : {0.0, 2.5, 7.0}) {
    calls = 0;
    const auto out = classifier_free_guidance(net, labels, null_label, w, /*learned_variance=*/true)(x, t);
    EXPECT_EQ(calls, 1);
    ASSERT_EQ(out.sizes(), (std::vector<int64_t>{B, 2 * C}));
    const auto yf = labels.to(torch::kFloat64).reshape({-1, 1});
    const auto cond = x * (yf + 1), uncond = x * (null_label + 1.0);
    EXPECT_TRUE(torch::allclose(out.narrow(1, 0, C), uncond + w * (cond - uncond)));
    EXPECT_TRUE(torch::allclose(out.narrow(1, C, C), yf.expand({B, C})));  // the conditional half
    // Without a learned variance every channel is guided.
    const auto plain = classifier_free_guidance(net, labels, null_label, w, false)(x, t);
    const auto full_cond = net(x, t, labels), full_uncond = net(x, t, torch::full({B}, null_label));
    EXPECT_TRUE(torch::allclose(plain, full_uncond + w * (full_cond - full_uncond)));
  }
  // scale 1: just the conditional network, batch B.
  calls = 0;
  const auto one = classifier_free_guidance(net, labels, null_label, 1.0, true)(x, t);
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(torch::equal(one, net(x, t, labels)));
  // Label count must match the batch.
  EXPECT_THROW(classifier_free_guidance(net, torch::tensor({1, 2}), null_label, 3.0, true)(x, t), c10::Error);
}

// Guidance drives a sampler through a Denoiser: the NFE counts guided calls once.
TEST(SamplerGuidance, WorksInsideSamplers) {
  LabeledModelFn net = [](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& y) {
    return toy_output(x, t) + broadcast_to_batch(y.to(x.scalar_type()), x) * 0.01;
  };
  Denoiser den(classifier_free_guidance(net, torch::tensor({1, 2, 3, 4}), 0, 3.0, false),
               GaussianDiffusion(make_schedule()));
  auto noise = NoiseSource::range(0, 0, 4, {2});
  SamplerOptions opts;
  opts.steps = 5;
  const auto x = run_sampler("dpmpp-2m", den, noise, opts);
  EXPECT_EQ(x.sizes(), (std::vector<int64_t>{4, 2}));
  EXPECT_EQ(den.nfe(), 5);
}

// Sampling with the guided network equals sampling a network that is the hand-made mixture
// uncond + w (cond - uncond), for a deterministic and a stochastic sampler with the same noise.
TEST(SamplerGuidance, GuidedSamplingIsSamplingTheCombinedModel) {
  const int64_t null_label = 10;
  LabeledModelFn net = [](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& y) {
    const auto yf = broadcast_to_batch(y.to(x.scalar_type()), x);
    return toy_output(x, t) * (1.0 + 0.05 * yf) + 0.02 * yf;
  };
  const auto labels = torch::tensor({1, 4, 7}, torch::kLong);
  const double w = 2.5;
  ModelFn by_hand = [&](const torch::Tensor& x, const torch::Tensor& t) {
    const auto cond = net(x, t, labels), uncond = net(x, t, torch::full({3}, null_label, torch::kLong));
    return uncond + w * (cond - uncond);
  };
  for (const std::string name : {"ddim", "euler-ancestral", "ddpm"}) {
    const Denoiser guided(classifier_free_guidance(net, labels, null_label, w, false),
                          GaussianDiffusion(make_schedule()));
    const Denoiser combined(by_hand, GaussianDiffusion(make_schedule()));
    auto a = NoiseSource::range(3, 0, 3, {2}, torch::kCPU, torch::kFloat64);
    auto b = NoiseSource::range(3, 0, 3, {2}, torch::kCPU, torch::kFloat64);
    SamplerOptions o;
    o.steps = 8;
    o.clip_x0 = false;
    const auto x = run_sampler(name, guided, a, o), y = run_sampler(name, combined, b, o);
    EXPECT_LT((x - y).abs().max().item<double>(), 1e-12) << name;
    // and guidance changes the samples
    const Denoiser plain(with_labels(net, labels), GaussianDiffusion(make_schedule()));
    auto c = NoiseSource::range(3, 0, 3, {2}, torch::kCPU, torch::kFloat64);
    EXPECT_GT((run_sampler(name, plain, c, o) - x).abs().max().item<double>(), 1e-4) << name;
  }
}

// ---------------------------------------------------------------------------------------------
// Sigma schedules

TEST(SamplerSigmas, KarrasExponentialAndModel) {
  // Karras eq. 5 for n = 3, rho = 2: midpoint of sqrt(sigma) squared.
  const auto k = karras_sigmas(3, 0.01, 100.0, 2.0);
  ASSERT_EQ(k.size(), 4u);
  EXPECT_DOUBLE_EQ(k[0], 100.0);
  EXPECT_NEAR(k[1], std::pow((10.0 + 0.1) / 2, 2), 1e-12);
  EXPECT_DOUBLE_EQ(k[2], 0.01);
  EXPECT_EQ(k[3], 0.0);
  // rho = 1 is linear in sigma; exponential is geometric.
  const auto lin = karras_sigmas(5, 1.0, 5.0, 1.0);
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(lin[i], 5.0 - i, 1e-12);
  const auto ex = exponential_sigmas(3, 0.01, 100.0);
  EXPECT_NEAR(ex[1], 1.0, 1e-12);
  EXPECT_EQ(ex.size(), 4u);
  EXPECT_EQ(karras_sigmas(1, 0.01, 100.0, 7.0), (std::vector<double>{100.0, 0.0}));

  Denoiser den(toy_output, GaussianDiffusion(make_schedule()));
  SamplerOptions opts;
  opts.steps = 10;
  auto s = sampling_sigmas(den, opts, "euler");
  EXPECT_EQ(s.size(), 11u);
  EXPECT_DOUBLE_EQ(s.front(), den.sigma_max());
  EXPECT_DOUBLE_EQ(s[9], den.sigma_min());
  for (size_t i = 0; i + 1 < s.size(); ++i) EXPECT_GT(s[i], s[i + 1]);
  opts.sigmas = "model";
  s = sampling_sigmas(den, opts, "euler");
  const auto kept = space_timesteps(1000, "linspace:10");
  for (size_t i = 0; i < kept.size(); ++i) EXPECT_DOUBLE_EQ(s[i], den.sigmas()[kept[kept.size() - 1 - i]]);
  // A spacing selects training steps whatever the sigmas option says.
  opts.sigmas = "karras";
  opts.spacing = "list:0,10,999";
  EXPECT_EQ(sampling_sigmas(den, opts, "heun"),
            (std::vector<double>{den.sigmas()[999], den.sigmas()[10], den.sigmas()[0], 0.0}));
}

// ---------------------------------------------------------------------------------------------
// Registry and option checks

TEST(SamplerRegistry, NamesAndErrors) {
  EXPECT_EQ(sampler_names(),
            (std::vector<std::string>{"ddpm", "ddim", "dpmpp-2m", "euler", "euler-ancestral", "heun"}));
  Denoiser den(toy_output, GaussianDiffusion(make_schedule(ScheduleKind::Linear, 100)));
  auto noise = NoiseSource::range(0, 0, 2, {3});
  auto run = [&](const std::string& name, const SamplerOptions& o) {
    return message_of([&] { run_sampler(name, den, noise, o); });
  };
  const auto unknown = run("plms", SamplerOptions{});
  EXPECT_NE(unknown.find("plms"), std::string::npos);
  for (const auto& n : sampler_names()) EXPECT_NE(unknown.find(n), std::string::npos) << unknown;

  for (const auto& name : sampler_names()) {
    SamplerOptions o;
    o.steps = 0;
    EXPECT_NE(run(name, o).find("'steps'"), std::string::npos) << name << ": " << run(name, o);
    o.steps = 10;
    o.eta = -0.5;
    EXPECT_NE(run(name, o).find("'eta'"), std::string::npos) << name;
    o.eta.reset();
    o.dynamic_threshold = 1.5;
    EXPECT_NE(run(name, o).find("'dynamic_threshold'"), std::string::npos) << name;
    o.dynamic_threshold = 0;
    o.spacing = "bogus";
    EXPECT_NE(run(name, o).find("'spacing'"), std::string::npos) << name << ": " << run(name, o);
    o.spacing = "ddim40";  // no integer stride gives 40 of 100 steps (50 at 2, 34 at 3)
    EXPECT_NE(run(name, o).find("'spacing'"), std::string::npos) << name;
    o.spacing.clear();
    EXPECT_EQ(run(name, o), "no exception") << name;
  }
  // Discrete samplers cannot take more steps than the schedule has; karras sigmas can.
  SamplerOptions many;
  many.steps = 101;
  for (const std::string name : {"ddpm", "ddim"}) {
    const auto msg = run(name, many);
    EXPECT_NE(msg.find("'steps'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("100"), std::string::npos) << msg;
  }
  EXPECT_EQ(run("heun", many), "no exception");
  many.sigmas = "model";
  EXPECT_NE(run("heun", many).find("'steps'"), std::string::npos);
  SamplerOptions bad_sigmas;
  bad_sigmas.sigmas = "cosine";
  const auto msg = run("euler", bad_sigmas);
  for (const auto& n : sigma_schedule_names()) EXPECT_NE(msg.find(n), std::string::npos) << msg;
  SamplerOptions bad_rho;
  bad_rho.rho = 0;
  EXPECT_NE(run("heun", bad_rho).find("'rho'"), std::string::npos);
}

// Bare spacing words take their count from steps; explicit counts win.
// The registry's flags say what each sampler reads; check them against behaviour (changing eta,
// or the sigma schedule, changes the samples exactly for the samplers that claim to read it),
// and check_explicit_options refuses exactly the flags a sampler would ignore.
TEST(SamplerRegistry, FlagsMatchWhatEachSamplerReads) {
  Denoiser den(toy_output, GaussianDiffusion(make_schedule(ScheduleKind::Linear, 100)));
  auto sample = [&](const std::string& name, std::optional<double> eta, const std::string& sigmas) {
    auto noise = NoiseSource::range(7, 0, 4, {3});
    SamplerOptions o;
    o.steps = 6;
    o.eta = eta;
    o.sigmas = sigmas;
    return run_sampler(name, den, noise, o);
  };
  for (const auto& e : sampler_registry()) {
    const auto base = sample(e.name, 0.3, "karras");
    const bool eta_matters = !torch::equal(base, sample(e.name, 0.9, "karras"));
    const bool sigmas_matter = !torch::equal(base, sample(e.name, 0.3, "exponential"));
    EXPECT_EQ(e.takes_eta, eta_matters) << e.name;
    EXPECT_EQ(e.takes_sigmas, sigmas_matter) << e.name;
    const std::string ok = "no exception";
    EXPECT_EQ(message_of([&] { check_explicit_options(e.name, true, false); }) == ok, e.takes_eta) << e.name;
    EXPECT_EQ(message_of([&] { check_explicit_options(e.name, false, true); }) == ok, e.takes_sigmas) << e.name;
    EXPECT_EQ(message_of([&] { check_explicit_options(e.name, false, false); }), ok) << e.name;
  }
  const auto msg = message_of([] { check_explicit_options("dpmpp-2m", true, false); });
  EXPECT_NE(msg.find("ddim, euler-ancestral"), std::string::npos) << msg;  // names the ones that take it
}

TEST(SamplerRegistry, SpacingResolution) {
  SamplerOptions o;
  o.steps = 4;
  o.spacing = "trailing";
  EXPECT_EQ(resolve_spacing(o, 100, "", "ddim"), (std::vector<int64_t>{24, 49, 74, 99}));
  o.spacing = "ddim";
  EXPECT_EQ(resolve_spacing(o, 100, "", "ddim"), (std::vector<int64_t>{0, 25, 50, 75}));
  o.spacing = "linspace:3";
  EXPECT_EQ(resolve_spacing(o, 100, "", "ddim"), (std::vector<int64_t>{0, 50, 99}));
  o.spacing.clear();
  EXPECT_EQ(resolve_spacing(o, 100, "leading", "ddim"), (std::vector<int64_t>{0, 25, 50, 75}));
}

// Results are ordinary tensors (not inference tensors): callers may modify them in place.
TEST(SamplerRegistry, ResultsAreWritableAndOnStepReports) {
  Denoiser den(toy_output, GaussianDiffusion(make_schedule(ScheduleKind::Linear, 50)));
  for (const auto& name : sampler_names()) {
    auto noise = NoiseSource::range(0, 0, 2, {3});
    SamplerOptions o;
    o.steps = 5;
    int64_t calls = 0;
    o.on_step = [&](const StepInfo& s) {
      EXPECT_EQ(s.step, calls++);
      EXPECT_EQ(s.total, 5);
      EXPECT_GE(s.t, 0.0);
      EXPECT_LE(s.t, 49.0);
      EXPECT_GT(s.sigma, 0.0);
    };
    auto x = run_sampler(name, den, noise, o);
    EXPECT_EQ(calls, 5) << name;
    EXPECT_FALSE(x.is_inference()) << name;
    EXPECT_EQ(x.scalar_type(), torch::kFloat32) << name;  // the noise dtype is kept throughout
    x.add_(1.0);                                          // would throw for an inference tensor
    EXPECT_LE(x.max().item<double>(), 2.0);
  }
}

// Zero-terminal-SNR schedules (abar_{T-1} = 0): v-prediction samples with ddim and ddpm (the
// exact model for data x0 = 0.3 returns 0.3); the sigma-space samplers cannot start from
// sigma = inf and say so.
TEST(SamplerRegistry, ZeroTerminalSnr) {
  const auto sched = make_schedule(ScheduleKind::Linear, 100, /*ztsnr=*/true);
  ASSERT_EQ(sched.alpha_bar().back(), 0.0);
  // An exact v-model for data x0 = 0.3: v = a eps - s x0 with eps = (x - a x0)/s.
  Denoiser den(
      [&](const torch::Tensor& x, const torch::Tensor& t) {
        auto ab = torch::from_blob(const_cast<double*>(sched.alpha_bar().data()), {100}, torch::kFloat64)
                      .index_select(0, t.to(torch::kLong))
                      .reshape({-1, 1});
        auto a = ab.sqrt(), s = (1 - ab).sqrt();
        return a * ((x - a * 0.3) / s) - s * 0.3;
      },
      GaussianDiffusion(sched, Prediction::V));
  for (const std::string name : {"ddim", "ddpm"}) {
    auto noise = NoiseSource::range(0, 0, 4, {2}, torch::kCPU, torch::kFloat64);
    SamplerOptions o;
    o.steps = 10;
    const auto x = run_sampler(name, den, noise, o);
    EXPECT_TRUE(torch::allclose(x, torch::full_like(x, 0.3), 1e-6, 1e-6)) << name << x;
  }
  for (const std::string name : {"dpmpp-2m", "euler", "euler-ancestral", "heun"}) {
    auto noise = NoiseSource::range(0, 0, 4, {2}, torch::kCPU, torch::kFloat64);
    SamplerOptions o;
    o.steps = 10;
    const auto msg = message_of([&] { run_sampler(name, den, noise, o); });
    EXPECT_NE(msg.find("zero terminal SNR"), std::string::npos) << msg;
  }
}

// The field's own programs as the oracle: numbers that OpenAI's improved-diffusion and
// k-diffusion produced on fixed inputs (tests/reference/make_reference.py ran them; README.md
// there names the commits), compared with ours in float64 to 1e-9 relative. Where they drew
// noise, the same draws are fed here (NoiseSource::supplied, BpdOptions::noise).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "diffuse/diffusion.h"
#include "diffuse/eval/bpd.h"
#include "diffuse/losses.h"
#include "diffuse/samplers/ddim.h"
#include "diffuse/samplers/ddpm.h"
#include "diffuse/samplers/dpmpp_2m.h"
#include "diffuse/samplers/euler.h"
#include "diffuse/samplers/heun.h"
#include "diffuse/samplers/sigma_schedule.h"
#include "diffuse/schedule.h"
#include "gaussian_data.h"

using namespace diffuse;
using json = nlohmann::json;

namespace {

constexpr double kRtol = 1e-9, kAtol = 1e-12;

const json& reference(const char* name) {
  static std::map<std::string, json> cache;
  auto it = cache.find(name);
  if (it == cache.end()) {
    std::ifstream f(std::string(DIFFUSE_SOURCE_DIR) + "/tests/reference/" + name);
    EXPECT_TRUE(f.good()) << name;
    it = cache.emplace(name, json::parse(f)).first;
  }
  return it->second;
}

torch::Tensor f64(const json& values, std::vector<int64_t> shape = {}) {
  auto v = values.get<std::vector<double>>();
  auto t = torch::tensor(v, torch::kFloat64);
  return shape.empty() ? t : t.reshape(shape);
}

std::vector<int64_t> shape_of(const json& j) { return j.get<std::vector<int64_t>>(); }

// Every element within kAtol + kRtol |expected|.
void expect_close(const torch::Tensor& actual, const torch::Tensor& expected, const std::string& what,
                  double rtol = kRtol) {
  ASSERT_EQ(actual.numel(), expected.numel()) << what;
  const auto a = actual.to(torch::kFloat64).reshape(-1), e = expected.reshape(-1);
  const auto excess = ((a - e).abs() - (kAtol + rtol * e.abs())).max().item<double>();
  EXPECT_LE(excess, 0.0) << what << ": max |diff| " << (a - e).abs().max().item<double>();
}
void expect_close(const std::vector<double>& actual, const json& expected, const std::string& what) {
  expect_close(torch::tensor(actual, torch::kFloat64), f64(expected), what);
}

// make_reference.py's FakeModel: a fixed smooth function of (x, t), 2C channels when learned.
torch::Tensor fake_output(const torch::Tensor& x, const torch::Tensor& t, bool learned) {
  std::vector<int64_t> view(static_cast<size_t>(x.dim()), 1);
  view[0] = -1;
  const auto tt = t.to(torch::kFloat64).view(view);
  auto out = 0.8 * torch::tanh(x * torch::cos(tt / 300.0)) + 0.05 * torch::sin(3.0 * x + tt / 100.0);
  if (learned) out = torch::cat({out, torch::tanh(0.5 * x + tt / 700.0 - 0.5)}, 1);
  return out;
}
ModelFn fake_model(bool learned) {
  return [learned](const torch::Tensor& x, const torch::Tensor& t) { return fake_output(x, t, learned); };
}

NoiseSchedule schedule(const std::string& kind, int64_t T) {
  ScheduleSpec s;
  s.kind = parse_schedule_kind(kind);
  s.timesteps = T;
  return NoiseSchedule::from_spec(s);
}

Prediction prediction(const std::string& name) { return name == "x0" ? Prediction::X0 : Prediction::Epsilon; }

std::vector<torch::Tensor> draws(const json& list, const std::vector<int64_t>& shape) {
  std::vector<torch::Tensor> v;
  for (const auto& d : list) v.push_back(f64(d, shape));
  return v;
}

}  // namespace

TEST(ReferenceImprovedDiffusion, SchedulesAndTheirPosteriorCoefficients) {
  for (const auto& [key, r] : reference("improved_diffusion.json")["schedules"].items()) {
    SCOPED_TRACE(key);
    const auto sched = schedule(key.substr(0, key.find('_')), r["T"].get<int64_t>());
    const auto at = r["at"].get<std::vector<size_t>>();
    auto pick = [&](const std::vector<double>& v) {
      std::vector<double> out;
      for (auto i : at) out.push_back(v[i]);
      return out;
    };
    expect_close(pick(sched.betas()), r["betas"], "betas");
    expect_close(pick(sched.alpha_bar()), r["alphas_cumprod"], "alpha_bar");
    expect_close(pick(sched.alpha_bar_prev()), r["alphas_cumprod_prev"], "alpha_bar_prev");
    expect_close(pick(sched.posterior_variance()), r["posterior_variance"], "posterior_variance");
    expect_close(pick(sched.posterior_log_variance_clipped()), r["posterior_log_variance_clipped"], "log variance");
    expect_close(pick(sched.posterior_mean_coef1()), r["posterior_mean_coef1"], "coef1");
    expect_close(pick(sched.posterior_mean_coef2()), r["posterior_mean_coef2"], "coef2");
    double sum_b = 0, sum_log_ab = 0;
    for (size_t i = 0; i < sched.betas().size(); ++i)
      sum_b += sched.betas()[i], sum_log_ab += std::log(sched.alpha_bar()[i]);
    EXPECT_NEAR(sum_b, r["sum_betas"].get<double>(), 1e-9 * std::abs(sum_b));
    EXPECT_NEAR(sum_log_ab, r["sum_log_alphas_cumprod"].get<double>(), 1e-9 * std::abs(sum_log_ab));
  }
}

TEST(ReferenceImprovedDiffusion, RespacingKeepsTheSameStepsAndBetas) {
  for (const auto& [key, r] : reference("improved_diffusion.json")["respacing"].items()) {
    SCOPED_TRACE(key);
    const auto T = r["T"].get<int64_t>();
    const auto spec = r["spec"].get<std::string>();
    EXPECT_EQ(space_timesteps(T, spec), r["kept"].get<std::vector<int64_t>>());
    expect_close(schedule("cosine", T).respace(spec).betas(), r["cosine_betas"], "respaced betas");
  }
}

TEST(ReferenceImprovedDiffusion, ForwardProcessAndPosterior) {
  const auto& r = reference("improved_diffusion.json")["process"];
  const auto shape = shape_of(r["shape"]);
  const auto x0 = f64(r["x0"], shape), noise = f64(r["noise"], shape);
  const auto t = torch::tensor(r["t"].get<std::vector<int64_t>>(), torch::kLong);
  const GaussianDiffusion d(schedule("linear", 1000));
  const auto x_t = d.q_sample(x0, t, noise);
  expect_close(x_t, f64(r["x_t"]), "q_sample");
  const auto q = d.q_mean_variance(x0, t);
  expect_close(q.mean, f64(r["q_mean"]), "q mean");
  expect_close(q.variance.expand_as(x0), f64(r["q_variance"]), "q variance");
  expect_close(q.log_variance.expand_as(x0), f64(r["q_log_variance"]), "q log variance");
  const auto p = d.q_posterior(x0, x_t, t);
  expect_close(p.mean, f64(r["posterior_mean"]), "posterior mean");
  expect_close(p.variance.expand_as(x0), f64(r["posterior_variance"]), "posterior variance");
  expect_close(p.log_variance.expand_as(x0), f64(r["posterior_log_variance"]), "posterior log variance");
}

// p(x_{t-1} | x_t) for every variance type and both mean parameterisations, clipped and not,
// on an x_t large enough that clipping changes x0 at some elements.
TEST(ReferenceImprovedDiffusion, ReverseStepForEveryVarianceType) {
  const auto& ref = reference("improved_diffusion.json");
  const auto shape = shape_of(ref["process"]["shape"]);
  const auto t = torch::tensor(ref["process"]["t"].get<std::vector<int64_t>>(), torch::kLong);
  int checked = 0;
  for (const auto& r : ref["reverse"]) {
    const auto vname = r["variance"].get<std::string>(), pname = r["prediction"].get<std::string>();
    const bool clip = r["clip"].get<bool>();
    SCOPED_TRACE(vname + " " + pname + (clip ? " clipped" : ""));
    const GaussianDiffusion d(schedule("linear", 1000), prediction(pname), parse_variance_type(vname));
    const auto x_t = f64(r["x_t"], shape);
    ReverseOptions o;
    o.clip_x0 = clip;
    const auto st = d.p_mean_variance(fake_output(x_t, t, is_learned(d.variance_type())), x_t, t, o);
    expect_close(st.mean, f64(r["mean"]), "mean");
    expect_close(st.variance.expand_as(x_t), f64(r["variance_out"]), "variance");
    expect_close(st.log_variance.expand_as(x_t), f64(r["log_variance"]), "log variance");
    expect_close(st.x0_pred, f64(r["pred_xstart"]), "x0");
    ++checked;
  }
  EXPECT_EQ(checked, 16);
}

// _vb_terms_bpd: the KL terms and, at t = 0, the decoder NLL with improved-diffusion's tanh
// approximation of the normal CDF.
TEST(ReferenceImprovedDiffusion, VariationalBoundTerms) {
  const auto& ref = reference("improved_diffusion.json");
  const auto shape = shape_of(ref["process"]["shape"]);
  const auto t = torch::tensor(ref["process"]["t"].get<std::vector<int64_t>>(), torch::kLong);
  for (const auto& r : ref["vb_terms"]) {
    const auto vname = r["variance"].get<std::string>(), pname = r["prediction"].get<std::string>();
    SCOPED_TRACE(vname + " " + pname);
    const GaussianDiffusion d(schedule("linear", 1000), prediction(pname), parse_variance_type(vname));
    const auto x0 = f64(r["x0"], shape), x_t = f64(r["x_t"], shape);
    const auto term =
        vlb_term_bpd(d, fake_output(x_t, t, is_learned(d.variance_type())), x0, x_t, t, {}, DecoderCdf::Tanh);
    expect_close(term.bpd, f64(r["bpd"]), "bpd");
    expect_close(term.x0_pred, f64(r["pred_xstart"]), "x0");
  }
}

// training_losses for MSE (simple, and hybrid with learned_range), RESCALED_MSE, KL and
// RESCALED_KL, on the cosine schedule with T = 4000. Ours: hybrid with lambda = 1/T is
// improved-diffusion's MSE with a learned variance, lambda = 0.001 its RESCALED_MSE (vb x T/1000);
// kl is RESCALED_KL (T L_t), so its KL is ours / T. Our losses run in float32: 1e-5 for the
// MSE, 1e-4 for terms with a vb part (at t = T-1 the KL is 341 bits/dim and float32 cancellation
// in it leaves 2e-5 relative). Our
// decoder term (t = 0) uses the exact normal CDF where improved-diffusion trains with its tanh
// approximation, so terms with a vb part are compared at t > 0.
TEST(ReferenceImprovedDiffusion, TrainingLossesAndTheirScales) {
  const auto& ref = reference("improved_diffusion.json");
  const auto shape = shape_of(ref["process"]["shape"]);
  int checked = 0;
  for (const auto& r : ref["training_losses"]) {
    const auto lname = r["loss_type"].get<std::string>(), vname = r["variance"].get<std::string>();
    SCOPED_TRACE(lname + " " + vname);
    const int64_t T = r["T"].get<int64_t>();
    const GaussianDiffusion d(schedule("cosine", T), Prediction::Epsilon, parse_variance_type(vname));
    const auto t = torch::tensor(r["t"].get<std::vector<int64_t>>(), torch::kLong);
    const auto x0 = f64(r["x0"], shape), noise = f64(r["noise"], shape);
    const auto x_t = d.q_sample(x0, t, noise);
    LossConfig cfg;
    cfg.type = lname == "mse" && vname == "fixed_small" ? LossType::Simple
               : lname.find("kl") != std::string::npos  ? LossType::Kl
                                                        : LossType::Hybrid;
    cfg.hybrid_lambda = lname == "mse" ? 1.0 / static_cast<double>(T) : 0.001;
    const auto l = training_losses(d, cfg, fake_output(x_t, t, is_learned(d.variance_type())), x0, x_t, t, noise);
    const double scale = lname == "kl" ? 1.0 / static_cast<double>(T) : 1.0;
    const bool vb_in_loss = cfg.type != LossType::Simple;
    const auto rows = vb_in_loss ? torch::arange(1, 4, torch::kLong) : torch::arange(0, 4, torch::kLong);
    const double rtol = vb_in_loss ? 1e-4 : 1e-5;
    expect_close((l.loss * scale).index_select(0, rows), f64(r["loss"]).index_select(0, rows), "loss", rtol);
    if (!r["mse"].is_null()) expect_close(l.mse, f64(r["mse"]), "mse", 1e-5);
    if (!r["vb"].is_null()) expect_close(l.vb.index_select(0, rows), f64(r["vb"]).index_select(0, rows), "vb", 1e-4);
    ++checked;
  }
  EXPECT_EQ(checked, 5);
}

// calc_bpd_loop on a 10-step respacing, the model seeing the original steps, its noise fed.
TEST(ReferenceImprovedDiffusion, WholeBoundOnARespacedSchedule) {
  const auto& ref = reference("improved_diffusion.json");
  const auto shape = shape_of(ref["bpd_shape"]);
  for (const auto& r : ref["bpd_loop"]) {
    const auto vname = r["variance"].get<std::string>();
    SCOPED_TRACE(vname);
    const GaussianDiffusion d(schedule("linear", 1000).respace(r["spec"].get<std::string>()), Prediction::Epsilon,
                              parse_variance_type(vname));
    const int64_t T = d.num_timesteps();
    const auto noise = draws(r["noise_t_desc"], shape);  // drawn for t = T-1 down to 0
    BpdOptions o;
    o.decoder_cdf = DecoderCdf::Tanh;
    o.noise = [&](int64_t t) { return noise[static_cast<size_t>(T - 1 - t)]; };
    const auto res = calc_bpd_loop(d, fake_model(is_learned(d.variance_type())), f64(r["x0"], shape), {}, o);
    expect_close(res.total, f64(r["total_bpd"]), "total");
    expect_close(res.prior, f64(r["prior_bpd"]), "prior");
    // improved-diffusion stacks the per-t columns from t = T-1 down.
    const auto desc = torch::arange(T - 1, -1, -1, torch::kLong);
    expect_close(res.terms.index_select(1, desc), f64(r["vb"]), "terms");
    expect_close(res.x0_mse.index_select(1, desc), f64(r["xstart_mse"]), "x0 mse");
    expect_close(res.eps_mse.index_select(1, desc), f64(r["mse"]), "eps mse");
  }
}

namespace {
// x before each step of a sampler run, then its result.
std::vector<torch::Tensor> run_recorded(const std::function<torch::Tensor(SamplerOptions&)>& run, SamplerOptions o) {
  std::vector<torch::Tensor> xs;
  o.on_step = [&](const StepInfo& s) { xs.push_back(s.x_t.clone()); };
  xs.push_back(run(o));
  return xs;
}
}  // namespace

// Ancestral sampling on an 8-step respacing: every intermediate x_t, for both fixed variances.
TEST(ReferenceImprovedDiffusion, DdpmTrajectoriesWithFedNoise) {
  const auto& ref = reference("improved_diffusion.json");
  const auto shape = shape_of(ref["sampling_shape"]);
  for (const auto& r : ref["ddpm"]) {
    const auto vname = r["variance"].get<std::string>();
    SCOPED_TRACE(vname);
    const Denoiser den(fake_model(false),
                       GaussianDiffusion(schedule("linear", 1000), Prediction::Epsilon, parse_variance_type(vname)));
    auto noise = NoiseSource::supplied(draws(r["noise"], shape));
    SamplerOptions o;
    o.spacing = r["spec"].get<std::string>();
    o.steps = 8;
    const auto xs = run_recorded([&](SamplerOptions& opts) { return sample_ddpm(den, noise, opts); }, o);
    const auto& traj = r["trajectory"];  // after each step
    ASSERT_EQ(xs.size(), traj.size() + 1);
    for (size_t k = 0; k < traj.size(); ++k) expect_close(xs[k + 1], f64(traj[k]), "after step " + std::to_string(k));
  }
}

// DDIM for eta 0, 0.5 and 1 (Song et al. eq. 12 with eq. 16's sigma) on ddim10, noise fed.
TEST(ReferenceImprovedDiffusion, DdimTrajectoriesForEveryEta) {
  const auto& ref = reference("improved_diffusion.json");
  const auto shape = shape_of(ref["sampling_shape"]);
  const Denoiser den(fake_model(false), GaussianDiffusion(schedule("linear", 1000)));
  for (const auto& r : ref["ddim"]) {
    const double eta = r["eta"].get<double>();
    SCOPED_TRACE("eta " + std::to_string(eta));
    auto noise = NoiseSource::supplied(draws(r["noise"], shape));
    SamplerOptions o;
    o.spacing = r["spec"].get<std::string>();
    o.steps = 10;
    o.eta = eta;
    const auto xs = run_recorded([&](SamplerOptions& opts) { return sample_ddim(den, noise, opts); }, o);
    const auto& traj = r["trajectory"];
    ASSERT_EQ(xs.size(), traj.size() + 1);
    for (size_t k = 0; k < traj.size(); ++k) expect_close(xs[k + 1], f64(traj[k]), "after step " + std::to_string(k));
  }
}

// ddim_reverse_sample: one step up, from respaced step i to i + 1.
TEST(ReferenceImprovedDiffusion, ReverseDdimSteps) {
  const auto& ref = reference("improved_diffusion.json");
  const auto shape = shape_of(ref["sampling_shape"]);
  const Denoiser den(fake_model(false), GaussianDiffusion(schedule("linear", 1000)));
  const auto& abar = den.schedule().alpha_bar();
  for (const auto& r : ref["ddim_reverse"]) {
    const auto kept = space_timesteps(1000, r["spec"].get<std::string>());
    const auto i = r["t"].get<size_t>();
    SCOPED_TRACE(i);
    const auto x = f64(r["x"], shape);
    expect_close(ddim_step(den, x, kept[i], abar[static_cast<size_t>(kept[i + 1])], 0.0), f64(r["sample"]), "sample");
    expect_close(den.at_step(x, kept[i]).pred.x0, f64(r["pred_xstart"]), "x0");
  }
}

// k-diffusion's samplers on the exact denoiser of Gaussian data: the Karras sigmas, and x and
// D(x) at every step and the result, euler-ancestral's noise fed. Its x is the EDM variable;
// ours report x_t = x / sqrt(1 + sigma^2).
TEST(ReferenceKDiffusion, SamplerTrajectoriesOnTheExactGaussianDenoiser) {
  const auto& ref = reference("k_diffusion.json");
  test::Gaussian g;
  g.mu = f64(ref["mu"]);
  g.s = f64(ref["s"]);
  const auto den = g.denoiser();
  EXPECT_NEAR(den.sigma_min(), ref["sigma_min"].get<double>(), 1e-12);
  EXPECT_NEAR(den.sigma_max(), ref["sigma_max"].get<double>(), 1e-9 * den.sigma_max());
  expect_close(karras_sigmas(10, den.sigma_min(), den.sigma_max(), 7.0), ref["karras_sigmas"], "karras sigmas");
  expect_close(exponential_sigmas(10, den.sigma_min(), den.sigma_max()), ref["exponential_sigmas"], "exponential");
  int runs = 0;
  for (const auto& r : ref["runs"]) {
    const auto name = r["sampler"].get<std::string>();
    SCOPED_TRACE(name + (r["eta"].is_null() ? "" : " eta " + std::to_string(r["eta"].get<double>())));
    SamplerOptions o;
    o.steps = 10;
    o.clip_x0 = false;
    if (!r["eta"].is_null()) o.eta = r["eta"].get<double>();
    expect_close(sampling_sigmas(den, o, name), ref["karras_sigmas"], "the sampler's sigmas");
    const double smax = den.sigma_max();
    std::vector<torch::Tensor> d{f64(r["x_start"], {2, 3}) / std::sqrt(1.0 + smax * smax)};
    for (const auto& n : r["noise"]) d.push_back(f64(n, {2, 3}));
    auto noise = NoiseSource::supplied(d);
    std::vector<StepInfo> steps;
    o.on_step = [&](const StepInfo& s) {
      auto c = s;
      c.x_t = s.x_t.clone();
      c.x0_pred = s.x0_pred.clone();
      steps.push_back(c);
    };
    torch::Tensor result;
    if (name == "euler") result = sample_euler(den, noise, o);
    else if (name == "euler-ancestral") result = sample_euler_ancestral(den, noise, o);
    else if (name == "heun") result = sample_heun(den, noise, o);
    else result = sample_dpmpp_2m(den, noise, o);
    ASSERT_EQ(steps.size(), r["steps"].size());
    for (size_t k = 0; k < steps.size(); ++k) {
      const auto& s = r["steps"][k];
      const double sigma = s["sigma"].get<double>();
      EXPECT_NEAR(steps[k].sigma, sigma, 1e-9 * sigma);
      expect_close(steps[k].x_t * std::sqrt(1.0 + sigma * sigma), f64(s["x"]), "x at step " + std::to_string(k));
      expect_close(steps[k].x0_pred, f64(s["denoised"]), "D at step " + std::to_string(k));
    }
    expect_close(result, f64(r["result"]), "result");
    ++runs;
  }
  EXPECT_EQ(runs, 5);
}

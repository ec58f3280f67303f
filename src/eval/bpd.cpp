#include "diffuse/eval/bpd.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "diffuse/data/file_bytes.h"
#include "diffuse/error.h"
#include "diffuse/eval/random.h"
#include "diffuse/losses.h"
#include "json_text.h"

namespace diffuse {

namespace {

void check_data(const GaussianDiffusion& diffusion, const torch::Tensor& x0, const char* fn) {
  if (!x0.defined() || x0.dim() < 2 || x0.size(0) < 1)
    throw std::invalid_argument(std::string(fn) + ": x0 must be a non-empty batch [B, ...]");
  if (!x0.is_floating_point()) throw std::invalid_argument(std::string(fn) + ": x0 must be floating point");
  if (diffusion.num_timesteps() < 1) throw std::invalid_argument(std::string(fn) + ": the schedule has no steps");
}

torch::Tensor call_model(const GaussianDiffusion& diffusion, const ModelFn& model, const torch::Tensor& x_t,
                         const torch::Tensor& model_t) {
  auto out = model(x_t, model_t);
  auto expected = x_t.sizes().vec();
  expected[1] = diffusion.model_output_channels(x_t.size(1));
  if (!out.defined() || out.sizes().vec() != expected)
    throw std::runtime_error(fmt::format("model output has shape [{}], expected [{}] (variance type {})",
                                         out.defined() ? fmt::format("{}", fmt::join(out.sizes(), ", ")) : "",
                                         fmt::join(expected, ", "), to_string(diffusion.variance_type())));
  return out;
}

// The network's time per step on `device`: int64 steps where they are whole (respaced discrete
// schedules), float64 otherwise (a continuous schedule's gamma).
torch::Tensor model_time_table(const GaussianDiffusion& diffusion, const torch::Device& device) {
  const auto& time = diffusion.schedule().model_time();
  const bool whole = std::all_of(time.begin(), time.end(), [](double v) { return v == std::floor(v); });
  const auto table = torch::tensor(time, torch::TensorOptions().dtype(torch::kFloat64));
  return (whole ? table.to(torch::kLong) : table).to(device);
}

// Whole file or nothing: an interrupted write never leaves half a table where a good one was.
void write_output(const std::string& path, const std::string& text, const char* what) {
  try {
    write_file_atomic(path, text);
  } catch (const std::runtime_error& e) {
    throw UsageError(fmt::format("{} file could not be written: {}", what, e.what()));
  }
}

}  // namespace

BpdResult calc_bpd_loop(const GaussianDiffusion& diffusion, const ModelFn& model, const torch::Tensor& x0,
                        torch::Generator gen, const BpdOptions& opts) {
  check_data(diffusion, x0, "calc_bpd_loop");
  torch::NoGradGuard no_grad;
  const int64_t T = diffusion.num_timesteps();
  const int64_t B = x0.size(0);
  const auto long_opts = torch::TensorOptions().dtype(torch::kLong).device(x0.device());
  const auto f64 = x0.options().dtype(torch::kFloat64);
  const auto x0d = x0.to(torch::kFloat64);
  const auto time = model_time_table(diffusion, x0.device());

  BpdResult r;
  r.terms = torch::empty({B, T}, f64);
  r.x0_mse = torch::empty({B, T}, f64);
  r.eps_mse = torch::empty({B, T}, f64);
  ReverseOptions ro;
  ro.clip_x0 = opts.clip_x0;
  for (int64_t t = T - 1; t >= 0; --t) {
    auto tb = torch::full({B}, t, long_opts);
    auto noise = opts.noise ? opts.noise(t).to(x0.options()) : normal_like(gen, x0);
    auto x_t = diffusion.q_sample(x0, tb, noise);
    auto model_t = time[t].expand({B}).contiguous();
    auto out = call_model(diffusion, model, diffusion.network_input(x_t, diffusion.level(tb, x_t)), model_t);
    auto term =
        vlb_term_bpd(diffusion, out.to(torch::kFloat64), x0d, x_t.to(torch::kFloat64), tb, ro, opts.decoder_cdf);
    r.terms.select(1, t).copy_(term.bpd);
    r.x0_mse.select(1, t).copy_(mean_flat((term.x0_pred - x0d).square()));
    r.eps_mse.select(1, t).copy_(mean_flat((term.eps_pred - noise.to(torch::kFloat64)).square()));
    if (opts.progress) opts.progress(t);
  }
  r.prior = prior_bpd(diffusion, x0d);
  r.decoder = r.terms.select(1, 0).clone();
  r.diffusion = T > 1 ? r.terms.narrow(1, 1, T - 1).sum(1) : torch::zeros({B}, f64);
  r.total = r.prior + r.terms.sum(1);
  return r;
}

torch::Tensor bpd_rows(const BpdResult& b) {
  auto parts = torch::stack({b.total, b.prior, b.decoder, b.diffusion}, 1).to(torch::kFloat64);
  return torch::cat({parts, b.terms.to(torch::kFloat64), b.x0_mse.to(torch::kFloat64), b.eps_mse.to(torch::kFloat64)},
                    1)
      .cpu()
      .contiguous();
}

void BpdAccumulator::add_rows(const torch::Tensor& rows) {
  if (rows.dim() != 2 || rows.size(1) < 4 || (rows.size(1) - 4) % 3 != 0)
    throw std::invalid_argument("BpdAccumulator: rows must be [B, 4 + 3T] (bpd_rows)");
  const int64_t B = rows.size(0);
  const int64_t T = (rows.size(1) - 4) / 3;
  if (n_ > 0 && T != static_cast<int64_t>(vb_.size()))
    throw std::invalid_argument(
        fmt::format("BpdAccumulator: batch has {} timesteps, earlier batches had {}", T, vb_.size()));
  if (n_ == 0) {
    vb_.assign(static_cast<size_t>(T), 0.0);
    x0_mse_.assign(static_cast<size_t>(T), 0.0);
    eps_mse_.assign(static_cast<size_t>(T), 0.0);
  }
  const auto all = rows.to(torch::kCPU, torch::kFloat64).contiguous();
  const double* p = all.data_ptr<double>();
  const int64_t W = 4 + 3 * T;
  for (int64_t i = 0; i < B; ++i) {
    const double* row = p + i * W;
    total_ += row[0];
    // Welford's update for the variance of the total (no cancellation for large means).
    const double k = static_cast<double>(n_ + i + 1);
    const double delta = row[0] - total_mean_;
    total_mean_ += delta / k;
    total_m2_ += delta * (row[0] - total_mean_);
    prior_ += row[1];
    decoder_ += row[2];
    diffusion_ += row[3];
    for (int64_t t = 0; t < T; ++t) {
      vb_[static_cast<size_t>(t)] += row[4 + t];
      x0_mse_[static_cast<size_t>(t)] += row[4 + T + t];
      eps_mse_[static_cast<size_t>(t)] += row[4 + 2 * T + t];
    }
  }
  n_ += B;
}

BpdSummary BpdAccumulator::summary() const {
  BpdSummary s;
  s.num_images = n_;
  s.timesteps = static_cast<int64_t>(vb_.size());
  if (n_ == 0) return s;
  const double n = static_cast<double>(n_);
  s.total_bpd = total_ / n;
  s.prior_bpd = prior_ / n;
  s.decoder_bpd = decoder_ / n;
  s.diffusion_bpd = diffusion_ / n;
  if (n_ > 1) {
    s.total_bpd_std_error = std::sqrt(total_m2_ / (n - 1.0) / n);
  }
  auto mean = [n](const std::vector<double>& v) {
    std::vector<double> m(v.size());
    for (size_t i = 0; i < v.size(); ++i) m[i] = v[i] / n;
    return m;
  };
  s.vb_bpd = mean(vb_);
  s.x0_mse = mean(x0_mse_);
  s.eps_mse = mean(eps_mse_);
  return s;
}

void write_bpd_terms_csv(const std::string& path, const BpdSummary& s) {
  std::string csv = "t,vb_bpd,x0_mse,eps_mse\n";
  for (size_t t = 0; t < s.vb_bpd.size(); ++t)
    csv += fmt::format("{},{},{},{}\n", t, s.vb_bpd[t], t < s.x0_mse.size() ? s.x0_mse[t] : NAN,
                       t < s.eps_mse.size() ? s.eps_mse[t] : NAN);
  write_output(path, csv, "bpd terms CSV");
}

std::string bpd_summary_json(const BpdSummary& s) {
  Json j;
  j["total_bpd"] = s.total_bpd;
  j["total_bpd_std_error"] = s.total_bpd_std_error;
  j["prior_bpd"] = s.prior_bpd;
  j["decoder_bpd"] = s.decoder_bpd;
  j["diffusion_bpd"] = s.diffusion_bpd;
  j["num_images"] = s.num_images;
  j["timesteps"] = s.timesteps;
  j["decoder_cdf"] = s.decoder_cdf;
  j["vb_bpd"] = s.vb_bpd;
  j["x0_mse"] = s.x0_mse;
  j["eps_mse"] = s.eps_mse;
  return json_pretty(j) + "\n";
}

void write_bpd_json(const std::string& path, const BpdSummary& s) {
  write_output(path, bpd_summary_json(s), "bpd JSON");
}

BpdEstimate estimate_bpd_mc(const GaussianDiffusion& diffusion, const ModelFn& model, const torch::Tensor& x0,
                            torch::Generator gen, const BpdMcOptions& opts) {
  check_data(diffusion, x0, "estimate_bpd_mc");
  const int64_t K = opts.samples_per_image;
  if (K < 1) throw UsageError(fmt::format("bpd-mc: samples per image must be >= 1, got {}", K));
  torch::NoGradGuard no_grad;
  const int64_t T = diffusion.num_timesteps();
  const int64_t B = x0.size(0);
  const auto dev = x0.device();
  const auto x0d = x0.to(torch::kFloat64);

  // Importance weights 1 / (T p(t)), on the data's device; p on the generator's device.
  torch::Tensor p_draw, weights;
  if (opts.probabilities.defined()) {
    auto p = opts.probabilities.detach().to(torch::kCPU, torch::kFloat64).reshape({-1}).contiguous();
    if (p.numel() != T)
      throw UsageError(fmt::format("bpd-mc: p(t) has {} entries, expected one per timestep ({})", p.numel(), T));
    const double* pp = p.data_ptr<double>();
    double sum = 0;
    for (int64_t i = 0; i < T; ++i) {
      if (!std::isfinite(pp[i]) || pp[i] < 0)
        throw UsageError(fmt::format("bpd-mc: p(t={}) = {} is not a finite non-negative number", i, pp[i]));
      sum += pp[i];
    }
    if (!(sum > 0)) throw UsageError("bpd-mc: p(t) sums to zero");
    p = p / sum;
    weights = (1.0 / (static_cast<double>(T) * p)).to(dev);  // inf where p = 0: never drawn
    p_draw = p.to(draw_device(gen, x0));
  }

  const auto time = model_time_table(diffusion, dev);
  ReverseOptions ro;
  ro.clip_x0 = opts.clip_x0;
  auto acc = torch::zeros({B}, x0d.options());
  for (int64_t k = 0; k < K; ++k) {
    torch::Tensor t;
    if (p_draw.defined()) {
      t = torch::multinomial(p_draw, B, /*replacement=*/true, optional_generator(gen));
    } else {
      t = torch::randint(T, {B}, optional_generator(gen),
                         torch::TensorOptions().dtype(torch::kLong).device(draw_device(gen, x0)));
    }
    t = t.to(dev);
    auto noise = normal_like(gen, x0);
    auto x_t = diffusion.q_sample(x0, t, noise);
    auto out =
        call_model(diffusion, model, diffusion.network_input(x_t, diffusion.level(t, x_t)), time.index_select(0, t));
    auto term =
        vlb_term_bpd(diffusion, out.to(torch::kFloat64), x0d, x_t.to(torch::kFloat64), t, ro, opts.decoder_cdf).bpd;
    acc += weights.defined() ? weights.index_select(0, t) * term : term;
    if (opts.progress) opts.progress(k);
  }
  auto per_image = prior_bpd(diffusion, x0d) + acc * (static_cast<double>(T) / static_cast<double>(K));
  return make_bpd_estimate(per_image, K);
}

BpdEstimate make_bpd_estimate(const torch::Tensor& per_image, int64_t samples_per_image) {
  BpdEstimate e;
  e.per_image = per_image;
  e.samples_per_image = samples_per_image;
  auto v = per_image.detach().to(torch::kCPU, torch::kFloat64).reshape({-1}).contiguous();
  e.num_images = v.numel();
  if (e.num_images == 0) return e;
  const double* p = v.data_ptr<double>();
  double sum = 0;
  for (int64_t i = 0; i < e.num_images; ++i) sum += p[i];
  e.mean = sum / static_cast<double>(e.num_images);
  if (e.num_images > 1) {
    double ss = 0;  // two-pass variance
    for (int64_t i = 0; i < e.num_images; ++i) ss += (p[i] - e.mean) * (p[i] - e.mean);
    e.std_error = std::sqrt(ss / static_cast<double>(e.num_images - 1) / static_cast<double>(e.num_images));
  }
  return e;
}

}  // namespace diffuse

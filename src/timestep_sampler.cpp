#include "diffuse/timestep_sampler.h"

#include <cmath>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "diffuse/error.h"
#include "enum_names.h"

namespace diffuse {

namespace {
const EnumNames<TimestepSamplerKind>& timestep_sampler_kinds() {
  static const EnumNames<TimestepSamplerKind> table(
      "timestep sampler", {{TimestepSamplerKind::Uniform, "uniform"},
                           {TimestepSamplerKind::Importance, "importance", {"loss-second-moment"}},
                           {TimestepSamplerKind::Lognormal, "lognormal"},
                           {TimestepSamplerKind::Antithetic, "antithetic"}});
  return table;
}
}  // namespace
std::vector<std::string> timestep_sampler_names() { return timestep_sampler_kinds().names(); }
TimestepSamplerKind parse_timestep_sampler(const std::string& name) { return timestep_sampler_kinds().parse(name); }
std::string to_string(TimestepSamplerKind v) { return timestep_sampler_kinds().to_string(v); }

TimestepDraw TimestepSampler::sample(int64_t batch, const torch::Device& device, torch::Generator gen) const {
  auto p = probabilities();
  auto t = torch::multinomial(p, batch, /*replacement=*/true, gen);
  auto w = 1.0 / (static_cast<double>(num_timesteps_) * p.index_select(0, t));
  w = w.to(torch::kFloat32);
  if (device.is_cuda()) {
    // A copy from pageable memory synchronises the stream; from page-locked memory it does not.
    return {t.pin_memory().to(device, /*non_blocking=*/true), w.pin_memory().to(device, /*non_blocking=*/true), {}, {}};
  }
  return {t.to(device), w.to(device), {}, {}};
}

torch::Tensor UniformTimestepSampler::probabilities() const {
  return torch::full({num_timesteps()}, 1.0 / static_cast<double>(num_timesteps()), torch::kFloat64);
}

ImportanceTimestepSampler::ImportanceTimestepSampler(int64_t T, int64_t history, double uniform_prob)
    : TimestepSampler(T),
      history_(history),
      uniform_prob_(uniform_prob),
      losses_(static_cast<size_t>(T), std::vector<double>(static_cast<size_t>(history), 0.0)),
      counts_(static_cast<size_t>(T), 0) {
  if (history < 1) throw UsageError("importance sampler history must be >= 1");
  if (uniform_prob < 0 || uniform_prob > 1) throw UsageError("importance sampler uniform_prob must be in [0, 1]");
}

bool ImportanceTimestepSampler::warmed_up() const {
  for (auto c : counts_)
    if (c < history_) return false;
  return true;
}

torch::Tensor ImportanceTimestepSampler::probabilities() const {
  const auto T = num_timesteps();
  if (!warmed_up()) return torch::full({T}, 1.0 / static_cast<double>(T), torch::kFloat64);
  auto w = torch::empty({T}, torch::kFloat64);
  auto* wp = w.data_ptr<double>();
  double total = 0.0;
  for (int64_t t = 0; t < T; ++t) {
    double sq = 0.0;
    for (double l : losses_[static_cast<size_t>(t)]) sq += l * l;
    wp[t] = std::sqrt(sq / static_cast<double>(history_));
    total += wp[t];
  }
  if (!(total > 0.0) || !std::isfinite(total)) return torch::full({T}, 1.0 / static_cast<double>(T), torch::kFloat64);
  w = w / total * (1.0 - uniform_prob_) + uniform_prob_ / static_cast<double>(T);
  return w;
}

void ImportanceTimestepSampler::update(const torch::Tensor& t, const torch::Tensor& losses) {
  auto tc = t.to(torch::kCPU, torch::kLong).contiguous();
  auto lc = losses.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  const auto* tp = tc.data_ptr<int64_t>();
  const auto* lp = lc.data_ptr<double>();
  for (int64_t i = 0; i < tc.numel(); ++i) {
    const auto k = static_cast<size_t>(tp[i]);
    if (!std::isfinite(lp[i])) continue;
    auto& ring = losses_.at(k);
    if (counts_[k] < history_) {
      ring[static_cast<size_t>(counts_[k])] = lp[i];
      ++counts_[k];
    } else {
      // Drop the oldest: shift left and append (history is small).
      std::rotate(ring.begin(), ring.begin() + 1, ring.end());
      ring.back() = lp[i];
    }
  }
}

torch::Tensor ImportanceTimestepSampler::state() const {
  const auto T = num_timesteps();
  auto s = torch::zeros({T, history_ + 1}, torch::kFloat64);
  auto a = s.accessor<double, 2>();
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t h = 0; h < history_; ++h) a[t][h] = losses_[static_cast<size_t>(t)][static_cast<size_t>(h)];
    a[t][history_] = static_cast<double>(counts_[static_cast<size_t>(t)]);
  }
  return s;
}

void ImportanceTimestepSampler::load_state(const torch::Tensor& state, const std::string& origin) {
  const int64_t T = num_timesteps();
  if (!state.defined() || state.dim() != 2 || state.size(0) != T || state.size(1) != history_ + 1)
    throw UsageError(
        fmt::format("{}: timestep_sampler_state has shape [{}], the importance sampler needs [{}, {}] "
                    "(diffusion.timesteps x history + 1)",
                    origin, state.defined() ? fmt::format("{}", fmt::join(state.sizes(), ", ")) : "", T, history_ + 1));
  if (!state.is_floating_point())
    throw UsageError(fmt::format("{}: timestep_sampler_state is {}, not floating point", origin,
                                 c10::toString(state.scalar_type())));
  auto s = state.to(torch::kCPU, torch::kFloat64).contiguous();
  auto a = s.accessor<double, 2>();
  for (int64_t t = 0; t < T; ++t) {
    const double c = a[t][history_];
    if (!(c >= 0 && c <= static_cast<double>(history_)) || c != std::floor(c))
      throw UsageError(fmt::format("{}: timestep_sampler_state: the count for t = {} is {}, not an integer in 0..{}",
                                   origin, t, c, history_));
    for (int64_t h = 0; h < history_; ++h)
      if (!std::isfinite(a[t][h]))
        throw UsageError(
            fmt::format("{}: timestep_sampler_state: loss {} of t = {} is {}, not finite", origin, h, t, a[t][h]));
  }
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t h = 0; h < history_; ++h) losses_[static_cast<size_t>(t)][static_cast<size_t>(h)] = a[t][h];
    counts_[static_cast<size_t>(t)] = static_cast<int64_t>(a[t][history_]);
  }
}

LognormalSigmaSampler::LognormalSigmaSampler(int64_t T, LogSigmaGrid grid, double p_mean, double p_std)
    : TimestepSampler(T), grid_(grid), p_mean_(p_mean), p_std_(p_std) {
  if (!(p_std > 0.0) || !std::isfinite(p_std) || !std::isfinite(p_mean))
    throw UsageError(
        fmt::format("lognormal sampler: needs a finite p_mean and p_std > 0, got {} and {}", p_mean, p_std));
}

torch::Tensor LognormalSigmaSampler::probabilities() const {
  // P(t = i) = Phi(z_{i+1/2}) - Phi(z_{i-1/2}) with the end bins open, z = (ln sigma - p_mean) / p_std.
  const int64_t T = num_timesteps();
  auto p = torch::empty({T}, torch::kFloat64);
  auto* pp = p.data_ptr<double>();
  auto cdf = [&](double step) {
    const double z = (grid_.log_min + step * grid_.log_step - p_mean_) / p_std_;
    return 0.5 * std::erfc(-z / std::sqrt(2.0));
  };
  for (int64_t i = 0; i < T; ++i) {
    const double lo = i == 0 ? 0.0 : cdf(static_cast<double>(i) - 0.5);
    const double hi = i == T - 1 ? 1.0 : cdf(static_cast<double>(i) + 0.5);
    pp[i] = hi - lo;
  }
  return p;
}

TimestepDraw LognormalSigmaSampler::sample(int64_t batch, const torch::Device& device, torch::Generator gen) const {
  const auto log_sigma = torch::randn({batch}, gen, torch::kFloat64) * p_std_ + p_mean_;
  const auto step = (log_sigma - grid_.log_min) / grid_.log_step;
  auto t = step.round().clamp(0, static_cast<double>(num_timesteps() - 1)).to(torch::kLong);
  auto w = torch::ones({batch}, torch::kFloat32);
  auto sigma = log_sigma.exp();
  auto step32 = step.to(torch::kFloat32);
  if (device.is_cuda()) {
    auto move = [&](const torch::Tensor& x) { return x.pin_memory().to(device, /*non_blocking=*/true); };
    return {move(t), move(w), move(sigma), move(step32)};
  }
  return {t.to(device), w.to(device), sigma.to(device), step32.to(device)};
}

torch::Tensor draw_times(int64_t batch, bool antithetic, torch::Generator gen) {
  if (!antithetic) return torch::rand({batch}, gen, torch::kFloat64);
  const auto u = torch::rand({1}, gen, torch::kFloat64);
  return torch::fmod(u + torch::arange(batch, torch::kFloat64) / static_cast<double>(batch), 1.0);
}

torch::Tensor ContinuousTimeSampler::probabilities() const {
  return torch::full({num_timesteps()}, 1.0 / static_cast<double>(num_timesteps()), torch::kFloat64);
}

TimestepDraw ContinuousTimeSampler::sample(int64_t batch, const torch::Device& device, torch::Generator gen) const {
  const auto time = draw_times(batch, antithetic_, gen);
  const double T = static_cast<double>(num_timesteps());
  auto t = (time * T).floor().clamp(0, T - 1).to(torch::kLong);
  TimestepDraw d;
  d.t = t.to(device);
  d.weights = torch::ones({batch}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
  d.time = time.to(device);
  return d;
}

std::unique_ptr<TimestepSampler> make_timestep_sampler(TimestepSamplerKind kind, int64_t T) {
  if (kind == TimestepSamplerKind::Uniform) return std::make_unique<UniformTimestepSampler>(T);
  if (kind == TimestepSamplerKind::Importance) return std::make_unique<ImportanceTimestepSampler>(T);
  if (kind == TimestepSamplerKind::Antithetic) return std::make_unique<ContinuousTimeSampler>(T, true);
  throw UsageError("the lognormal timestep sampler needs the edm schedule's grid and p_mean / p_std");
}

}  // namespace diffuse

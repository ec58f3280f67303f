#include "diffuse/schedule.h"

#include <cmath>
#include <fstream>
#include <numeric>
#include <set>
#include <sstream>

#include "diffuse/error.h"
#include "enum_names.h"

namespace diffuse {

namespace {

constexpr double kPi = 3.14159265358979323846;

// numpy.linspace in float64.
std::vector<double> linspace(double a, double b, int64_t n) {
  std::vector<double> out(static_cast<size_t>(n));
  if (n == 1) {
    out[0] = a;
    return out;
  }
  const double step = (b - a) / static_cast<double>(n - 1);
  for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = a + step * static_cast<double>(i);
  out.back() = b;
  return out;
}

// Python's round() / numpy.round: half to even (the default FE_TONEAREST mode).
int64_t round_half_even(double x) { return static_cast<int64_t>(std::nearbyint(x)); }

int64_t parse_int(const std::string& s, const std::string& context) {
  try {
    size_t pos = 0;
    const long long v = std::stoll(s, &pos);
    if (pos != s.size()) throw std::invalid_argument(s);
    return static_cast<int64_t>(v);
  } catch (const std::exception&) {
    throw UsageError(context + ": '" + s + "' is not an integer");
  }
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep)) {
    const auto b = item.find_first_not_of(" \t");
    const auto e = item.find_last_not_of(" \t");
    parts.push_back(b == std::string::npos ? "" : item.substr(b, e - b + 1));
  }
  return parts;
}

std::vector<double> read_betas_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw UsageError("betas file '" + path + "' cannot be read");
  std::vector<double> betas;
  std::string tok;
  while (in >> tok) {
    for (const auto& piece : split(tok, ',')) {
      if (piece.empty()) continue;
      char* end = nullptr;
      const double v = std::strtod(piece.c_str(), &end);
      if (end == piece.c_str() || *end != '\0')
        throw UsageError("betas file '" + path + "': '" + piece + "' is not a number");
      betas.push_back(v);
    }
  }
  if (betas.empty()) throw UsageError("betas file '" + path + "' holds no numbers");
  return betas;
}

}  // namespace

namespace {
const EnumNames<ScheduleKind>& schedule_kinds() {
  static const EnumNames<ScheduleKind> table("schedule",
                                             {{ScheduleKind::Linear, "linear"},
                                              {ScheduleKind::Cosine, "cosine"},
                                              {ScheduleKind::Sigmoid, "sigmoid"},
                                              {ScheduleKind::ScaledLinear, "scaled_linear", {"scaled-linear"}},
                                              {ScheduleKind::Custom, "custom"},
                                              {ScheduleKind::Edm, "edm"},
                                              {ScheduleKind::Vdm, "vdm"}});
  return table;
}
}  // namespace
std::vector<std::string> schedule_kind_names() { return schedule_kinds().names(); }
ScheduleKind parse_schedule_kind(const std::string& name) { return schedule_kinds().parse(name); }
std::string to_string(ScheduleKind v) { return schedule_kinds().to_string(v); }

std::vector<double> make_betas(const ScheduleSpec& spec) {
  const int64_t T = spec.timesteps;
  std::vector<double> betas;
  if (spec.kind == ScheduleKind::Custom) {
    betas = !spec.betas.empty() ? spec.betas
                                : (!spec.betas_file.empty() ? read_betas_file(spec.betas_file) : std::vector<double>{});
    if (betas.empty()) throw UsageError("schedule 'custom' needs betas (a list) or betas_file");
  } else {
    if (T < 1) throw UsageError("timesteps must be >= 1, got " + std::to_string(T));
    switch (spec.kind) {
      case ScheduleKind::Linear: {
        // DDPM: 1e-4..0.02 for T = 1000; improved-diffusion scales both by 1000/T.
        const double scale = 1000.0 / static_cast<double>(T);
        const double b0 = spec.beta_start >= 0 ? spec.beta_start : scale * 0.0001;
        const double b1 = spec.beta_end >= 0 ? spec.beta_end : scale * 0.02;
        betas = linspace(b0, b1, T);
        break;
      }
      case ScheduleKind::ScaledLinear: {
        const double b0 = spec.beta_start >= 0 ? spec.beta_start : 0.00085;
        const double b1 = spec.beta_end >= 0 ? spec.beta_end : 0.012;
        betas = linspace(std::sqrt(b0), std::sqrt(b1), T);
        for (auto& b : betas) b = b * b;
        break;
      }
      case ScheduleKind::Sigmoid: {
        const double b0 = spec.beta_start >= 0 ? spec.beta_start : 0.0001;
        const double b1 = spec.beta_end >= 0 ? spec.beta_end : 0.02;
        betas = linspace(-6.0, 6.0, T);
        for (auto& b : betas) b = 1.0 / (1.0 + std::exp(-b)) * (b1 - b0) + b0;
        break;
      }
      case ScheduleKind::Cosine: {
        // Nichol & Dhariwal (2021), eq. 17: alpha_bar(t) = f(t)/f(0), f(t) = cos^2(((t/T)+s)/(1+s) pi/2);
        // beta_t = 1 - alpha_bar(t+1)/alpha_bar(t), capped at max_beta.
        const double s = spec.cosine_s;
        auto f = [&](double u) {
          const double c = std::cos((u + s) / (1.0 + s) * kPi / 2.0);
          return c * c;
        };
        betas.resize(static_cast<size_t>(T));
        for (int64_t i = 0; i < T; ++i) {
          const double t1 = static_cast<double>(i) / static_cast<double>(T);
          const double t2 = static_cast<double>(i + 1) / static_cast<double>(T);
          betas[static_cast<size_t>(i)] = std::min(1.0 - f(t2) / f(t1), spec.max_beta);
        }
        break;
      }
      case ScheduleKind::Edm: {
        // beta_i = 1 - abar_i / abar_{i-1} = (sigma_i^2 - sigma_{i-1}^2) / (1 + sigma_i^2), sigma_{-1} = 0.
        const auto g = log_sigma_grid(spec);
        double prev2 = 0.0;
        for (int64_t i = 0; i < T; ++i) {
          const double s2 = std::exp(2.0 * (g.log_min + static_cast<double>(i) * g.log_step));
          betas.push_back((s2 - prev2) / (1.0 + s2));
          prev2 = s2;
        }
        break;
      }
      case ScheduleKind::Custom: break;
      case ScheduleKind::Vdm:
        throw std::logic_error("make_betas: a vdm schedule's betas come from its gamma schedule (discretize)");
    }
  }
  for (size_t i = 0; i < betas.size(); ++i) {
    if (!std::isfinite(betas[i]) || betas[i] <= 0.0 || betas[i] > 1.0)
      throw UsageError("beta[" + std::to_string(i) + "] = " + std::to_string(betas[i]) + " is outside (0, 1]");
  }
  if (spec.zero_terminal_snr) betas = rescale_zero_terminal_snr(betas);
  return betas;
}

LogSigmaGrid log_sigma_grid(const ScheduleSpec& spec) {
  if (spec.kind != ScheduleKind::Edm) throw std::logic_error("log_sigma_grid: schedule is not edm");
  if (spec.timesteps < 2) throw UsageError("schedule edm needs timesteps >= 2, got " + std::to_string(spec.timesteps));
  if (!(spec.sigma_min > 0.0 && spec.sigma_min < spec.sigma_max && std::isfinite(spec.sigma_max)))
    throw UsageError("schedule edm needs 0 < sigma_min < sigma_max < inf, got sigma_min " +
                     std::to_string(spec.sigma_min) + ", sigma_max " + std::to_string(spec.sigma_max));
  const double lo = std::log(spec.sigma_min), hi = std::log(spec.sigma_max);
  return {lo, (hi - lo) / static_cast<double>(spec.timesteps - 1)};
}

std::vector<double> rescale_zero_terminal_snr(const std::vector<double>& betas) {
  const size_t T = betas.size();
  if (T < 2) throw UsageError("zero_terminal_snr needs at least 2 timesteps");
  std::vector<double> sqrt_ab(T);
  double ab = 1.0;
  for (size_t i = 0; i < T; ++i) {
    ab *= 1.0 - betas[i];
    sqrt_ab[i] = std::sqrt(ab);
  }
  const double first = sqrt_ab.front(), last = sqrt_ab.back();
  for (auto& v : sqrt_ab) v = (v - last) * first / (first - last);
  std::vector<double> out(T);
  double prev = 1.0;
  for (size_t i = 0; i < T; ++i) {
    const double a = sqrt_ab[i] * sqrt_ab[i];
    out[i] = 1.0 - a / prev;
    prev = a;
  }
  return out;
}

std::vector<int64_t> space_timesteps(int64_t T, const std::string& spec_in) {
  if (T < 1) throw UsageError("respacing needs timesteps >= 1");
  std::string spec = spec_in;
  std::vector<int64_t> steps;
  auto count_after = [&](const std::string& prefix) {
    const int64_t n = parse_int(spec.substr(prefix.size()), "respacing '" + spec_in + "'");
    if (n < 1 || n > T)
      throw UsageError("respacing '" + spec_in + "': step count must be in [1, " + std::to_string(T) + "]");
    return n;
  };
  if (spec.rfind("ddim", 0) == 0) {
    // improved-diffusion: the first integer stride whose range(0, T, stride) has exactly n steps.
    const int64_t n = count_after("ddim");
    for (int64_t stride = 1; stride < std::max<int64_t>(T, 2); ++stride) {
      if ((T + stride - 1) / stride == n) {
        for (int64_t i = 0; i < T; i += stride) steps.push_back(i);
        return steps;
      }
    }
    throw UsageError("respacing '" + spec_in + "': no integer stride gives exactly " + std::to_string(n) + " of " +
                     std::to_string(T) + " steps (try a plain count, e.g. '" + std::to_string(n) + "')");
  }
  if (spec.rfind("leading:", 0) == 0) {
    const int64_t n = count_after("leading:");
    const int64_t ratio = T / n;
    for (int64_t i = 0; i < n; ++i) steps.push_back(i * ratio);
  } else if (spec.rfind("trailing:", 0) == 0) {
    const int64_t n = count_after("trailing:");
    const double ratio = static_cast<double>(T) / static_cast<double>(n);
    for (int64_t i = 0; i < n; ++i) steps.push_back(round_half_even(static_cast<double>(T) - i * ratio) - 1);
  } else if (spec.rfind("linspace:", 0) == 0) {
    const int64_t n = count_after("linspace:");
    for (double v : linspace(0.0, static_cast<double>(T - 1), n)) steps.push_back(round_half_even(v));
  } else if (spec.rfind("list:", 0) == 0) {
    for (const auto& p : split(spec.substr(5), ',')) {
      const int64_t v = parse_int(p, "respacing '" + spec_in + "'");
      if (v < 0 || v >= T)
        throw UsageError("respacing '" + spec_in + "': step " + p + " is outside [0, " + std::to_string(T - 1) + "]");
      steps.push_back(v);
    }
  } else {
    // improved-diffusion: counts per equal section of [0, T), each section strided evenly.
    std::vector<int64_t> counts;
    for (const auto& p : split(spec, ',')) counts.push_back(parse_int(p, "respacing '" + spec_in + "'"));
    if (counts.empty()) throw UsageError("respacing is empty");
    const int64_t sections = static_cast<int64_t>(counts.size());
    const int64_t size_per = T / sections, extra = T % sections;
    int64_t start = 0;
    for (int64_t i = 0; i < sections; ++i) {
      const int64_t size = size_per + (i < extra ? 1 : 0);
      const int64_t c = counts[static_cast<size_t>(i)];
      if (c < 1 || size < c)
        throw UsageError("respacing '" + spec_in + "': section " + std::to_string(i) + " has " + std::to_string(size) +
                         " steps, cannot take " + std::to_string(c));
      const double stride = c <= 1 ? 1.0 : static_cast<double>(size - 1) / static_cast<double>(c - 1);
      double cur = 0.0;
      for (int64_t k = 0; k < c; ++k) {
        steps.push_back(start + round_half_even(cur));
        cur += stride;
      }
      start += size;
    }
  }
  std::set<int64_t> uniq(steps.begin(), steps.end());
  for (int64_t v : uniq)
    if (v < 0 || v >= T)
      throw UsageError("respacing '" + spec_in + "' produced step " + std::to_string(v) + " outside [0, T)");
  return {uniq.begin(), uniq.end()};
}

NoiseSchedule::NoiseSchedule(std::vector<double> betas, std::vector<int64_t> original_t, std::vector<double> model_time)
    : betas_(std::move(betas)), original_t_(std::move(original_t)), model_time_(std::move(model_time)) {
  if (betas_.empty()) throw UsageError("a schedule needs at least one beta");
  if (original_t_.empty()) {
    original_t_.resize(betas_.size());
    std::iota(original_t_.begin(), original_t_.end(), 0);
  }
  if (original_t_.size() != betas_.size()) throw std::logic_error("original_t and betas differ in length");
  if (model_time_.empty()) model_time_.assign(original_t_.begin(), original_t_.end());
  if (model_time_.size() != betas_.size()) throw std::logic_error("model_time and betas differ in length");
  derive();
}

NoiseSchedule NoiseSchedule::from_spec(const ScheduleSpec& spec) { return NoiseSchedule(make_betas(spec)); }

NoiseSchedule::NoiseSchedule(const NoiseSchedule& o)
    : betas_(o.betas_), original_t_(o.original_t_), model_time_(o.model_time_) {
  derive();
}

NoiseSchedule& NoiseSchedule::operator=(const NoiseSchedule& o) {
  if (this != &o) {
    betas_ = o.betas_;
    original_t_ = o.original_t_;
    model_time_ = o.model_time_;
    derive();
    std::lock_guard<std::mutex> lock(cache_mutex_);
    cache_.clear();
  }
  return *this;
}

void NoiseSchedule::derive() {
  const size_t T = betas_.size();
  auto resize = [&](std::vector<double>& v) { v.assign(T, 0.0); };
  for (auto* v :
       {&alphas_, &alpha_bar_, &alpha_bar_prev_, &alpha_bar_next_, &sqrt_alpha_bar_, &sqrt_one_minus_alpha_bar_,
        &log_one_minus_alpha_bar_, &sqrt_recip_alpha_bar_, &sqrt_recipm1_alpha_bar_, &posterior_variance_,
        &posterior_log_variance_clipped_, &posterior_mean_coef1_, &posterior_mean_coef2_, &snr_, &log_snr_})
    resize(*v);
  double ab = 1.0;
  for (size_t t = 0; t < T; ++t) {
    const double beta = betas_[t];
    alphas_[t] = 1.0 - beta;
    alpha_bar_prev_[t] = ab;
    ab *= alphas_[t];
    alpha_bar_[t] = ab;
  }
  for (size_t t = 0; t < T; ++t) {
    const double a = alpha_bar_[t], ap = alpha_bar_prev_[t], beta = betas_[t];
    alpha_bar_next_[t] = t + 1 < T ? alpha_bar_[t + 1] : 0.0;
    sqrt_alpha_bar_[t] = std::sqrt(a);
    sqrt_one_minus_alpha_bar_[t] = std::sqrt(1.0 - a);
    log_one_minus_alpha_bar_[t] = std::log(1.0 - a);
    sqrt_recip_alpha_bar_[t] = std::sqrt(1.0 / a);
    sqrt_recipm1_alpha_bar_[t] = std::sqrt(1.0 / a - 1.0);
    // Luo eq. 84: sigma_q^2(t) = (1 - alpha_t)(1 - alpha_bar_{t-1}) / (1 - alpha_bar_t).
    posterior_variance_[t] = beta * (1.0 - ap) / (1.0 - a);
    // Luo eq. 84: mu_q = [sqrt(alpha_bar_{t-1}) beta_t x_0 + sqrt(alpha_t)(1 - alpha_bar_{t-1}) x_t] / (1 -
    // alpha_bar_t).
    posterior_mean_coef1_[t] = beta * std::sqrt(ap) / (1.0 - a);
    posterior_mean_coef2_[t] = (1.0 - ap) * std::sqrt(alphas_[t]) / (1.0 - a);
    snr_[t] = a / (1.0 - a);  // Luo eq. 107
    log_snr_[t] = std::log(a) - std::log1p(-a);
  }
  // The posterior variance is 0 at t = 0; improved-diffusion replaces its log by t = 1's value.
  for (size_t t = 0; t < T; ++t) {
    const double v = t == 0 ? (T > 1 ? posterior_variance_[1] : betas_[0]) : posterior_variance_[t];
    posterior_log_variance_clipped_[t] = std::log(v);
  }
}

NoiseSchedule NoiseSchedule::respace(const std::vector<int64_t>& kept) const {
  if (kept.empty()) throw UsageError("respacing keeps no steps");
  std::vector<double> betas;
  std::vector<int64_t> orig;
  std::vector<double> time;
  double last = 1.0;
  int64_t prev = -1;
  for (int64_t k : kept) {
    if (k <= prev || k >= num_timesteps())
      throw UsageError("respacing: kept steps must be ascending indices in [0, " + std::to_string(num_timesteps() - 1) +
                       "]");
    prev = k;
    const double ab = alpha_bar_[static_cast<size_t>(k)];
    betas.push_back(1.0 - ab / last);
    last = ab;
    orig.push_back(original_t_[static_cast<size_t>(k)]);
    time.push_back(model_time_[static_cast<size_t>(k)]);
  }
  return NoiseSchedule(std::move(betas), std::move(orig), std::move(time));
}

ScheduleRow NoiseSchedule::row(int64_t t) const {
  const auto i = static_cast<size_t>(t);
  return {t,
          original_t_.at(i),
          betas_.at(i),
          alpha_bar_[i],
          alpha_bar_prev_[i],
          posterior_variance_[i],
          posterior_log_variance_clipped_[i],
          posterior_mean_coef1_[i],
          posterior_mean_coef2_[i],
          snr_[i]};
}

const torch::Tensor& NoiseSchedule::device_table(const std::vector<double>& table, const torch::Device& device) const {
  const std::string key = std::to_string(reinterpret_cast<uintptr_t>(&table)) + "@" + device.str();
  std::lock_guard<std::mutex> lock(cache_mutex_);
  auto it = cache_.find(key);
  if (it == cache_.end()) {
    auto host =
        torch::from_blob(const_cast<double*>(table.data()), {static_cast<int64_t>(table.size())}, torch::kFloat64)
            .clone();
    it = cache_.emplace(key, host.to(device)).first;
  }
  return it->second;
}

torch::Tensor NoiseSchedule::gather(const std::vector<double>& table, const torch::Tensor& t,
                                    const torch::Tensor& like) const {
  const auto& dev_table = device_table(table, like.device());
  auto idx = t.to(like.device(), torch::kLong).reshape({-1});
  auto v = dev_table.index_select(0, idx).to(like.scalar_type());
  return broadcast_to_batch(v, like);
}

torch::Tensor broadcast_to_batch(const torch::Tensor& v, const torch::Tensor& like) {
  std::vector<int64_t> shape(static_cast<size_t>(std::max<int64_t>(like.dim(), 1)), 1);
  shape[0] = v.size(0);
  return v.reshape(shape);
}

}  // namespace diffuse

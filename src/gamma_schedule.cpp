#include "diffuse/gamma_schedule.h"

#include <torch/autograd.h>
#include <torch/nn/functional/activation.h>

#include <cmath>
#include <limits>
#include <stdexcept>

#include "diffuse/error.h"
#include "diffuse/models/network.h"
#include "diffuse/schedule.h"
#include "enum_names.h"

namespace diffuse {

namespace {

const EnumNames<GammaKind>& gamma_kinds() {
  static const EnumNames<GammaKind> table("gamma schedule", {{GammaKind::Linear, "linear"},
                                                             {GammaKind::Endpoints, "endpoints"},
                                                             {GammaKind::Learned, "learned"},
                                                             {GammaKind::Cosine, "cosine"},
                                                             {GammaKind::LinearBeta, "linear-beta"}});
  return table;
}

constexpr double kPi = 3.14159265358979323846;

// DDPM's linear betas as the VP SDE's beta(tau) = b0 + (b1 - b0) tau (T beta at tau = i / T).
constexpr double kBeta0 = 0.1, kBeta1 = 20.0;

// The cosine schedule's angle at tau = 0: theta_0 = s / (1 + s) pi / 2.
double cosine_theta0(double s) { return s / (1.0 + s) * kPi / 2.0; }

// tau where the cosine curve has SNR e^-g: alpha^2 = cos^2(theta) / cos^2(theta_0) = sigmoid(-g)
// gives sin^2(theta) = sin^2(theta_0) + cos^2(theta_0) sigmoid(g); atan2 of sin and cos keeps
// the digits at both ends.
double cosine_tau(double g, double s) {
  const double th0 = cosine_theta0(s);
  const double sig = 1.0 / (1.0 + std::exp(-g)), sig_neg = 1.0 / (1.0 + std::exp(g));
  const double sin_th = std::sqrt(std::sin(th0) * std::sin(th0) + std::cos(th0) * std::cos(th0) * sig);
  const double cos_th = std::cos(th0) * std::sqrt(sig_neg);
  return std::atan2(sin_th, cos_th) * (1.0 + s) * 2.0 / kPi - s;
}

// tau where the VP SDE's curve has SNR e^-g: -log alpha^2 = q = softplus(g) = b0 tau +
// (b1 - b0) tau^2 / 2, the root written without cancellation.
double linear_beta_tau(double g) {
  const double q = g > 30 ? g + std::log1p(std::exp(-g)) : std::log1p(std::exp(g));
  return 2.0 * q / (kBeta0 + std::sqrt(kBeta0 * kBeta0 + 2.0 * (kBeta1 - kBeta0) * q));
}

// softplus^-1(y): the raw parameter whose softplus is y.
double inverse_softplus(double y) { return y + std::log(-std::expm1(-y)); }

torch::Tensor positive_weight(const torch::Tensor& raw) { return torch::nn::functional::softplus(raw); }

}  // namespace

std::vector<std::string> gamma_kind_names() { return gamma_kinds().names(); }
GammaKind parse_gamma_kind(const std::string& name) { return gamma_kinds().parse(name); }
std::string to_string(GammaKind v) { return gamma_kinds().to_string(v); }

bool gamma_kind_learned(GammaKind kind) { return kind == GammaKind::Endpoints || kind == GammaKind::Learned; }

GammaShape gamma_kind_shape(GammaKind kind) {
  switch (kind) {
    case GammaKind::Linear:
    case GammaKind::Endpoints: return GammaShape::Line;
    case GammaKind::Cosine:
    case GammaKind::LinearBeta: return GammaShape::Curve;
    case GammaKind::Learned: return GammaShape::Network;
  }
  throw std::logic_error("gamma_kind_shape: unknown kind");
}

double gamma_kind_limit(GammaKind kind) {
  if (kind == GammaKind::LinearBeta) return std::log(std::expm1(kBeta0 + 0.5 * (kBeta1 - kBeta0)));
  return std::numeric_limits<double>::infinity();
}

GammaSchedule::GammaSchedule(const GammaSpec& spec) : spec_(spec) {
  if (!(std::isfinite(spec.gamma_min) && std::isfinite(spec.gamma_max) && spec.gamma_min < spec.gamma_max))
    throw UsageError("the gamma schedule needs finite gamma_min < gamma_max, got " + std::to_string(spec.gamma_min) +
                     " and " + std::to_string(spec.gamma_max));
  if (spec.gamma_max > gamma_kind_limit(spec.kind))
    throw UsageError("the " + to_string(spec.kind) + " gamma schedule ends at gamma " +
                     std::to_string(gamma_kind_limit(spec.kind)) + ", below gamma_max " +
                     std::to_string(spec.gamma_max));
  if (spec.kind == GammaKind::Cosine) {
    if (!(spec.cosine_s >= 0 && std::isfinite(spec.cosine_s)))
      throw UsageError("the cosine gamma schedule needs an offset s >= 0, got " + std::to_string(spec.cosine_s));
    tau0_ = cosine_tau(spec.gamma_min, spec.cosine_s);
    tau1_ = cosine_tau(spec.gamma_max, spec.cosine_s);
  } else if (spec.kind == GammaKind::LinearBeta) {
    tau0_ = linear_beta_tau(spec.gamma_min);
    tau1_ = linear_beta_tau(spec.gamma_max);
  }
  if (!learnable()) return;
  g0_ = register_parameter("gamma0", torch::full({}, spec.gamma_min));
  g1_ = register_parameter("gamma1", torch::full({}, spec.gamma_max));
  if (gamma_kind_shape(spec.kind) != GammaShape::Network) return;
  if (spec.hidden < 1)
    throw UsageError("the learned gamma schedule needs hidden >= 1, got " + std::to_string(spec.hidden));
  // l1 the identity on [0, 1]; the hidden units switch at h = -b2 / softplus(w2), spread around
  // [0, 1]; l3's weights 1, so the bend starts mild (a few percent of gamma's range) but its
  // weights are of a size that AdamW's steps of ~lr change in a few hundred steps. (Weights of
  // 1e-3 left the shape a straight line after 1000 steps: docs/vdm.md.)
  w1_ = register_parameter("l1_weight", torch::full({}, inverse_softplus(1.0)));
  b1_ = register_parameter("l1_bias", torch::zeros({}));
  w2_ = register_parameter("l2_weight", torch::randn({spec.hidden}));
  b2_ = register_parameter("l2_bias", torch::randn({spec.hidden}));
  w3_ = register_parameter("l3_weight", torch::full({spec.hidden}, inverse_softplus(1.0)));
}

torch::Tensor GammaSchedule::gamma0() const {
  return g0_.defined() ? g0_.to(torch::kFloat64) : torch::full({}, spec_.gamma_min, torch::kFloat64);
}
torch::Tensor GammaSchedule::gamma1() const {
  return g1_.defined() ? g1_.to(torch::kFloat64) : torch::full({}, spec_.gamma_max, torch::kFloat64);
}

torch::Tensor GammaSchedule::raw_shape(const torch::Tensor& t) const {
  const auto h = positive_weight(w1_.to(torch::kFloat64)) * t + b1_.to(torch::kFloat64);
  const auto u = h.unsqueeze(-1) * positive_weight(w2_.to(torch::kFloat64)) + b2_.to(torch::kFloat64);
  const auto phi = 2.0 * torch::sigmoid(u) - 1.0;
  return h + torch::matmul(phi, positive_weight(w3_.to(torch::kFloat64))) / static_cast<double>(spec_.hidden);
}

torch::Tensor GammaSchedule::curve(const torch::Tensor& tau) const {
  if (spec_.kind == GammaKind::Cosine) {
    // gamma = log(1 - alpha^2) - log(alpha^2) with f(0) - f(tau) = sin(theta - theta_0) sin(theta + theta_0).
    const double s = spec_.cosine_s, th0 = cosine_theta0(s);
    const auto th = (tau + s) / (1.0 + s) * (kPi / 2.0);
    return torch::log(torch::sin(th - th0)) + torch::log(torch::sin(th + th0)) - 2.0 * torch::log(torch::cos(th));
  }
  // LinearBeta: gamma = log(1 / alpha^2 - 1) = log(expm1(q)).
  return torch::log(torch::expm1(kBeta0 * tau + 0.5 * (kBeta1 - kBeta0) * tau * tau));
}

GammaAt GammaSchedule::at(const torch::Tensor& t_in, bool derivative,
                          const std::function<torch::Tensor(const torch::Tensor&)>& shape_hook) const {
  const bool graph = torch::GradMode::is_enabled();
  torch::AutoGradMode enable(graph || derivative);
  auto t = t_in.detach().to(torch::kFloat64);
  if (derivative) t.requires_grad_(true);
  GammaAt out;
  torch::Tensor shape;  // s(t) in [0, 1], s(0) = 0, s(1) = 1
  const auto kind_shape = gamma_kind_shape(spec_.kind);
  if (kind_shape == GammaShape::Network) {
    const auto ends = raw_shape(torch::tensor({0.0, 1.0}, t.options().requires_grad(false)));
    shape = (raw_shape(t) - ends[0]) / (ends[1] - ends[0]);
  } else if (kind_shape == GammaShape::Curve) {
    shape = (curve(tau0_ + (tau1_ - tau0_) * t) - spec_.gamma_min) / (spec_.gamma_max - spec_.gamma_min);
  } else {
    shape = t;
  }
  torch::Tensor dshape;
  if (derivative) {
    dshape = torch::autograd::grad({shape.sum()}, {t}, {}, /*retain_graph=*/true, /*create_graph=*/graph)[0];
    if (!graph) dshape = dshape.detach();
  }
  if (shape_hook && kind_shape == GammaShape::Network) {
    shape = shape_hook(shape);
    if (dshape.defined()) dshape = shape_hook(dshape);
  }
  const auto g0 = gamma0(), g1 = gamma1();
  out.gamma = g0 + (g1 - g0) * shape;
  if (derivative) out.derivative = (g1 - g0) * dshape;
  if (!graph) {
    out.gamma = out.gamma.detach();
    if (out.derivative.defined()) out.derivative = out.derivative.detach();
  }
  return out;
}

std::shared_ptr<GammaSchedule> find_gamma_schedule(const Network& net) {
  for (const auto& child : net.named_children())
    if (child.key() == "gamma_schedule") return std::dynamic_pointer_cast<GammaSchedule>(child.value());
  return nullptr;
}

torch::Tensor log_alpha2(const torch::Tensor& gamma) { return torch::log_sigmoid(-gamma); }
torch::Tensor log_sigma2(const torch::Tensor& gamma) { return torch::log_sigmoid(gamma); }

NoiseSchedule discretize(const GammaSchedule& schedule, int64_t T) {
  if (T < 1) throw UsageError("a discretised gamma schedule needs T >= 1 steps, got " + std::to_string(T));
  torch::NoGradGuard no_grad;
  const auto gamma = schedule.at(torch::linspace(0.0, 1.0, T + 1, torch::kFloat64)).gamma.contiguous();
  const auto log_abar = log_alpha2(gamma).contiguous();
  const auto g = gamma.accessor<double, 1>();
  const auto la = log_abar.accessor<double, 1>();
  std::vector<double> betas(static_cast<size_t>(T + 1)), time(static_cast<size_t>(T + 1));
  for (int64_t i = 0; i <= T; ++i) {
    if (!std::isfinite(g[i]) || (i > 0 && !(g[i] > g[i - 1])))
      throw UsageError("the gamma schedule is not strictly increasing and finite on a " + std::to_string(T) +
                       "-step grid (gamma(" + std::to_string(i) + "/" + std::to_string(T) +
                       ") = " + std::to_string(g[i]) + ")");
    // beta_i = 1 - abar_i / abar_{i-1}, from the log ratio so that tiny betas keep their digits.
    betas[static_cast<size_t>(i)] = -std::expm1(la[i] - (i > 0 ? la[i - 1] : 0.0));
    time[static_cast<size_t>(i)] = g[i];
  }
  return NoiseSchedule(std::move(betas), {}, std::move(time));
}

}  // namespace diffuse

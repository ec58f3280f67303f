#include "diffuse/gamma_schedule.h"

#include <torch/autograd.h>
#include <torch/nn/functional/activation.h>

#include <cmath>
#include <stdexcept>

#include "diffuse/error.h"
#include "diffuse/models/network.h"
#include "diffuse/schedule.h"
#include "enum_names.h"

namespace diffuse {

namespace {

const EnumNames<GammaKind>& gamma_kinds() {
  static const EnumNames<GammaKind> table(
      "gamma schedule",
      {{GammaKind::Linear, "linear"}, {GammaKind::Endpoints, "endpoints"}, {GammaKind::Learned, "learned"}});
  return table;
}

// softplus^-1(y): the raw parameter whose softplus is y.
double inverse_softplus(double y) { return y + std::log(-std::expm1(-y)); }

torch::Tensor positive_weight(const torch::Tensor& raw) { return torch::nn::functional::softplus(raw); }

}  // namespace

std::vector<std::string> gamma_kind_names() { return gamma_kinds().names(); }
GammaKind parse_gamma_kind(const std::string& name) { return gamma_kinds().parse(name); }
std::string to_string(GammaKind v) { return gamma_kinds().to_string(v); }

GammaSchedule::GammaSchedule(const GammaSpec& spec) : spec_(spec) {
  if (!(std::isfinite(spec.gamma_min) && std::isfinite(spec.gamma_max) && spec.gamma_min < spec.gamma_max))
    throw UsageError("the gamma schedule needs finite gamma_min < gamma_max, got " + std::to_string(spec.gamma_min) +
                     " and " + std::to_string(spec.gamma_max));
  if (spec.kind == GammaKind::Linear) return;
  g0_ = register_parameter("gamma0", torch::full({}, spec.gamma_min));
  g1_ = register_parameter("gamma1", torch::full({}, spec.gamma_max));
  if (spec.kind != GammaKind::Learned) return;
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

GammaAt GammaSchedule::at(const torch::Tensor& t_in, bool derivative,
                          const std::function<torch::Tensor(const torch::Tensor&)>& shape_hook) const {
  const bool graph = torch::GradMode::is_enabled();
  torch::AutoGradMode enable(graph || derivative);
  auto t = t_in.detach().to(torch::kFloat64);
  if (derivative) t.requires_grad_(true);
  GammaAt out;
  torch::Tensor shape;  // s(t) in [0, 1], s(0) = 0, s(1) = 1
  if (spec_.kind == GammaKind::Learned) {
    const auto ends = raw_shape(torch::tensor({0.0, 1.0}, t.options().requires_grad(false)));
    shape = (raw_shape(t) - ends[0]) / (ends[1] - ends[0]);
  } else {
    shape = t;
  }
  torch::Tensor dshape;
  if (derivative) {
    dshape = torch::autograd::grad({shape.sum()}, {t}, {}, /*retain_graph=*/true, /*create_graph=*/graph)[0];
    if (!graph) dshape = dshape.detach();
  }
  if (shape_hook && spec_.kind == GammaKind::Learned) {
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

#include "diffuse/preconditioning.h"

#include <stdexcept>

namespace diffuse {

torch::Tensor Coef::times(const torch::Tensor& v) const {
  switch (fixed_) {
    case Fixed::Zero: return {};
    case Fixed::One: return v;
    case Fixed::None: break;
  }
  return v * value_;
}

torch::Tensor Coef::tensor(const torch::Tensor& like) const {
  switch (fixed_) {
    case Fixed::Zero: return torch::zeros_like(like);
    case Fixed::One: return torch::ones_like(like);
    case Fixed::None: break;
  }
  return value_.expand_as(like).to(like.scalar_type());
}

Coef Coef::operator*(const Coef& o) const {
  if (is_zero() || o.is_one()) return *this;
  if (o.is_zero() || is_one()) return o;
  return value_ * o.value_;
}

namespace {

// a + b where an undefined tensor is an absent term.
torch::Tensor sum(const torch::Tensor& a, const torch::Tensor& b) {
  if (!a.defined()) return b;
  if (!b.defined()) return a;
  return a + b;
}

// c (u + v) for the wrapper's combinations, whose two terms are never both absent.
torch::Tensor combine(const Coef& scale, const torch::Tensor& u, const torch::Tensor& v) {
  auto t = sum(u, v);
  if (!t.defined()) throw std::logic_error("preconditioning: a combination with no terms");
  return scale.is_one() ? t : scale.times(t);
}

}  // namespace

torch::Tensor Preconditioning::x0(const torch::Tensor& x_t, const torch::Tensor& f) const {
  return combine(x0_scale, skip.times(x_t), out.times(f));
}
torch::Tensor Preconditioning::eps(const torch::Tensor& x_t, const torch::Tensor& f) const {
  return combine(eps_scale, eps_skip.times(x_t), eps_out.times(f));
}
torch::Tensor Preconditioning::target(const torch::Tensor& x0, const torch::Tensor& eps) const {
  return combine(Coef::one(), target_x0.times(x0), target_eps.times(eps));
}

namespace {

// EDM (Karras et al. 2022, Table 1) with x = x_t / a, sigma = s / a and q = a^2 (sigma^2 + sigma_data^2)
// = s^2 + sigma_data^2 a^2:  c_skip = sigma_data^2 a^2 / q,  c_out = s sigma_data / sqrt(q),
// c_in = a / sqrt(q); in VP terms every coefficient stays finite for a = 0 and for s = 0.
torch::Tensor edm_q(const NoiseLevel& n, double sd) { return n.s * n.s + (sd * sd) * (n.a * n.a); }

Preconditioning edm(const NoiseLevel& n, double sd) {
  const auto& a = n.a;
  const auto& s = n.s;
  const auto q = edm_q(n, sd);
  const auto r = q.rsqrt();
  return {r, (sd * sd) * a / q, s * sd * r, s / q, -sd * a * r, s * r / sd, -sd * a * r, Coef::one(), Coef::one()};
}

}  // namespace

Preconditioning preconditioning(Prediction p, const NoiseLevel& n, double sigma_data) {
  const auto& a = n.a;
  const auto& s = n.s;
  const auto one = Coef::one(), zero = Coef::zero();
  switch (p) {
    // x0 = (x_t - s eps) / a  (Luo eq. 115 rearranged)
    case Prediction::Epsilon: return {one, one, -s, zero, one, zero, one, 1.0 / a, one};
    // eps = (x_t - a x0) / s
    case Prediction::X0: return {one, zero, one, one, -a, one, zero, one, 1.0 / s};
    // v = a eps - s x0;  x0 = a x_t - s v;  eps = s x_t + a v
    case Prediction::V: return {one, a, -s, s, a, -s, a, one, one};
    // Tweedie (Luo eq. 133): score = -eps / s, a x0 = x_t + s^2 score
    case Prediction::Score: return {one, one, s * s, zero, -s, zero, -1.0 / s, 1.0 / a, one};
    case Prediction::Edm: return edm(n, sigma_data);
  }
  throw std::logic_error("preconditioning: unknown prediction");
}

Coef input_scale(Prediction p, const NoiseLevel& n, double sigma_data) {
  if (p != Prediction::Edm) return Coef::one();
  return edm_q(n, sigma_data).rsqrt();
}

}  // namespace diffuse

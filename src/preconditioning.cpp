#include "diffuse/preconditioning.h"

#include <stdexcept>

namespace diffuse {

torch::Tensor Preconditioning::x0(const torch::Tensor& x_t, const torch::Tensor& f) const {
  auto v = x_t * skip + f * out;
  return x0_scale.defined() ? v * x0_scale : v;
}
torch::Tensor Preconditioning::eps(const torch::Tensor& x_t, const torch::Tensor& f) const {
  auto v = x_t * eps_skip + f * eps_out;
  return eps_scale.defined() ? v * eps_scale : v;
}
torch::Tensor Preconditioning::target(const torch::Tensor& x0, const torch::Tensor& eps) const {
  return x0 * target_x0 + eps * target_eps;
}

namespace {

// EDM (Karras et al. 2022, Table 1) with x = x_t / a, sigma = s / a and q = a^2 (sigma^2 + sigma_data^2)
// = s^2 + sigma_data^2 a^2:  c_skip = sigma_data^2 a^2 / q,  c_out = s sigma_data / sqrt(q),
// c_in = a / sqrt(q); in VP terms every coefficient stays finite for a = 0 and for s = 0.
Preconditioning edm(const NoiseLevel& n, double sd) {
  const auto& a = n.a;
  const auto& s = n.s;
  const auto q = s * s + (sd * sd) * (a * a);
  const auto r = q.rsqrt();
  return {r, (sd * sd) * a / q, s * sd * r, s / q, -sd * a * r, s * r / sd, -sd * a * r, {}, {}};
}

}  // namespace

Preconditioning preconditioning(Prediction p, const NoiseLevel& n, double sigma_data) {
  const auto& a = n.a;
  const auto& s = n.s;
  const auto one = torch::ones_like(a), zero = torch::zeros_like(a);
  switch (p) {
    // x0 = (x_t - s eps) / a  (Luo eq. 115 rearranged)
    case Prediction::Epsilon: return {one, one, -s, zero, one, zero, one, 1.0 / a, {}};
    // eps = (x_t - a x0) / s
    case Prediction::X0: return {one, zero, one, one, -a, one, zero, {}, 1.0 / s};
    // v = a eps - s x0;  x0 = a x_t - s v;  eps = s x_t + a v
    case Prediction::V: return {one, a, -s, s, a, -s, a, {}, {}};
    // Tweedie (Luo eq. 133): score = -eps / s, a x0 = x_t + s^2 score
    case Prediction::Score: return {one, one, s * s, zero, -s, zero, -1.0 / s, 1.0 / a, {}};
    case Prediction::Edm: return edm(n, sigma_data);
  }
  throw std::logic_error("preconditioning: unknown prediction");
}

}  // namespace diffuse

#include "diffuse/parameterization.h"

#include "diffuse/error.h"
#include "diffuse/preconditioning.h"
#include "diffuse/schedule.h"
#include "enum_names.h"

namespace diffuse {

namespace {
const EnumNames<Prediction>& predictions() {
  static const EnumNames<Prediction> table("prediction", {{Prediction::Epsilon, "epsilon", {"eps"}},
                                                          {Prediction::X0, "x0", {"sample", "x_start"}},
                                                          {Prediction::V, "v", {"v_prediction"}},
                                                          {Prediction::Score, "score"},
                                                          {Prediction::Edm, "edm"}});
  return table;
}
}  // namespace
std::vector<std::string> prediction_names() { return predictions().names(); }
Prediction parse_prediction(const std::string& name) { return predictions().parse(name); }
std::string to_string(Prediction v) { return predictions().to_string(v); }

NoiseLevel noise_level(const NoiseSchedule& schedule, const torch::Tensor& t, const torch::Tensor& like) {
  return {schedule.gather(schedule.sqrt_alpha_bar(), t, like),
          schedule.gather(schedule.sqrt_one_minus_alpha_bar(), t, like)};
}

NoiseLevel noise_level_at_sigma(const torch::Tensor& sigma) {
  const auto a = (sigma.square() + 1.0).rsqrt();
  return {a, sigma * a};
}

torch::Tensor x0_from_eps(const torch::Tensor& x_t, const torch::Tensor& eps, const NoiseLevel& n) {
  return (x_t - n.s * eps) / n.a;
}
torch::Tensor eps_from_x0(const torch::Tensor& x_t, const torch::Tensor& x0, const NoiseLevel& n) {
  return (x_t - n.a * x0) / n.s;
}
torch::Tensor v_from_x0_eps(const torch::Tensor& x0, const torch::Tensor& eps, const NoiseLevel& n) {
  return n.a * eps - n.s * x0;
}
torch::Tensor x0_from_v(const torch::Tensor& x_t, const torch::Tensor& v, const NoiseLevel& n) {
  return n.a * x_t - n.s * v;
}
torch::Tensor eps_from_v(const torch::Tensor& x_t, const torch::Tensor& v, const NoiseLevel& n) {
  return n.s * x_t + n.a * v;
}
torch::Tensor score_from_eps(const torch::Tensor& eps, const NoiseLevel& n) { return -eps / n.s; }
torch::Tensor eps_from_score(const torch::Tensor& score, const NoiseLevel& n) { return -n.s * score; }

Predictions convert(Prediction p, const torch::Tensor& output, const torch::Tensor& x_t, const NoiseLevel& n,
                    double sigma_data) {
  const auto pc = preconditioning(p, n, sigma_data);
  Predictions out;
  out.x0 = pc.x0(x_t, output);
  out.eps = pc.eps(x_t, output);
  if (p == Prediction::V) out.v = output;
  else out.v = v_from_x0_eps(out.x0, out.eps, n);
  if (p == Prediction::Score) out.score = output;
  else out.score = score_from_eps(out.eps, n);
  return out;
}

torch::Tensor training_target(Prediction p, const torch::Tensor& x0, const torch::Tensor& eps, const NoiseLevel& n,
                              double sigma_data) {
  return preconditioning(p, n, sigma_data).target(x0, eps);
}

}  // namespace diffuse

// A continuous-time noise schedule in the SNR view (Kingma et al. 2021, "Variational Diffusion
// Models"; Luo 2022 eqs. 102-108): gamma(t) = -log SNR(t) on t in [0, 1], increasing, with
//   alpha_t^2 = sigmoid(-gamma(t)),  sigma_t^2 = sigmoid(gamma(t)),  z_t = alpha_t x + sigma_t eps,
// so alpha^2 + sigma^2 = 1 (variance preserving) and SNR = alpha^2 / sigma^2 = exp(-gamma).
// Kinds:
//   Linear      gamma = gamma_min + (gamma_max - gamma_min) t, fixed (VDM's -13.3 .. 5 by default);
//   Endpoints   the same line with gamma(0) and gamma(1) learned;
//   Learned     VDM's monotone network: gamma = g0 + (g1 - g0) (h(t) - h(0)) / (h(1) - h(0)) with
//               h(t) = l1(t) + l3(phi(l2(l1(t)))) / hidden, phi(u) = 2 sigmoid(u) - 1, and every
//               weight made positive by softplus, so h (and gamma) increases strictly in t;
//               g0 = gamma(0) and g1 = gamma(1) are learned parameters as well;
//   Cosine      the SNR of improved-diffusion's cosine schedule (Nichol & Dhariwal eq. 17, offset
//               cosine_s) in its continuous time tau, alpha^2(tau) = f(tau) / f(0) with
//               f = cos^2((tau + s) / (1 + s) pi / 2), fixed;
//   LinearBeta  the SNR of DDPM's linear betas (1e-4 .. 0.02 at T = 1000) as the VP SDE's
//               continuous limit, -log alpha^2(tau) = b0 tau + (b1 - b0) tau^2 / 2 with b0 = 0.1,
//               b1 = 20 (Song et al. 2021), fixed.
// The last two are the discrete schedules seen through their SNR: tau runs over the part
// [tau(gamma_min), tau(gamma_max)] of the curve between the configured ends, linearly in t, so
// every kind spans the same gamma_min .. gamma_max.
// The module's parameters live in the network (factory.cpp registers it as "gamma_schedule"), so
// checkpoints, EMA, the optimiser and gradient all-reduce carry them like any weight. gamma is
// computed in float64 whatever the parameters' dtype.
#pragma once

#include <torch/nn/module.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace diffuse {

class Network;
class NoiseSchedule;

enum class GammaKind { Linear, Endpoints, Learned, Cosine, LinearBeta };
GammaKind parse_gamma_kind(const std::string& name);  // linear, endpoints, learned, cosine, linear-beta
std::string to_string(GammaKind kind);
std::vector<std::string> gamma_kind_names();

struct GammaSpec {
  GammaKind kind = GammaKind::Linear;
  double gamma_min = -13.3;  // gamma(0): the least noisy latent z_0 (log SNR 13.3)
  double gamma_max = 5.0;    // gamma(1): the prior's latent z_1 (log SNR -5)
  int64_t hidden = 1024;     // Learned: width of the monotone network's hidden layer
  double cosine_s = 0.008;   // Cosine: the offset s
};

// Whether a kind has parameters that training moves (Endpoints, Learned).
bool gamma_kind_learned(GammaKind kind);

// How a kind goes from gamma_min to gamma_max in t: a line (Linear, Endpoints), a fixed curve
// (Cosine, LinearBeta), or a trained network (Learned).
enum class GammaShape { Line, Curve, Network };
GammaShape gamma_kind_shape(GammaKind kind);

// The largest gamma_max a kind reaches (its curve's value at tau = 1): infinite except for
// LinearBeta, whose VP SDE ends at log(expm1(10.05)) = 10.05.
double gamma_kind_limit(GammaKind kind);

// gamma at times t, and d gamma / dt when asked.
struct GammaAt {
  torch::Tensor gamma;       // float64, t's shape
  torch::Tensor derivative;  // float64, t's shape; undefined unless asked
};

class GammaSchedule : public torch::nn::Module {
 public:
  explicit GammaSchedule(const GammaSpec& spec);
  const GammaSpec& spec() const { return spec_; }
  bool learnable() const { return gamma_kind_learned(spec_.kind); }
  // Whether part of the schedule is its shape (the Learned kind's network), trained to lower the
  // variance of the diffusion loss rather than the bound itself (vdm.h).
  bool has_shape() const { return gamma_kind_shape(spec_.kind) == GammaShape::Network; }

  // gamma(t) for t in [0, 1] (any float dtype and shape), float64. With `derivative`, also
  // gamma'(t) by automatic differentiation of the schedule, kept in the graph (create_graph) so
  // that a loss weighted by gamma' trains the schedule. `shape_hook`, when given, is applied to
  // the Learned kind's normalised shape s(t) and s'(t) before they meet the endpoints: the
  // variance objective's gradient route (vdm.cpp).
  GammaAt at(const torch::Tensor& t, bool derivative = false,
             const std::function<torch::Tensor(const torch::Tensor&)>& shape_hook = {}) const;
  torch::Tensor forward(const torch::Tensor& t) const { return at(t).gamma; }
  // gamma(0) and gamma(1) as 0-dim float64 tensors (in the graph for learned endpoints).
  torch::Tensor gamma0() const;
  torch::Tensor gamma1() const;

 private:
  torch::Tensor raw_shape(const torch::Tensor& t) const;  // h(t), Learned only
  torch::Tensor curve(const torch::Tensor& tau) const;    // gamma(tau), Cosine and LinearBeta only

  GammaSpec spec_;
  double tau0_ = 0, tau1_ = 1;            // Cosine, LinearBeta: the curve's tau at gamma_min, gamma_max
  torch::Tensor g0_, g1_;                 // Endpoints, Learned
  torch::Tensor w1_, b1_, w2_, b2_, w3_;  // Learned: l1 (1 -> 1), l2 (1 -> hidden), l3 (hidden -> 1)
};

// The schedule registered in a network for diffusion.schedule: vdm; nullptr if it has none.
std::shared_ptr<GammaSchedule> find_gamma_schedule(const Network& net);

// alpha^2 = sigmoid(-gamma) and sigma^2 = sigmoid(gamma) in log space (exact for |gamma| large).
torch::Tensor log_alpha2(const torch::Tensor& gamma);
torch::Tensor log_sigma2(const torch::Tensor& gamma);

// The discrete view of the schedule: T + 1 latents at t_i = i / T, i = 0..T, as a NoiseSchedule
// of T + 1 steps with alpha_bar_i = sigmoid(-gamma(t_i)) (betas formed in log space, float64),
// whose step i feeds the network gamma(t_i) (model_time). Its step 0 is z_0, the decoder's latent;
// its last step is z_1, the prior's. Throws UsageError if gamma is not strictly increasing on
// the grid.
NoiseSchedule discretize(const GammaSchedule& gamma, int64_t T);

}  // namespace diffuse

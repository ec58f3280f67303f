// The variational bound of a diffusion model on a continuous gamma schedule (Kingma et al. 2021,
// "Variational Diffusion Models"; Luo 2022 eqs. 58, 100-108), for 8-bit data x in [-1, 1]:
//   -ELBO = L_recon + L_prior + L_diffusion
//   L_prior     = KL(q(z_1 | x) || N(0, I))
//   L_recon     = E_{z_0 ~ q(z_0|x)} [-log p(x | z_0)]
//   L_diffusion, continuous time (T -> infinity):
//               1/2 E_{t~U(0,1), eps} [gamma'(t) ||eps - eps_hat(z_t; t)||^2]
//   L_diffusion, T steps (s = t - 1/T, t uniform on {1/T, ..., 1}):
//               T/2 E_{t, eps} [expm1(gamma(t) - gamma(s)) ||eps - eps_hat(z_t; t)||^2]
// eps_hat comes from the network through the one preconditioning wrapper, so any prediction kind
// trains on this bound. Everything is returned per example in bits per dimension.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "diffuse/gamma_schedule.h"
#include "diffuse/parameterization.h"

namespace diffuse {

// p(x | z_0) for 8-bit data:
//  - Vdm: VDM's decoder, p(x_i = v | z_0) proportional to q(z_0,i | x_i = v) over the 256 values v,
//    a softmax of -SNR(0)/2 (z_0/alpha_0 - v)^2;
//  - Gaussian: the discretised Gaussian N(z_0 / alpha_0, sigma_0^2 / alpha_0^2) over the 256 bins
//    (losses.h), edge bins open.
enum class VdmDecoder { Vdm, Gaussian };
VdmDecoder parse_vdm_decoder(const std::string& name);  // vdm, gaussian
std::string to_string(VdmDecoder d);
std::vector<std::string> vdm_decoder_names();

// The network's raw output F at the (network-scaled) input and the gamma it is conditioned on.
using GammaModelFn = std::function<torch::Tensor(const torch::Tensor& input, const torch::Tensor& gamma)>;

struct VdmOptions {
  int64_t timesteps = 0;  // 0: the continuous-time loss; T >= 1: the T-step discrete loss
  VdmDecoder decoder = VdmDecoder::Vdm;
  Prediction prediction = Prediction::Epsilon;
  double sigma_data = 0.5;  // Prediction::Edm only
  // Train the Learned schedule's shape on the variance of L_diffusion instead of its mean
  // (VDM section 5.2): see vdm_loss.
  bool variance_objective = true;
};

struct VdmTerms {
  torch::Tensor diffusion, prior, recon, total;  // [B] bits/dim
  torch::Tensor eps_mse;                         // [B] mean squared error of eps_hat
};

// L_prior per example, bits/dim: 1/2 mean(sigma_1^2 + alpha_1^2 x^2 - log sigma_1^2 - 1) / ln 2.
torch::Tensor vdm_prior_bpd(const GammaSchedule& gamma, const torch::Tensor& x);
// L_recon per example, bits/dim, for one draw z_0 = alpha_0 x + sigma_0 noise.
torch::Tensor vdm_recon_bpd(const GammaSchedule& gamma, const torch::Tensor& x, const torch::Tensor& noise,
                            VdmDecoder decoder);

// One draw of the bound for data x ([B, ...], on the 8-bit grid in [-1, 1]) at times t [B] with
// noise eps (x's shape) for z_t and noise0 for z_0 (the reconstruction term). With autograd on,
// the terms carry gradients into the network and the schedule's parameters. When the schedule
// has a shape (GammaKind::Learned) and options.variance_objective is set, the gradient that
// reaches the shape is that of E[L_diffusion^2] instead of E[L_diffusion]: the expectation of
// L_diffusion depends on gamma(0) and gamma(1) alone, so its variance is what the shape can
// lower, and d Var / d eta = d E[L^2] / d eta. Implementation: the upstream gradient at s(t_i) and
// s'(t_i) is multiplied by 2 L_diffusion,i (filled in once the loss is known), one backward pass.
VdmTerms vdm_loss(const GammaSchedule& gamma, const GammaModelFn& model, const torch::Tensor& x, const torch::Tensor& t,
                  const torch::Tensor& eps, const torch::Tensor& noise0, const VdmOptions& options = {});

// Monte Carlo estimate of the bound for each image of x: prior + recon (one z_0 draw) + the mean
// of `draws` L_diffusion draws, times antithetic within each draw across the batch. Runs without
// autograd except for gamma' (continuous time). Random numbers from gen.
struct VdmBound {
  torch::Tensor per_image;  // [B] float64 bits/dim
  torch::Tensor diffusion, prior, recon;
  // [draws] the batch mean of L_diffusion at each draw: their spread is the noise of a training
  // batch's loss estimate for these images, which a learned schedule's shape lowers.
  torch::Tensor draw_means;
};
VdmBound vdm_bound(const GammaSchedule& gamma, const GammaModelFn& model, const torch::Tensor& x, int64_t draws,
                   const VdmOptions& options, torch::Generator gen = {});

}  // namespace diffuse

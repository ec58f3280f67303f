// One wrapper for every parameterisation (Karras et al. 2022, "EDM", eq. 7):
//   D(x; sigma) = c_skip x + c_out F(c_in x; c_noise),   x = x0 + sigma eps,
// written in the VP coordinate the network is trained on, x_t = a x0 + s eps = a x (sigma = s / a):
//   x0_hat  = (skip x_t + out F(in x_t)) x0_scale
//   eps_hat = (eps_skip x_t + eps_out F) eps_scale    (= (x - D) / sigma, the EDM ODE slope)
//   F*      = target_x0 x0 + target_eps eps          (the regression target: F* makes x0_hat = x0)
// Epsilon, x0, v and score prediction are this wrapper with fixed coefficients; EDM's own uses
// sigma_data. The losses, the samplers' denoiser and bits/dim all convert through it, so
// training and sampling cannot disagree. Each kind's coefficients are written out in closed
// form so that none is computed as a difference of nearly equal numbers (eps prediction keeps
// eps_hat = F exactly, x0 prediction keeps x0_hat = F). The common scales keep a division a
// division: eps prediction's x0 = (x_t - s F) / a stays +-inf, not inf - inf,
// where a = 0, so that clipping still gives a finite x0 there (zero terminal SNR grids).
#pragma once

#include <torch/types.h>

#include <utility>

#include "diffuse/parameterization.h"

namespace diffuse {

// A coefficient of the wrapper. The fixed 0 and 1 of the classic parameterisations cost no
// arithmetic on the hot path (and 0 times an infinite x_t is never formed); others are tensors.
class Coef {
 public:
  Coef(torch::Tensor value) : value_(std::move(value)) {}  // implicit: any tensor is a coefficient
  static Coef zero() { return Coef(Fixed::Zero); }
  static Coef one() { return Coef(Fixed::One); }

  bool is_zero() const { return fixed_ == Fixed::Zero; }
  bool is_one() const { return fixed_ == Fixed::One; }
  // c v: v itself for 1, undefined for 0 (an absent term).
  torch::Tensor times(const torch::Tensor& v) const;
  // The value as a tensor shaped and typed as `like` (to read it, not for the hot path).
  torch::Tensor tensor(const torch::Tensor& like) const;
  Coef operator*(const Coef& o) const;

 private:
  enum class Fixed { None, Zero, One };
  explicit Coef(Fixed f) : fixed_(f) {}
  torch::Tensor value_;
  Fixed fixed_ = Fixed::None;
};

struct Preconditioning {
  Coef in, skip, out, eps_skip, eps_out, target_x0, target_eps, x0_scale, eps_scale;

  torch::Tensor x0(const torch::Tensor& x_t, const torch::Tensor& f) const;
  torch::Tensor eps(const torch::Tensor& x_t, const torch::Tensor& f) const;
  torch::Tensor target(const torch::Tensor& x0, const torch::Tensor& eps) const;
  // The coefficient of F in x0_hat: EDM's c_out (the loss weights' scale).
  Coef c_out() const { return out * x0_scale; }
};

// The coefficients at noise level n (a = sqrt(abar), s = sqrt(1 - abar)), shaped and typed as
// n's tensors. sigma_data is used by Prediction::Edm only.
Preconditioning preconditioning(Prediction p, const NoiseLevel& n, double sigma_data = 0.5);

// Its c_in alone, what the network's input is scaled by (1 for all but Prediction::Edm).
Coef input_scale(Prediction p, const NoiseLevel& n, double sigma_data = 0.5);

}  // namespace diffuse

// The ELBO's pieces and the training losses.
//
// Luo (2022) eq. 58 splits the negative ELBO of a diffusion model into
//   L_0      = -log p(x_0 | x_1)                       reconstruction (decoder) term
//   L_T      = KL(q(x_T | x_0) || p(x_T))              prior-matching term
//   L_{t-1}  = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))   denoising-matching terms
// Everything here returns one value per batch element ([B]), averaged over the other
// dimensions and, for the *_bpd functions, in bits per dimension (nats / ln 2).
#pragma once

#include <torch/types.h>

#include <string>
#include <vector>

#include "diffuse/diffusion.h"

namespace diffuse {

// Mean over every dimension but the first: [B, ...] -> [B].
torch::Tensor mean_flat(const torch::Tensor& x);

// KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats.
torch::Tensor normal_kl(const torch::Tensor& mean1, const torch::Tensor& logvar1, const torch::Tensor& mean2,
                        const torch::Tensor& logvar2);

// The normal CDF used for the decoder's bin probabilities.
//  - Exact: Phi, evaluated in log space in the tails (finite and exact far out, even in float32).
//  - Tanh: improved-diffusion's approximation 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) with
//    its clamps (log of max(p, 1e-12)), for comparison with published bits/dim. It is within
//    about 2e-4 of Phi; the bound moves in the third decimal. (improved-diffusion computed in
//    float32 and diffuse's bound runs in float64, so far-tail pixels can still differ slightly.)
enum class DecoderCdf { Exact, Tanh };
DecoderCdf parse_decoder_cdf(const std::string& name);  // exact, tanh
std::string to_string(DecoderCdf v);
std::vector<std::string> decoder_cdf_names();

// log p(x) of 8-bit data x in [-1, 1] under a Gaussian discretised into 256 bins of width 2/255;
// the edge bins extend to -inf and +inf, so the 256 probabilities sum to 1. Elementwise, nats.
torch::Tensor discretized_gaussian_log_likelihood(const torch::Tensor& x, const torch::Tensor& mean,
                                                  const torch::Tensor& log_scale, DecoderCdf cdf = DecoderCdf::Exact);

// L_T: KL(q(x_T | x_0) || N(0, I)) in bits/dim, [B].
torch::Tensor prior_bpd(const GaussianDiffusion& diffusion, const torch::Tensor& x0);

// The VLB term at t for the model's output: L_{t-1} (KL) where t > 0, L_0 (decoder NLL) where
// t == 0. In bits/dim, [B].
struct VlbTerm {
  torch::Tensor bpd;      // [B]
  torch::Tensor x0_pred;  // the model's x_0 (after clipping, if asked)
  torch::Tensor eps_pred;
};
VlbTerm vlb_term_bpd(const GaussianDiffusion& diffusion, const torch::Tensor& model_output, const torch::Tensor& x0,
                     const torch::Tensor& x_t, const torch::Tensor& t, const ReverseOptions& opts = {},
                     DecoderCdf cdf = DecoderCdf::Exact);

enum class LossType { Simple, Hybrid, Kl };
LossType parse_loss_type(const std::string& name);  // simple|mse, hybrid, kl
std::string to_string(LossType v);
std::vector<std::string> loss_type_names();

enum class LossWeighting { None, MinSnr, Snr };
LossWeighting parse_loss_weighting(const std::string& name);  // none, min_snr, snr
std::string to_string(LossWeighting v);
std::vector<std::string> loss_weighting_names();

struct LossConfig {
  LossType type = LossType::Simple;
  double hybrid_lambda = 0.001;  // Nichol & Dhariwal's lambda for L_hybrid = L_simple + lambda L_vlb
  LossWeighting weighting = LossWeighting::None;
  double min_snr_gamma = 5.0;  // Hang et al. (2023)
};

// Per-sample weight of the MSE on the network's target F*. The MSE on F* is the x0-MSE over
// c_out^2 (preconditioning.h), so a weight w0 meant for the x0-MSE becomes w0 c_out^2:
//  - None: 1, which for EDM's preconditioning is EDM's lambda(sigma) = 1 / c_out^2 on the x0-MSE.
//  - MinSnr: w0 = min(snr, gamma) (Hang et al. 2023): /snr for eps, x1 for x0, /(snr+1) for v.
//  - Snr: w0 = snr, the loss in eps units: snr for x0, snr/(snr+1) for v, 1 for eps.
// At snr = 0 (zero terminal SNR) c_out^2 diverges for eps and score; the weight is its limit, 1.
torch::Tensor loss_weight(const GaussianDiffusion& diffusion, const LossConfig& cfg, const torch::Tensor& t,
                          const torch::Tensor& like);
// The same at per-sample noise levels n (any shape with B elements); returns [B] in like's dtype.
torch::Tensor loss_weight(const GaussianDiffusion& diffusion, const LossConfig& cfg, const NoiseLevel& n,
                          const torch::Tensor& like);

struct TrainingLoss {
  torch::Tensor loss;  // [B], the quantity to minimise (before timestep-sampler weights)
  torch::Tensor mse;   // [B], weighted MSE on the target (undefined for Kl)
  torch::Tensor vb;    // [B], the VLB term in bits/dim, scaled as it enters the loss (undefined for Simple)
};

// Losses for one batch. model_output is the network's output at (x_t, t) where
// x_t = q_sample(x0, t, noise). For Hybrid the VLB term sees the predicted mean detached, so
// it only trains the variance (Nichol & Dhariwal section 3.1). The VLB term enters as
// T * L_t, an unbiased estimate of the whole bound's diffusion part (Kl) or lambda times it (Hybrid).
TrainingLoss training_losses(const GaussianDiffusion& diffusion, const LossConfig& cfg,
                             const torch::Tensor& model_output, const torch::Tensor& x0, const torch::Tensor& x_t,
                             const torch::Tensor& t, const torch::Tensor& noise);

// The weighted MSE on the target alone, at per-sample noise levels n (continuous noise levels,
// as EDM's log-normal sigma; x_t = a x0 + s noise): Simple losses only. Returns loss = mse.
TrainingLoss mse_loss(const GaussianDiffusion& diffusion, const LossConfig& cfg, const torch::Tensor& model_output,
                      const torch::Tensor& x0, const torch::Tensor& noise, const NoiseLevel& n);

// A noisy-image classifier's loss (guided-diffusion's classifier_train.py): the cross-entropy of
// its logits [B, K] at x_t against the labels [B] (int64 in 0..K-1) in `loss`; mse and vb
// undefined.
TrainingLoss classifier_losses(const torch::Tensor& logits, const torch::Tensor& labels);

}  // namespace diffuse

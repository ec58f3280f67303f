// Negative ELBO in bits per dimension (Luo 2022 eq. 58; Ho et al. 2020 eq. 5):
//   -ELBO = L_T + sum_{t>=2} L_{t-1} + L_0
// computed term by term as improved-diffusion's `GaussianDiffusion.calc_bpd_loop`, plus a
// cheaper unbiased Monte Carlo estimate over random timesteps.
//
// Time indices are the 0-based steps of the diffusion's (possibly respaced) schedule: the term
// at index t is KL(q(x_t|x_{t+1},x_0) || p(x_t|x_{t+1})) in Luo's 1-based notation for t > 0,
// and the decoder NLL -log p(x_0|x_1) (8-bit discretised Gaussian) at t = 0.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "diffuse/diffusion.h"
#include "diffuse/losses.h"
#include "diffuse/model_fn.h"

namespace diffuse {

struct BpdOptions {
  bool clip_x0 = true;  // clamp the predicted x_0 to [-1, 1] (improved-diffusion's clip_denoised)
  DecoderCdf decoder_cdf = DecoderCdf::Exact;  // the normal CDF of the decoder term L_0
  std::function<void(int64_t t)> progress;     // called after the term at step t is done (optional)
  // The noise for step t (x0's shape), instead of the generator's: to reproduce another
  // program's draws (tests against improved-diffusion). Optional.
  std::function<torch::Tensor(int64_t t)> noise;
};

// All [B] tensors are float64 on x0's device; [B, T] tensors have column t for step t
// (improved-diffusion stacks them from t = T-1 down; here they are in step order).
struct BpdResult {
  torch::Tensor total;      // [B] prior + decoder + diffusion
  torch::Tensor prior;      // [B] L_T = KL(q(x_T|x_0) || N(0, I))
  torch::Tensor decoder;    // [B] L_0, the term at t = 0
  torch::Tensor diffusion;  // [B] sum of the KL terms at t >= 1
  torch::Tensor terms;      // [B, T] the VLB term at each t (terms[:, 0] == decoder)
  torch::Tensor x0_mse;     // [B, T] mean squared error of the predicted x_0 (after clipping)
  torch::Tensor eps_mse;    // [B, T] mean squared error of the implied eps against the true noise
};

// Every term of the bound for a batch of data x0 ([B, ...] in [-1, 1] on the 8-bit grid for a
// meaningful decoder term): one model call per t on the whole batch. Noise is drawn from `gen`
// (the default generator if undefined) as one randn(x0.sizes()) per t, for t = T-1 down to 0,
// on gen's device and moved to x0's. The terms are computed in float64; the model sees x_t in
// x0's dtype. Runs without autograd.
BpdResult calc_bpd_loop(const GaussianDiffusion& diffusion, const ModelFn& model, const torch::Tensor& x0,
                        torch::Generator gen = {}, const BpdOptions& opts = {});

// Dataset-level means of calc_bpd_loop results, accumulated batch by batch.
struct BpdSummary {
  int64_t num_images = 0;
  int64_t timesteps = 0;
  double total_bpd = 0, prior_bpd = 0, decoder_bpd = 0, diffusion_bpd = 0;
  double total_bpd_std_error = 0;               // standard error of the mean total over images
  std::vector<double> vb_bpd, x0_mse, eps_mse;  // per-t means, index t
  std::string decoder_cdf = "exact";            // the normal CDF used for L_0 (eval.decoder_cdf)
};

// A batch's results as one row per image, float64 on the CPU (one host copy): total, prior,
// decoder, diffusion, then terms, x0_mse and eps_mse at t = 0..T-1: [B, 4 + 3T]. The form in
// which ranks send their batches to rank 0.
torch::Tensor bpd_rows(const BpdResult& batch);

class BpdAccumulator {
 public:
  void add(const BpdResult& batch) { add_rows(bpd_rows(batch)); }
  // Rows of bpd_rows, in image order (rows of several batches at once give the same sums as the
  // batches one after another).
  void add_rows(const torch::Tensor& rows);
  int64_t num_images() const { return n_; }
  BpdSummary summary() const;

 private:
  int64_t n_ = 0;
  double total_ = 0, total_mean_ = 0, total_m2_ = 0, prior_ = 0, decoder_ = 0, diffusion_ = 0;
  std::vector<double> vb_, x0_mse_, eps_mse_;
};

// CSV with header "t,vb_bpd,x0_mse,eps_mse", one row per t ascending. Doubles are written in
// their shortest round-trip form. Throws UsageError naming the file if it cannot be written.
void write_bpd_terms_csv(const std::string& path, const BpdSummary& summary);
// JSON object: total_bpd, total_bpd_std_error, prior_bpd, decoder_bpd, diffusion_bpd,
// num_images, timesteps, and the per-t arrays vb_bpd, x0_mse, eps_mse. Non-finite values are
// written as null.
std::string bpd_summary_json(const BpdSummary& summary);
void write_bpd_json(const std::string& path, const BpdSummary& summary);

// --- Monte Carlo estimate over random timesteps ---------------------------------------------

struct BpdMcOptions {
  int64_t samples_per_image = 8;  // K random timesteps per image
  // p(t), [T] non-negative (normalised here); undefined = uniform. Each draw gets the
  // importance weight 1 / (T p(t)), so the estimate stays unbiased.
  torch::Tensor probabilities;
  bool clip_x0 = true;
  DecoderCdf decoder_cdf = DecoderCdf::Exact;
  std::function<void(int64_t k)> progress;  // called after draw k of K (optional)
};

struct BpdEstimate {
  torch::Tensor per_image;  // [B] float64: prior + T * mean_k w_k term(t_k)
  double mean = 0;          // over images
  double std_error = 0;     // std(per_image) / sqrt(B) (0 for B = 1)
  int64_t num_images = 0;
  int64_t samples_per_image = 0;
};

// Unbiased estimate of calc_bpd_loop's expected total: K model calls on the whole batch, each
// with its own t per image (t drawn, then noise, from `gen`, for k = 0..K-1).
BpdEstimate estimate_bpd_mc(const GaussianDiffusion& diffusion, const ModelFn& model, const torch::Tensor& x0,
                            torch::Generator gen = {}, const BpdMcOptions& opts = {});

// Mean and standard error of per-image estimates (e.g. several batches concatenated).
BpdEstimate make_bpd_estimate(const torch::Tensor& per_image, int64_t samples_per_image);

}  // namespace diffuse

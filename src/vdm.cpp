#include "diffuse/vdm.h"

#include <torch/autograd.h>

#include <cmath>

#include "diffuse/error.h"
#include "diffuse/eval/random.h"
#include "diffuse/losses.h"
#include "diffuse/preconditioning.h"
#include "diffuse/timestep_sampler.h"
#include "enum_names.h"

namespace diffuse {

namespace {

const EnumNames<VdmDecoder>& vdm_decoders() {
  static const EnumNames<VdmDecoder> table("decoder", {{VdmDecoder::Vdm, "vdm"}, {VdmDecoder::Gaussian, "gaussian"}});
  return table;
}

const double kLn2 = std::log(2.0);

// Identity forward; backward multiplies the incoming gradient by w, whose values are written
// after the forward pass (the per-example loss is known only then). w is read, not saved for
// backward, so writing it in place is allowed.
struct ScaleGradient : public torch::autograd::Function<ScaleGradient> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& v, const torch::Tensor& w) {
    ctx->saved_data["w"] = w;
    return v.clone();
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const auto w = ctx->saved_data["w"].toTensor();
    return {grads[0] * w.to(grads[0].scalar_type()), torch::Tensor()};
  }
};

// [B] -> [B, 1, ..., 1] to broadcast against x.
torch::Tensor per_example(const torch::Tensor& v, const torch::Tensor& x) {
  auto shape = std::vector<int64_t>(static_cast<size_t>(x.dim()), 1);
  shape[0] = v.size(0);
  return v.reshape(shape);
}

// Sum of squares over every dimension but the first.
torch::Tensor sum_flat_squares(const torch::Tensor& d) { return d.pow(2).flatten(1).sum(1); }

double dims_of(const torch::Tensor& x) { return static_cast<double>(x[0].numel()); }

// Half-width of the window of values around the nearest one outside which every logit is below
// the largest by more than 40 nats (a share under 256 e^-40 ~ 1e-15 of the sum): the whole range
// unless SNR(0) is large, as it is at VDM's gamma_0 = -13.3 (3 values each side instead of 256,
// which made the decoder 40% of a CPU training step). On CUDA the whole range, read without a sync.
int64_t decoder_window(const torch::Tensor& g0) {
  if (!g0.device().is_cpu()) return 255;
  const double snr = std::exp(-g0.item<double>());
  const double reach = std::sqrt(80.0 / snr) / (2.0 / 255.0);
  return reach >= 254.0 ? 255 : static_cast<int64_t>(std::ceil(reach)) + 1;
}

// log sum_k exp(-snr/2 (r - v_k)^2) over the values within `half` of r's nearest value.
torch::Tensor decoder_log_normaliser(const torch::Tensor& r, const torch::Tensor& snr, int64_t half) {
  const auto nearest = ((r + 1.0) * 127.5).round().clamp(0, 255).to(torch::kLong).unsqueeze(-1);
  const auto index = nearest + torch::arange(-half, half + 1, nearest.options());
  const auto inside = index.ge(0).logical_and(index.le(255));
  const auto values = index.clamp(0, 255).to(r.scalar_type()) * (2.0 / 255.0) - 1.0;
  const auto logits = (-0.5 * snr * (r.unsqueeze(-1) - values).pow(2)).masked_fill(inside.logical_not(), -INFINITY);
  return torch::logsumexp(logits, -1);
}

}  // namespace

std::vector<std::string> vdm_decoder_names() { return vdm_decoders().names(); }
VdmDecoder parse_vdm_decoder(const std::string& name) { return vdm_decoders().parse(name); }
std::string to_string(VdmDecoder v) { return vdm_decoders().to_string(v); }

torch::Tensor vdm_prior_bpd(const GammaSchedule& gamma, const torch::Tensor& x) {
  const auto g1 = gamma.gamma1();
  // KL per dimension: 1/2 (sigma^2 + alpha^2 x^2 - log sigma^2 - 1) with sigma^2 - 1 = -alpha^2,
  // so nothing cancels when sigma_1 is close to 1.
  const auto a2 = log_alpha2(g1).exp();
  const auto kl = 0.5 * (a2 * (x.to(torch::kFloat64).pow(2) - 1.0) - log_sigma2(g1));
  return kl.flatten(1).mean(1) / kLn2;
}

torch::Tensor vdm_recon_bpd(const GammaSchedule& gamma, const torch::Tensor& x, const torch::Tensor& noise,
                            VdmDecoder decoder) {
  const auto dtype = x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  const auto g0 = gamma.gamma0();
  const auto xd = x.to(dtype);
  // z_0 / alpha_0 = x + (sigma_0 / alpha_0) noise, and sigma_0 / alpha_0 = exp(gamma_0 / 2).
  const auto rescaled = xd + (0.5 * g0).exp().to(dtype) * noise.to(dtype);
  if (decoder == VdmDecoder::Gaussian) {
    const auto ll = discretized_gaussian_log_likelihood(xd, rescaled, (0.5 * g0).to(dtype).expand_as(xd));
    return -ll.flatten(1).mean(1).to(torch::kFloat64) / kLn2;
  }
  // VDM's decoder: logits over the 256 values v_k = 2k/255 - 1, -SNR(0)/2 (z_0/alpha_0 - v_k)^2.
  const auto snr0 = (-g0).exp().to(dtype);
  const auto r = rescaled.flatten(1);
  const auto x_logit = -0.5 * snr0 * (r - xd.flatten(1)).pow(2);  // x is one of the values
  const auto lse = decoder_log_normaliser(r, snr0, decoder_window(g0));
  return -(x_logit - lse).mean(1).to(torch::kFloat64) / kLn2;
}

namespace {

// L_diffusion per example in bits/dim (and the eps MSE), with the variance objective's gradient
// route on the shape when it applies: vdm_loss's diffusion term.
VdmTerms diffusion_term(const GammaSchedule& gamma, const GammaModelFn& model, const torch::Tensor& x,
                        const torch::Tensor& t_in, const torch::Tensor& eps, const VdmOptions& options) {
  const int64_t B = x.size(0);
  const bool continuous = options.timesteps <= 0;
  const double T = static_cast<double>(options.timesteps);
  auto t = t_in.to(torch::kFloat64);
  // The discrete loss uses the grid's t in {1/T, ..., 1} (VDM: t = ceil(t T) / T) and s = t - 1/T.
  if (!continuous) t = (t * T).ceil().clamp(1.0, T) / T;

  torch::Tensor weight;  // 2 L_diffusion per example, for the shape's gradient
  std::function<torch::Tensor(const torch::Tensor&)> hook;
  if (gamma.has_shape() && options.variance_objective && torch::GradMode::is_enabled()) {
    weight = torch::ones({B}, torch::TensorOptions().dtype(torch::kFloat64).device(x.device()));
    hook = [&weight](const torch::Tensor& s) { return ScaleGradient::apply(s, weight); };
  }
  const auto at_t = gamma.at(t, continuous, hook);
  const auto g = per_example(at_t.gamma, x);
  const NoiseLevel level{(0.5 * log_alpha2(g)).exp().to(x.scalar_type()),
                         (0.5 * log_sigma2(g)).exp().to(x.scalar_type())};
  const auto z_t = level.a * x + level.s * eps;  // q(z_t | x) (Luo eq. 69)
  const auto f = model(input_scale(options.prediction, level, options.sigma_data).times(z_t), at_t.gamma);
  const auto eps_hat = preconditioning(options.prediction, level, options.sigma_data).eps(z_t, f.to(x.scalar_type()));
  const auto sq = sum_flat_squares(eps - eps_hat).to(torch::kFloat64);
  const auto nats = continuous ? 0.5 * at_t.derivative * sq
                               : 0.5 * T * torch::expm1(at_t.gamma - gamma.at(t - 1.0 / T, false, hook).gamma) * sq;
  VdmTerms out;
  const double D = dims_of(x);
  out.diffusion = nats / (D * kLn2);
  out.eps_mse = (sq / D).detach();
  if (weight.defined()) weight.copy_(2.0 * out.diffusion.detach());
  return out;
}

}  // namespace

VdmTerms vdm_loss(const GammaSchedule& gamma, const GammaModelFn& model, const torch::Tensor& x, const torch::Tensor& t,
                  const torch::Tensor& eps, const torch::Tensor& noise0, const VdmOptions& options) {
  if (t.dim() != 1 || t.size(0) != x.size(0) || eps.sizes() != x.sizes() || noise0.sizes() != x.sizes())
    throw std::invalid_argument("vdm_loss: t must be [B] and both noises x's shape");
  auto out = diffusion_term(gamma, model, x, t, eps, options);
  out.prior = vdm_prior_bpd(gamma, x);
  out.recon = vdm_recon_bpd(gamma, x, noise0, options.decoder);
  out.total = out.diffusion + out.prior + out.recon;
  return out;
}

VdmBound vdm_bound(const GammaSchedule& gamma, const GammaModelFn& model, const torch::Tensor& x, int64_t draws,
                   const VdmOptions& options, torch::Generator gen) {
  if (draws < 1)
    throw UsageError("the bound's Monte Carlo estimate needs at least one draw, got " + std::to_string(draws));
  torch::NoGradGuard no_grad;
  const int64_t B = x.size(0);
  VdmBound r;
  r.prior = vdm_prior_bpd(gamma, x);
  r.recon = vdm_recon_bpd(gamma, x, normal_like(gen, x), options.decoder);
  std::vector<torch::Tensor> each;
  for (int64_t k = 0; k < draws; ++k) {
    const auto t = draw_times(B, /*antithetic=*/true, gen).to(x.device());
    const auto eps = normal_like(gen, x);
    each.push_back(diffusion_term(gamma, model, x, t, eps, options).diffusion);
  }
  const auto all = torch::stack(each);  // [draws, B]
  r.diffusion = all.mean(0);
  r.draw_means = all.mean(1);
  r.per_image = r.prior + r.recon + r.diffusion;
  return r;
}

}  // namespace diffuse

// The equivalent things a network can predict (Luo 2022, section "Three Equivalent
// Interpretations"): the clean image x_0, the noise eps, the score grad log p(x_t) (Tweedie),
// and the velocity v. All conversions use x_t = a x_0 + s eps with a = sqrt(alpha_bar_t) and
// s = sqrt(1 - alpha_bar_t), so a^2 + s^2 = 1 (variance preserving).
#pragma once

#include <torch/types.h>

#include <string>
#include <vector>

namespace diffuse {

class NoiseSchedule;

// Edm: the network is EDM's F (Karras et al. 2022, eq. 7) with c_in, c_skip, c_out of sigma_data
// (preconditioning.h); the other four are the same wrapper with fixed coefficients.
enum class Prediction { Epsilon, X0, V, Score, Edm };
Prediction parse_prediction(const std::string& name);  // epsilon|eps, x0|sample, v, score, edm
std::string to_string(Prediction p);
std::vector<std::string> prediction_names();

// The signal and noise scales at t, shaped to broadcast against x.
struct NoiseLevel {
  torch::Tensor a;  // sqrt(alpha_bar_t)
  torch::Tensor s;  // sqrt(1 - alpha_bar_t)
};
NoiseLevel noise_level(const NoiseSchedule& schedule, const torch::Tensor& t, const torch::Tensor& like);
// The VP point behind EDM's x = x0 + sigma eps (Karras et al. 2022, eq. 1): x_t = a x with
// a = 1 / sqrt(1 + sigma^2) and s = sigma a, shaped and typed as sigma.
NoiseLevel noise_level_at_sigma(const torch::Tensor& sigma);

// Every view of one model output.
struct Predictions {
  torch::Tensor x0, eps, v, score;
};

torch::Tensor x0_from_eps(const torch::Tensor& x_t, const torch::Tensor& eps,
                          const NoiseLevel& n);  // Luo eq. 115 rearranged
torch::Tensor eps_from_x0(const torch::Tensor& x_t, const torch::Tensor& x0, const NoiseLevel& n);
torch::Tensor v_from_x0_eps(const torch::Tensor& x0, const torch::Tensor& eps,
                            const NoiseLevel& n);                                                 // v = a eps - s x0
torch::Tensor x0_from_v(const torch::Tensor& x_t, const torch::Tensor& v, const NoiseLevel& n);   // x0 = a x_t - s v
torch::Tensor eps_from_v(const torch::Tensor& x_t, const torch::Tensor& v, const NoiseLevel& n);  // eps = s x_t + a v
// Tweedie (Luo eq. 133): grad log p(x_t) = -eps / s.
torch::Tensor score_from_eps(const torch::Tensor& eps, const NoiseLevel& n);
torch::Tensor eps_from_score(const torch::Tensor& score, const NoiseLevel& n);

// Interpret `output` (the model's prediction of kind p) at x_t and return every view of it,
// through the one preconditioning wrapper (preconditioning.h).
Predictions convert(Prediction p, const torch::Tensor& output, const torch::Tensor& x_t, const NoiseLevel& n,
                    double sigma_data = 0.5);

// The regression target for prediction kind p, given the clean data and the noise used.
torch::Tensor training_target(Prediction p, const torch::Tensor& x0, const torch::Tensor& eps, const NoiseLevel& n,
                              double sigma_data = 0.5);

}  // namespace diffuse

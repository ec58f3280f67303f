// Which t each training example gets. The loss is an expectation over t; a sampler draws t
// with probability p(t) and returns importance weights 1 / (T p(t)), so the weighted loss
// stays an unbiased estimate of the uniform average.
#pragma once

#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "diffuse/schedule.h"

namespace diffuse {

// Lognormal: EDM's continuous noise levels, ln sigma ~ N(p_mean, p_std^2) (Karras et al. 2022,
// section 5), on the edm schedule's grid. Antithetic: VDM's low-discrepancy continuous times
// (schedule vdm, whose uniform draws are continuous too).
enum class TimestepSamplerKind { Uniform, Importance, Lognormal, Antithetic };
TimestepSamplerKind parse_timestep_sampler(const std::string& name);  // uniform, importance, lognormal, antithetic
std::string to_string(TimestepSamplerKind k);
std::vector<std::string> timestep_sampler_names();

struct TimestepDraw {
  torch::Tensor t;        // [B] int64 (for continuous draws: the nearest step, for the per-step logs)
  torch::Tensor weights;  // [B] float32, 1 / (T p(t))
  torch::Tensor sigma;    // [B] float64, continuous draws only: the noise level x = x0 + sigma eps
  torch::Tensor step;     // [B] float32, continuous draws only: sigma's fractional step, the network's time
  torch::Tensor time;     // [B] float64, continuous-time draws only (schedule vdm): t in [0, 1)
};

// t in [0, 1) for a batch: VDM's low-discrepancy draw t_i = (u + i / B) mod 1 with one
// u ~ U(0, 1) (antithetic: the batch covers [0, 1) evenly, so the loss estimate's variance
// drops), or B independent uniforms. float64 [B] on the CPU (gen must be a CPU generator).
torch::Tensor draw_times(int64_t batch, bool antithetic, torch::Generator gen = {});

class TimestepSampler {
 public:
  explicit TimestepSampler(int64_t num_timesteps) : num_timesteps_(num_timesteps) {}
  virtual ~TimestepSampler() = default;
  int64_t num_timesteps() const { return num_timesteps_; }
  // p(t) over all T steps, float64 [T].
  virtual torch::Tensor probabilities() const = 0;
  virtual TimestepDraw sample(int64_t batch, const torch::Device& device, torch::Generator gen) const;
  // Feed back per-example losses (for the loss-aware sampler); t and losses are [B].
  virtual void update(const torch::Tensor& t, const torch::Tensor& losses) {}
  // Serialisable state (empty for stateless samplers), for checkpoints.
  virtual torch::Tensor state() const { return torch::Tensor(); }
  // Restores state(); `origin` (e.g. "checkpoint 'x.pt'") names it in the UsageError for a state
  // that does not fit.
  virtual void load_state(const torch::Tensor& state, const std::string& origin) {}

 private:
  int64_t num_timesteps_;
};

class UniformTimestepSampler final : public TimestepSampler {
 public:
  using TimestepSampler::TimestepSampler;
  torch::Tensor probabilities() const override;
};

// improved-diffusion's LossSecondMomentResampler: p(t) proportional to sqrt(E[L_t^2]) over the
// last `history` losses seen at t, mixed with `uniform_prob` of uniform; uniform until every t
// has a full history (the warm-up).
class ImportanceTimestepSampler final : public TimestepSampler {
 public:
  ImportanceTimestepSampler(int64_t num_timesteps, int64_t history = 10, double uniform_prob = 0.001);
  torch::Tensor probabilities() const override;
  void update(const torch::Tensor& t, const torch::Tensor& losses) override;
  bool warmed_up() const;
  // [T, history + 1] float64: the loss history, with the count of entries in the last column.
  torch::Tensor state() const override;
  // Refuses (changing nothing) a state of another shape, counts that are not integers in
  // 0..history, or non-finite losses.
  void load_state(const torch::Tensor& state, const std::string& origin) override;

 private:
  int64_t history_;
  double uniform_prob_;
  std::vector<std::vector<double>> losses_;  // per t, a ring of the last `history_` losses
  std::vector<int64_t> counts_;
};

// ln sigma ~ N(p_mean, p_std^2), unbounded (weights 1: the loss is the expectation under this
// law); t is the grid step nearest to sigma, clamped to [0, T-1]. probabilities() is the law of t.
class LognormalSigmaSampler final : public TimestepSampler {
 public:
  LognormalSigmaSampler(int64_t num_timesteps, LogSigmaGrid grid, double p_mean, double p_std);
  torch::Tensor probabilities() const override;
  TimestepDraw sample(int64_t batch, const torch::Device& device, torch::Generator gen) const override;

 private:
  LogSigmaGrid grid_;
  double p_mean_, p_std_;
};

// Continuous times t in [0, 1) for a gamma schedule (draw_times), weights 1; t is floor(time T)
// (clamped to T - 1), for the per-quarter logs. probabilities() is uniform.
class ContinuousTimeSampler final : public TimestepSampler {
 public:
  ContinuousTimeSampler(int64_t num_timesteps, bool antithetic)
      : TimestepSampler(num_timesteps), antithetic_(antithetic) {}
  torch::Tensor probabilities() const override;
  TimestepDraw sample(int64_t batch, const torch::Device& device, torch::Generator gen) const override;

 private:
  bool antithetic_;
};

// Uniform or Importance; Lognormal needs the grid and its law (LognormalSigmaSampler).
std::unique_ptr<TimestepSampler> make_timestep_sampler(TimestepSamplerKind kind, int64_t num_timesteps);

}  // namespace diffuse

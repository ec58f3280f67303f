// Which t each training example gets. The loss is an expectation over t; a sampler draws t
// with probability p(t) and returns importance weights 1 / (T p(t)), so the weighted loss
// stays an unbiased estimate of the uniform average.
#pragma once

#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

namespace diffuse {

enum class TimestepSamplerKind { Uniform, Importance };
TimestepSamplerKind parse_timestep_sampler(const std::string& name);  // uniform, importance
std::string to_string(TimestepSamplerKind k);
std::vector<std::string> timestep_sampler_names();

struct TimestepDraw {
  torch::Tensor t;        // [B] int64
  torch::Tensor weights;  // [B] float32, 1 / (T p(t))
};

class TimestepSampler {
 public:
  explicit TimestepSampler(int64_t num_timesteps) : num_timesteps_(num_timesteps) {}
  virtual ~TimestepSampler() = default;
  int64_t num_timesteps() const { return num_timesteps_; }
  // p(t) over all T steps, float64 [T].
  virtual torch::Tensor probabilities() const = 0;
  TimestepDraw sample(int64_t batch, const torch::Device& device, torch::Generator gen) const;
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

std::unique_ptr<TimestepSampler> make_timestep_sampler(TimestepSamplerKind kind, int64_t num_timesteps);

}  // namespace diffuse

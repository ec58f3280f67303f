#include "diffuse/factory.h"

#include "diffuse/data/dataset.h"
#include "diffuse/error.h"
#include "diffuse/models/network.h"

namespace diffuse {

ScheduleSpec schedule_spec(const DiffusionConfig& cfg) {
  ScheduleSpec s;
  s.kind = cfg.schedule;
  s.timesteps = cfg.timesteps;
  s.beta_start = cfg.beta_start;
  s.beta_end = cfg.beta_end;
  s.cosine_s = cfg.cosine_s;
  s.betas = cfg.betas;
  s.betas_file = cfg.betas_file;
  s.zero_terminal_snr = cfg.zero_terminal_snr;
  s.sigma_min = cfg.sigma_min;
  s.sigma_max = cfg.sigma_max;
  return s;
}

GammaSpec gamma_spec(const DiffusionConfig& cfg) {
  return {cfg.gamma_schedule, cfg.gamma_min, cfg.gamma_max, cfg.gamma_hidden, cfg.cosine_s};
}

NoiseSchedule make_schedule(const DiffusionConfig& cfg) {
  if (cfg.schedule != ScheduleKind::Vdm) return NoiseSchedule::from_spec(schedule_spec(cfg));
  auto spec = gamma_spec(cfg);
  if (gamma_kind_learned(spec.kind)) spec.kind = GammaKind::Linear;  // its initial line
  return discretize(GammaSchedule(spec), cfg.timesteps);
}

VdmOptions vdm_options(const DiffusionConfig& cfg) {
  return VdmOptions{cfg.continuous ? 0 : cfg.timesteps, cfg.decoder, cfg.prediction, cfg.sigma_data,
                    cfg.variance_objective};
}

void resolve_betas_file(DiffusionConfig& cfg) {
  if (cfg.schedule != ScheduleKind::Custom || cfg.betas_file.empty() || !cfg.betas.empty()) return;
  ScheduleSpec s = schedule_spec(cfg);
  s.zero_terminal_snr = false;  // applied to the betas whenever the schedule is made
  cfg.betas = make_betas(s);
  cfg.timesteps = static_cast<int64_t>(cfg.betas.size());
  cfg.betas_file.clear();
}

VarianceType effective_variance(const Config& cfg) {
  if (cfg.model.learn_sigma && !is_learned(cfg.diffusion.variance)) return VarianceType::LearnedRange;
  return cfg.diffusion.variance;
}

GaussianDiffusion make_diffusion(const Config& cfg, const Network* net) {
  const auto& d = cfg.diffusion;
  auto schedule = [&] {
    if (d.schedule != ScheduleKind::Vdm) return make_schedule(d);
    if (const auto gamma = net ? find_gamma_schedule(*net) : nullptr) return discretize(*gamma, d.timesteps);
    if (gamma_kind_learned(d.gamma_schedule))
      throw UsageError("diffusion.gamma_schedule " + to_string(d.gamma_schedule) +
                       " is learned: its discrete view needs the trained network");
    return make_schedule(d);
  };
  return GaussianDiffusion(schedule(), d.prediction, effective_variance(cfg), d.sigma_data);
}

std::unique_ptr<TimestepSampler> make_timestep_sampler(const DiffusionConfig& cfg) {
  if (cfg.schedule == ScheduleKind::Vdm)  // continuous t; the logs' steps are the T + 1 of the discrete view
    return std::make_unique<ContinuousTimeSampler>(cfg.timesteps + 1,
                                                   cfg.timestep_sampler == TimestepSamplerKind::Antithetic);
  if (cfg.timestep_sampler != TimestepSamplerKind::Lognormal)
    return make_timestep_sampler(cfg.timestep_sampler, cfg.timesteps);
  return std::make_unique<LognormalSigmaSampler>(cfg.timesteps, log_sigma_grid(schedule_spec(cfg)), cfg.p_mean,
                                                 cfg.p_std);
}

DataShape data_shape(const Dataset& dataset, const DataConfig& cfg) {
  return {dataset.shape(), cfg.class_labels ? dataset.num_classes() : 0};
}

std::shared_ptr<Network> make_model(const Config& cfg, const DataShape& data) {
  const auto diffusion_channels = [&](int64_t c) { return is_learned(effective_variance(cfg)) ? 2 * c : c; };
  // make_network resolves the class count (model.num_classes, else the dataset's).
  const int64_t num_classes = data.num_classes;
  std::shared_ptr<Network> net;
  if (cfg.model.type == ModelType::Mlp) {
    if (data.shape.size() != 1)
      throw UsageError("model.type 'mlp' needs vector data (data.dataset: toy2d), got examples of rank " +
                       std::to_string(data.shape.size()));
    net = make_network(cfg.model, 0, data.shape[0], diffusion_channels(data.shape[0]), num_classes);
  } else {
    if (data.shape.size() != 3)
      throw UsageError("model.type 'unet' needs image data [C, H, W]; use model.type: mlp for data.dataset: toy2d");
    if (data.shape[1] != data.shape[2]) throw UsageError("the UNet needs square images; set data.image_size");
    // A classifier's outputs are its logits, one per class.
    const int64_t out =
        cfg.model.type == ModelType::Classifier ? cfg.model.num_classes : diffusion_channels(data.shape[0]);
    net = make_network(cfg.model, data.shape[1], data.shape[0], out, num_classes);
  }
  if (cfg.diffusion.rescale_timesteps) net->set_timestep_scale(1000.0 / static_cast<double>(cfg.diffusion.timesteps));
  if (cfg.diffusion.schedule == ScheduleKind::Edm) {
    // Step i of the grid is conditioned on c_noise(sigma_i), affine in i.
    const auto g = log_sigma_grid(schedule_spec(cfg.diffusion));
    net->set_timestep_scale(kEdmNoiseScale * g.log_step);
    net->set_timestep_shift(kEdmNoiseScale * g.log_min);
  }
  if (cfg.diffusion.schedule == ScheduleKind::Vdm) {
    // Conditioned on gamma, mapped affinely from [gamma_min, gamma_max] onto the embedding's
    // 0..1000, so that any grid of noise levels can be sampled (the schedule's own or another).
    const double scale = 1000.0 / (cfg.diffusion.gamma_max - cfg.diffusion.gamma_min);
    net->set_timestep_scale(scale);
    net->set_timestep_shift(-cfg.diffusion.gamma_min * scale);
    net->register_module("gamma_schedule", std::make_shared<GammaSchedule>(gamma_spec(cfg.diffusion)));
  }
  return net;
}

void apply_memory_format(Network& net, const Config& cfg, const DataShape& data) {
  if (cfg.train.channels_last && data.shape.size() == 3) convert_to_channels_last(net);
}

void require_denoiser(const Config& cfg, const std::string& origin) {
  if (cfg.model.type == ModelType::Classifier)
    throw UsageError(origin +
                     ": model.type classifier is a noisy-image classifier, not a denoising network: it "
                     "guides sampling (diffuse sample --classifier CKPT)");
}

}  // namespace diffuse

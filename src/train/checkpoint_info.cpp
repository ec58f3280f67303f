#include "diffuse/train/checkpoint_info.h"

#include <torch/torch.h>

#include <filesystem>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "diffuse/config.h"
#include "diffuse/error.h"
#include "diffuse/hash.h"
#include "diffuse/models/network.h"
#include "diffuse/parameterization.h"
#include "diffuse/schedule.h"
#include "diffuse/train/training_state.h"
#include "json_text.h"

namespace diffuse {

namespace {
std::string optimizer_fingerprint(const CheckpointReader& reader, const Config& cfg, Network& model) {
  // The options do not matter: load() replaces the state, and only the moments are hashed.
  torch::optim::AdamW optimizer(model.parameters(), torch::optim::AdamWOptions(cfg.train.lr));
  if (!reader.has_optimizer()) return "";  // it samples, it cannot resume
  reader.load_optimizer(optimizer);
  return fingerprint_string(tensors_fingerprint(adamw_moments(optimizer, model.parameters())));
}

std::string progress_fingerprint(const CheckpointMeta& m) {
  return fingerprint_string(
      tensors_fingerprint({m.cpu_rng_state, m.device_rng_state, m.timestep_sampler_state,
                           torch::tensor({m.step, m.data_epoch, m.data_offset, m.world_size, m.loss_scale_good_steps}),
                           torch::tensor({m.loss_scale}, torch::kFloat64)}));
}
}  // namespace

CheckpointInfo inspect_checkpoint(const std::string& path_or_run_dir) {
  CheckpointInfo info;
  info.path = resolve_checkpoint(path_or_run_dir);
  std::error_code ec;
  info.file_bytes = static_cast<int64_t>(std::filesystem::file_size(info.path, ec));
  const CheckpointReader reader(info.path);
  info.meta = reader.meta();
  const Config cfg = parse_config(info.meta.config_yaml, "the config stored in checkpoint '" + info.path + "'");
  info.model = to_string(cfg.model.type);
  info.schedule = cfg.diffusion.betas.empty() ? to_string(cfg.diffusion.schedule) : "custom (stored betas)";
  info.timesteps = cfg.diffusion.timesteps;
  info.prediction = to_string(cfg.diffusion.prediction);

  auto net = make_model(cfg, info.meta.data);
  reader.load_weights(*net, false);
  info.parameters = count_parameters(*net);
  info.weights_fingerprint = fingerprint_string(tensors_fingerprint(module_tensors(*net)));
  info.has_ema = reader.has_ema();
  if (info.has_ema) {
    auto ema = make_model(cfg, info.meta.data);
    reader.load_weights(*ema, true);
    info.ema_fingerprint = fingerprint_string(tensors_fingerprint(module_tensors(*ema)));
  }
  info.optimizer_fingerprint = optimizer_fingerprint(reader, cfg, *net);
  info.has_optimizer = !info.optimizer_fingerprint.empty();
  info.progress_fingerprint = progress_fingerprint(info.meta);
  return info;
}

std::string info_text(const CheckpointInfo& i) {
  const auto& m = i.meta;
  std::string s;
  s += fmt::format("checkpoint   {} ({:.1f} MB)\n", i.path, i.file_bytes / 1e6);
  s += fmt::format("step         {} (trained for {:.0f} s, {} rank{})\n", m.step, m.elapsed_seconds, m.world_size,
                   m.world_size == 1 ? "" : "s");
  s += fmt::format("model        {}, {} parameters, data [{}]{}\n", i.model, i.parameters, fmt::join(m.data.shape, ","),
                   m.data.num_classes ? fmt::format(", {} classes", m.data.num_classes) : "");
  s += fmt::format("diffusion    {} schedule, T = {}, {} prediction\n", i.schedule, i.timesteps, i.prediction);
  s += fmt::format("data         epoch {}, offset {}, fingerprint {}\n", m.data_epoch, m.data_offset,
                   m.data_fingerprint.empty() ? "(not recorded)" : m.data_fingerprint);
  s += fmt::format("weights      {}\n", i.weights_fingerprint);
  s += fmt::format("ema          {}\n", i.has_ema ? i.ema_fingerprint : "(none)");
  s += fmt::format("optimizer    {}\n", i.has_optimizer ? i.optimizer_fingerprint : "(none: cannot resume)");
  s += fmt::format("progress     {} (RNG, timestep sampler, step, data position)\n", i.progress_fingerprint);
  return s;
}

std::string info_json(const CheckpointInfo& i) {
  const auto& m = i.meta;
  Json j;
  j["checkpoint"] = i.path;
  j["file_bytes"] = i.file_bytes;
  j["step"] = m.step;
  j["elapsed_seconds"] = m.elapsed_seconds;
  j["world_size"] = m.world_size;
  j["model"] = i.model;
  j["parameters"] = i.parameters;
  j["data_shape"] = m.data.shape;
  j["num_classes"] = m.data.num_classes;
  j["schedule"] = i.schedule;
  j["timesteps"] = i.timesteps;
  j["prediction"] = i.prediction;
  j["data_epoch"] = m.data_epoch;
  j["data_offset"] = m.data_offset;
  j["data_fingerprint"] = m.data_fingerprint;
  j["weights_fingerprint"] = i.weights_fingerprint;
  j["ema_fingerprint"] = i.ema_fingerprint;
  j["optimizer_fingerprint"] = i.optimizer_fingerprint;
  j["progress_fingerprint"] = i.progress_fingerprint;
  return json_line(j) + "\n";
}

}  // namespace diffuse

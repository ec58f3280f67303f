#include "checkpoint_legacy.h"

#include <torch/torch.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "diffuse/error.h"
#include "diffuse/train/checkpoint.h"
#include "diffuse/train/training_state.h"

namespace diffuse {

namespace {

std::vector<int64_t> read_data_shape(torch::serialize::InputArchive& ar, const std::string& path) {
  torch::Tensor t;
  if (!ar.try_read("data_shape", t))
    throw UsageError("checkpoint '" + path + "' lacks 'data_shape' (corrupt or from another version)");
  if (t.scalar_type() != torch::kLong || t.dim() != 1 || t.numel() < 1 || t.numel() > 4)
    throw UsageError(
        fmt::format("checkpoint '{}': data_shape is a {} tensor of shape [{}], expected 1 to 4 int64 sizes "
                    "(corrupt?)",
                    path, c10::toString(t.scalar_type()), fmt::join(t.sizes(), ", ")));
  t = t.cpu().contiguous();
  return parse_data_shape(std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()), path);
}

// Module::load would silently replace parameters with tensors of another shape; copy each one
// into place instead, checking names and shapes (this also moves them to the module's device).
void load_into(torch::nn::Module& module, torch::serialize::InputArchive& ar, const std::string& prefix,
               const std::string& file) {
  torch::NoGradGuard ng;
  auto copy = [&](const std::string& name, torch::Tensor& dst, bool buffer) {
    torch::Tensor src;
    if (!ar.try_read(name, src, buffer))
      throw UsageError(
          fmt::format("checkpoint '{}' has no tensor '{}{}' that this model needs (another model "
                      "configuration?)",
                      file, prefix, name));
    if (src.sizes() != dst.sizes())
      throw UsageError(
          fmt::format("checkpoint '{}': '{}{}' has shape {} but this model's is {} (another model "
                      "configuration?)",
                      file, prefix, name, fmt::join(src.sizes(), "x"), fmt::join(dst.sizes(), "x")));
    dst.copy_(src);
  };
  for (auto& p : module.named_parameters(/*recurse=*/false)) copy(p.key(), p.value(), false);
  for (auto& b : module.named_buffers(/*recurse=*/false)) copy(b.key(), b.value(), true);
  for (auto& c : module.named_children()) {
    torch::serialize::InputArchive child;
    if (!ar.try_read(c.key(), child))
      throw UsageError(fmt::format("checkpoint '{}' lacks the submodule '{}{}'", file, prefix, c.key()));
    load_into(*c.value(), child, prefix + c.key() + ".", file);
  }
}
}  // namespace

std::unique_ptr<torch::serialize::InputArchive> open_legacy_checkpoint(const std::string& path,
                                                                       const torch::Device& device,
                                                                       CheckpointMeta& meta, bool& has_ema,
                                                                       bool& has_optimizer) {
  auto ar = std::make_unique<torch::serialize::InputArchive>();
  try {
    ar->load_from(path, device);
  } catch (const std::exception& e) {
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    throw UsageError("checkpoint '" + path + "' is corrupt or not a checkpoint (" + what + ")");
  }
  c10::IValue v;
  if (!ar->try_read("diffuse_checkpoint", v) || !v.isInt() || v.toInt() != kLegacyCheckpointMagic)
    throw UsageError("'" + path + "' is a LibTorch archive but not a diffuse checkpoint");
  auto read_int = [&](const char* key) {
    c10::IValue iv;
    if (!ar->try_read(key, iv) || !iv.isInt())
      throw UsageError("checkpoint '" + path + "' lacks '" + key + "' (corrupt or from another version)");
    return iv.toInt();
  };
  const int64_t format = read_int("format");
  if (format != kLegacyCheckpointFormat)
    throw UsageError(fmt::format("checkpoint '{}' has format {}, this diffuse reads formats {} and {}", path, format,
                                 kLegacyCheckpointFormat, kCheckpointFormat));
  meta.step = read_int("step");
  meta.data.num_classes = read_int("num_classes");
  meta.data_epoch = read_int("data_epoch");
  meta.data_offset = read_int("data_offset");
  c10::IValue cfg;
  if (!ar->try_read("config", cfg) || !cfg.isString()) throw UsageError("checkpoint '" + path + "' lacks its config");
  meta.config_yaml = cfg.toStringRef();
  c10::IValue d;
  if (ar->try_read("loss_scale", d) && d.isDouble()) meta.loss_scale = d.toDouble();
  if (ar->try_read("loss_scale_good_steps", d) && d.isInt()) meta.loss_scale_good_steps = d.toInt();
  if (ar->try_read("elapsed_seconds", d) && d.isDouble()) meta.elapsed_seconds = d.toDouble();
  if (ar->try_read("world_size", d) && d.isInt()) {
    if (d.toInt() < 1) throw UsageError(fmt::format("checkpoint '{}': world_size {} is not positive", path, d.toInt()));
    meta.world_size = d.toInt();
  }
  if (ar->try_read("data_fingerprint", d) && d.isString()) meta.data_fingerprint = d.toStringRef();
  meta.data.shape = read_data_shape(*ar, path);
  // A fresh tensor for each key: try_read into a defined tensor calls set_() on it, which would
  // rewrite whatever shares its storage (t.cpu() of a CPU tensor is that same tensor).
  auto read_state = [&](const char* key, torch::Tensor& into) {
    torch::Tensor t;
    if (ar->try_read(key, t)) into = t.cpu();
  };
  read_state("cpu_rng_state", meta.cpu_rng_state);
  read_state("device_rng_state", meta.device_rng_state);
  read_state("timestep_sampler_state", meta.timestep_sampler_state);
  torch::serialize::InputArchive probe;
  has_ema = ar->try_read("ema", probe);
  torch::serialize::InputArchive probe_opt;
  has_optimizer = ar->try_read("optimizer", probe_opt);
  return ar;
}

void legacy_load_weights(torch::serialize::InputArchive& archive, torch::nn::Module& module, bool ema,
                         const std::string& path) {
  torch::serialize::InputArchive sub;
  const char* key = ema ? "ema" : "model";
  if (!archive.try_read(key, sub)) throw UsageError(fmt::format("checkpoint '{}' has no {} weights", path, key));
  load_into(module, sub, std::string(key) + ":", path);
}

void legacy_load_optimizer(torch::serialize::InputArchive& archive, torch::optim::AdamW& optimizer,
                           const std::string& path) {
  torch::serialize::InputArchive sub;
  if (!archive.try_read("optimizer", sub))
    throw UsageError("checkpoint '" + path + "' has no optimizer state (it cannot resume training)");
  optimizer.load(sub);
  for (const auto& group : optimizer.param_groups())
    for (const auto& p : group.params())
      if (const auto* st = adamw_state(optimizer, p); st && st->exp_avg().sizes() != p.sizes())
        throw UsageError(
            fmt::format("'{}': its optimizer state does not match its parameters (a format-1 file "
                        "written by LibTorch 1.x, read by LibTorch 2.x?); import it with a diffuse "
                        "built on LibTorch 1.13",
                        path));
}

}  // namespace diffuse

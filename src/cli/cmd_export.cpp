// `diffuse export` and `diffuse import`: a checkpoint's weights to and from safetensors.
#include <iostream>

#include <fmt/format.h>

#include "cli/commands.h"
#include "diffuse/error.h"
#include "diffuse/models/network.h"
#include "diffuse/openai_checkpoint.h"
#include "diffuse/train/weights_export.h"

namespace diffuse::cli {

namespace {
struct ExchangeOptions {
  std::string input, out, format = "safetensors", from;
  std::vector<std::string> flags;
  bool classifier = false;
};

int import_classifier(const ExchangeOptions& o) {
  if (parse_openai_family(o.from) != OpenAiFamily::Guided)
    throw UsageError("--classifier: noisy-image classifiers are guided-diffusion's (--from guided-diffusion)");
  const auto r = import_openai_classifier(o.input, o.flags, o.out);
  const auto& m = r.config.model;
  std::cout << fmt::format(
      "imported {} ({} state_dict, {} tensors, {} parameters)\n"
      "  classifier: {}x{} images, width {}, depth {}, {} pooling, {} classes; trained on {} {} steps\n"
      "  wrote: {} (diffuse sample --classifier {} --classifier-scale S)\n",
      o.input, r.format, r.tensors, format_count(r.parameters), r.config.data.image_size, r.config.data.image_size,
      m.model_channels, m.num_res_blocks, to_string(m.pool), m.num_classes, to_string(r.config.diffusion.schedule),
      r.config.diffusion.timesteps, o.out, o.out);
  return 0;
}

int import_openai(const ExchangeOptions& o) {
  if (o.classifier) return import_classifier(o);
  const auto r = import_openai_checkpoint(o.input, o.flags, parse_openai_family(o.from), o.out);
  std::cout << fmt::format(
      "imported {} ({} state_dict, {} tensors, {} parameters)\n"
      "  model: UNet {}x{}, {} channels, {} classes; diffusion: {} steps, {}{}\n"
      "  wrote: {} (weights only: it samples and evaluates; sampling defaults to {} with {} steps)\n",
      o.input, r.format, r.tensors, format_count(r.parameters), r.config.data.image_size, r.config.data.image_size,
      r.config.model.model_channels, r.config.model.num_classes, r.config.diffusion.timesteps,
      to_string(r.config.diffusion.schedule), r.config.diffusion.rescale_timesteps ? ", timesteps rescaled" : "", o.out,
      r.config.sample.sampler, r.config.sample.steps);
  return 0;
}
}  // namespace

void add_export_command(CLI::App& app, Action& action) {
  auto o = std::make_shared<ExchangeOptions>();
  auto* cmd = app.add_subcommand("export", "Write a checkpoint's weights (and EMA) as safetensors, with its config");
  cmd->add_option("checkpoint", o->input, "Checkpoint file or run directory")->required();
  cmd->add_option("--out,-o", o->out, "File to write (e.g. model.safetensors)")->required();
  cmd->add_option("--format", o->format, "Output format")->check(CLI::IsMember({"safetensors"}))->capture_default_str();
  cmd->callback([o, &action] {
    action = [o] {
      const auto s = export_safetensors(o->input, o->out);
      std::cout << fmt::format("exported {} tensors ({} weights{}) from {}\n  wrote: {} ({:.1f} MB)\n", s.tensors,
                               "model", s.ema ? " + EMA" : "", s.checkpoint, o->out, s.bytes / 1e6);
      return 0;
    };
  });
}

void add_import_command(CLI::App& app, Action& action) {
  auto o = std::make_shared<ExchangeOptions>();
  auto* cmd =
      app.add_subcommand("import",
                         "Turn a `diffuse export` safetensors file, an older-format checkpoint you trust, or an OpenAI "
                         "improved-/guided-diffusion checkpoint (with --from and --flags) into a checkpoint");
  cmd->add_option("file", o->input,
                  "safetensors file, a format-1 checkpoint (LibTorch archive) to convert, or an OpenAI .pt state_dict")
      ->required();
  cmd->add_option("--out,-o", o->out, "Checkpoint to write (e.g. imported.pt); sample and eval take it")->required();
  cmd->add_option("--from", o->from, "The file is an OpenAI UNetModel state_dict of this code base")
      ->check(CLI::IsMember(openai_family_names()));
  cmd->add_option("--flags", o->flags,
                  "With --from: that model's flags as its README gives them, e.g. \"$MODEL_FLAGS $DIFFUSION_FLAGS\" "
                  "(repeatable)");
  cmd->add_flag("--classifier", o->classifier,
                "With --from guided-diffusion: the file is its noisy-image classifier (EncoderUNetModel) and --flags "
                "are classifier_sample.py's");
  cmd->callback([o, &action] {
    if (!o->flags.empty() && o->from.empty())
      throw CLI::ValidationError("--flags", "needs --from improved-diffusion or --from guided-diffusion");
    if (o->classifier && o->from.empty()) throw CLI::ValidationError("--classifier", "needs --from guided-diffusion");
    action = [o] {
      if (!o->from.empty()) return import_openai(*o);
      const bool resumable = import_safetensors(o->input, o->out);
      std::cout << fmt::format("imported {}\n  wrote: {} ({})\n", o->input, o->out,
                               resumable ? "weights, EMA and optimizer state: it samples, evaluates and resumes"
                                         : "weights and EMA; no optimizer state, so it samples and evaluates but "
                                           "does not resume");
      return 0;
    };
  });
}

}  // namespace diffuse::cli

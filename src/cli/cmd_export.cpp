// `diffuse export` and `diffuse import`: a checkpoint's weights to and from safetensors.
#include <iostream>

#include <fmt/format.h>

#include "cli/commands.h"
#include "diffuse/error.h"
#include "diffuse/train/weights_export.h"

namespace diffuse::cli {

namespace {
struct ExchangeOptions {
  std::string input, out, format = "safetensors";
};
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
  auto* cmd = app.add_subcommand("import", "Turn a `diffuse export` safetensors file, or an older-format checkpoint you trust, into a checkpoint");
  cmd->add_option("file", o->input, "safetensors file, or a format-1 checkpoint (LibTorch archive) to convert")->required();
  cmd->add_option("--out,-o", o->out, "Checkpoint to write (e.g. imported.pt); sample and eval take it")->required();
  cmd->callback([o, &action] {
    action = [o] {
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

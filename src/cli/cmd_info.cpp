// `diffuse info`: what a checkpoint holds (step, model, schedule, data position) and
// fingerprints of its state, after reading every tensor in it.
#include <iostream>

#include "cli/commands.h"
#include "diffuse/train/checkpoint_info.h"

namespace diffuse::cli {

namespace {
struct InfoOptions {
  std::string checkpoint;
  std::string format = "text";
};
}  // namespace

void add_info_command(CLI::App& app, Action& action) {
  auto o = std::make_shared<InfoOptions>();
  auto* cmd = app.add_subcommand("info", "Show what a checkpoint holds, after checking that all of it reads");
  cmd->add_option("checkpoint", o->checkpoint, "Checkpoint file or run directory (its checkpoints/latest.pt)")
      ->required();
  cmd->add_option("--format", o->format, "Output format")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  cmd->callback([o, &action] {
    action = [o] {
      const auto info = inspect_checkpoint(o->checkpoint);
      std::cout << (o->format == "json" ? info_json(info) : info_text(info));
      return 0;
    };
  });
}

}  // namespace diffuse::cli

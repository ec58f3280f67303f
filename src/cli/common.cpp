#include "cli/common.h"

#include <csignal>

#include "diffuse/train/trainer.h"

namespace diffuse::cli {

Config resolve_config(const std::string& path, const std::vector<std::string>& overrides) {
  Config cfg = path.empty() ? Config{} : load_config(path);
  for (const auto& o : overrides) apply_override(cfg, o);
  validate(cfg);
  return cfg;
}

Config config_from_checkpoint_yaml(const std::string& yaml, const std::string& origin,
                                   const std::vector<std::string>& overrides) {
  Config cfg = parse_config(yaml, origin);
  for (const auto& o : overrides) apply_override(cfg, o);
  validate(cfg);
  return cfg;
}

namespace {
extern "C" void on_stop_signal(int sig) {
  diffuse::request_stop(sig);
  std::signal(sig, SIG_DFL);  // a second Ctrl-C ends the process at once
}
}  // namespace

void install_stop_handlers() {
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
}

}  // namespace diffuse::cli

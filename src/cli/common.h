// Helpers shared by the subcommands: config resolution (file / checkpoint + --set overrides)
// and signal handling.
#pragma once

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "diffuse/config.h"

namespace diffuse::cli {

// Config from a YAML file (or the defaults when path is empty), then each "key=value".
Config resolve_config(const std::string& path, const std::vector<std::string>& overrides);
// Config stored in a checkpoint, then each "key=value".
Config config_from_checkpoint_yaml(const std::string& yaml, const std::string& origin,
                                   const std::vector<std::string>& overrides);

// A check that a numeric option is >= lo, worded as config keys are ("--num: must be >= 1, got
// 0"); CLI::PositiveNumber / NonNegativeNumber print their range as 2.2e-308 to 1.8e308.
CLI::Validator at_least(double lo);

// SIGINT/SIGTERM ask the library to stop cleanly (diffuse::request_stop). A repeat within a
// second is the same request delivered twice and is ignored; a later one kills the process the
// default way (the last checkpoint on disk stays intact: they are written atomically).
void install_stop_handlers();

}  // namespace diffuse::cli

// The `diffuse` binary: parse argv, call the library, map errors to exit codes
// (0 ok, 1 runtime failure, 2 bad usage / bad input, 130 interrupted).
#include <c10/util/Exception.h>

#include <iostream>

#include <fmt/format.h>

#include "cli/commands.h"
#include "cli/launch.h"
#include "diffuse/config.h"
#include "diffuse/error.h"
#include "diffuse/runtime.h"

int main(int argc, char** argv) {
  diffuse::cli::remember_argv(argc, argv);
  CLI::App app{"diffuse: train, sample and evaluate diffusion models from the shell"};
  app.require_subcommand(0, 1);
  bool show_version = false;
  app.add_flag("--version", show_version, "Print diffuse and LibTorch versions and the CUDA devices");
  bool config_reference = false;
  app.add_flag("--config-reference", config_reference,
               "Print every config key with its type, default and meaning (markdown, as in docs/config.md)");

  diffuse::cli::Action action;
  diffuse::cli::add_train_command(app, action);
  diffuse::cli::add_sample_command(app, action);
  diffuse::cli::add_eval_command(app, action);
  diffuse::cli::add_schedule_command(app, action);
  diffuse::cli::add_bench_command(app, action);
  diffuse::cli::add_info_command(app, action);
  diffuse::cli::add_export_command(app, action);
  diffuse::cli::add_import_command(app, action);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line: the option and what it takes, then where the full usage is.
    std::cerr << "diffuse: error: " << e.what() << " (see 'diffuse [COMMAND] --help')\n";
    return 2;
  }
  try {
    if (show_version) {
      std::cout << diffuse::version_report();
      return 0;
    }
    if (config_reference) {
      std::cout << diffuse::config_reference_markdown();
      return 0;
    }
    if (!action) {
      std::cout << app.help();
      return 0;
    }
    return action();
  } catch (const diffuse::UsageError& e) {
    std::cerr << "diffuse: error: " << e.what() << "\n";
    return 2;
  } catch (const c10::Error& e) {
    // LibTorch's own errors carry a C++ backtrace that means nothing to a user.
    std::cerr << "diffuse: error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "diffuse: error: " << e.what() << "\n";
    return 1;
  }
}

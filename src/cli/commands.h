// Each subcommand lives in its own file and registers itself on the root app; main() runs the
// action of the subcommand that was parsed. Adding a command = one file + one line in main.cpp.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace diffuse::cli {

using Action = std::function<int()>;

void add_schedule_command(CLI::App& app, Action& action);
void add_train_command(CLI::App& app, Action& action);
void add_sample_command(CLI::App& app, Action& action);
void add_eval_command(CLI::App& app, Action& action);
void add_bench_command(CLI::App& app, Action& action);
void add_info_command(CLI::App& app, Action& action);
void add_export_command(CLI::App& app, Action& action);
void add_import_command(CLI::App& app, Action& action);

}  // namespace diffuse::cli

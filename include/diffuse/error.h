// Error types. The library never calls exit(); the CLI maps these to exit codes.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

namespace diffuse {

// A bad value given by the user (option, config key, file content): exit code 2 in the CLI.
// The message names the option / key / file and what was expected.
class UsageError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// "a, b, c" for error messages listing allowed values.
std::string join(const std::vector<std::string>& items, const std::string& sep = ", ");

// Throws UsageError("<what> '<value>' is not one of: a, b, c").
[[noreturn]] void throw_not_one_of(const std::string& what, const std::string& value,
                                   const std::vector<std::string>& allowed);

}  // namespace diffuse

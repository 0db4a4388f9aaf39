// File: tests/cli/cli_test_util.h
//
// Running the real kvscope binary from a test.
#ifndef KVSCOPE_TESTS_CLI_CLI_TEST_UTIL_H_
#define KVSCOPE_TESTS_CLI_CLI_TEST_UTIL_H_

#include <filesystem>
#include <string>

#include "tests/test_util.h"

namespace kvscope::testing {

struct Outcome {
  int code;            // exit status (128 + signal when killed)
  std::string output;  // stdout and stderr together
};

// Runs `kvscope ARGS` through the shell.
inline Outcome Kvscope(const std::string& args) {
  Outcome o;
  o.code = RunCommand(KvscopeBinary() + " " + args, &o.output);
  return o;
}

// An empty directory under the system temp dir, named after `name`.
inline std::string FreshTempDir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("kvscope_cli_test_" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

}  // namespace kvscope::testing

#endif  // KVSCOPE_TESTS_CLI_CLI_TEST_UTIL_H_

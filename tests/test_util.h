// File: tests/test_util.h
//
// Helpers shared by the test suites: where ../shared and tests/data are, and reading files.
#ifndef KVSCOPE_TESTS_TEST_UTIL_H_
#define KVSCOPE_TESTS_TEST_UTIL_H_

#include <string>

namespace kvscope::testing {

// KVSCOPE_SHARED_DIR if set, else ../shared beside the source tree.
std::string SharedDir();
// SharedDir() + "/" + relative when that path exists, else "" (callers GTEST_SKIP).
std::string SharedPath(const std::string& relative);
// tests/data in the source tree.
std::string TestDataDir();
// The built kvscope binary.
std::string KvscopeBinary();
// Whole file as a string; aborts the test binary with a message if unreadable.
std::string ReadFileOrDie(const std::string& path);

// Runs `command` through /bin/sh, capturing stdout+stderr; returns the exit code.
int RunCommand(const std::string& command, std::string* output);

}  // namespace kvscope::testing

// Skips the current test (with the reason) when a ../shared path is missing.
#define KVSCOPE_REQUIRE_SHARED(var, relative)                                        \
  const std::string var = ::kvscope::testing::SharedPath(relative);                   \
  if (var.empty()) {                                                                  \
    GTEST_SKIP() << "needs " << ::kvscope::testing::SharedDir() << "/" << (relative)  \
                 << " (set KVSCOPE_SHARED_DIR to the shared/ folder)";                \
  }

#endif  // KVSCOPE_TESTS_TEST_UTIL_H_

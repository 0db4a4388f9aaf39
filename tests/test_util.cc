#include "tests/test_util.h"

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

namespace kvscope::testing {

std::string SharedDir() {
  const char* env = std::getenv("KVSCOPE_SHARED_DIR");
  if (env != nullptr && env[0] != '\0') return env;
  return KVSCOPE_DEFAULT_SHARED_DIR;
}

std::string SharedPath(const std::string& relative) {
  std::string path = SharedDir() + "/" + relative;
  return std::filesystem::exists(path) ? path : "";
}

std::string TestDataDir() { return KVSCOPE_TEST_DATA_DIR; }

std::string KvscopeBinary() { return KVSCOPE_BINARY; }

std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::cerr << "cannot read " << path << "\n";
    std::abort();
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

int RunCommand(const std::string& command, std::string* output) {
  std::string full = command + " 2>&1";
  FILE* pipe = ::popen(full.c_str(), "r");
  if (pipe == nullptr) return -1;
  char buffer[4096];
  size_t n;
  output->clear();
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) output->append(buffer, n);
  int status = ::pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace kvscope::testing

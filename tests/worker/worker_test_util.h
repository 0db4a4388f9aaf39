// File: tests/worker/worker_test_util.h
//
// Helpers for the worker tests: fresh directories, tiny trial configs for the real kvscope
// binary, fake `kvscope` scripts, and polling with a deadline (never a sleep as an
// assertion).
#ifndef KVSCOPE_TESTS_WORKER_WORKER_TEST_UTIL_H_
#define KVSCOPE_TESTS_WORKER_WORKER_TEST_UTIL_H_

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <system_error>
#include <thread>

namespace kvscope::testing {

// An empty directory under the system temp dir, unique to this process and `name`.
inline std::string FreshWorkerTestDir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() /
             ("kvscope_worker_test_" + std::to_string(getpid()) + "_" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

// A `kvscope bench` YAML for llama-tiny serving `num_requests` short requests (well under a
// second on one core), plus `extra` lines (e.g. a fault).
inline std::string TinyTrialYaml(int num_requests, const std::string& extra = "") {
  return "model: {preset: llama-tiny}\n"
         "strategy: {name: paged}\n"
         "memory: {kv_bytes: 4MiB}\n"
         "workload: {num_requests: " +
         std::to_string(num_requests) +
         ", input_len: 16, output_len: 8}\n"
         "threads: 1\n"
         "seed: 3\n" +
         extra;
}

// Writes an executable /bin/sh script standing in for kvscope. It is called as
// `SCRIPT bench --config F --out DIR --progress-file P`; $5 is DIR, $7 is P.
inline std::string WriteFakeKvscope(const std::string& dir, const std::string& body) {
  const std::string path = dir + "/fake_kvscope.sh";
  std::ofstream(path) << "#!/bin/sh\n" << body << "\n";
  chmod(path.c_str(), 0755);
  return path;
}

// A fake kvscope that succeeds at once with a result naming its config file's first line.
inline constexpr char kFakeSuccess[] =
    "mkdir -p \"$5\"\n"
    "echo '{\"requests_done\":2,\"requests_total\":2,\"elapsed_s\":0.1}' > \"$7\"\n"
    "echo \"{\\\"summary\\\": {\\\"ok\\\": true}, \\\"config_line\\\": \\\"$(head -n1 "
    "\"$3\")\\\"}\" "
    "> \"$5/result.json\"\n"
    "echo '{\"id\":0}' > \"$5/requests.jsonl\"\n";

// Polls `condition` every 10 ms until it holds or `seconds` pass; returns whether it held.
inline bool WaitFor(const std::function<bool()>& condition, double seconds = 20) {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(seconds));
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return condition();
}

// Spooled results (result-*.json) in a result spool directory.
inline int SpooledFiles(const std::string& spool_dir) {
  int n = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(spool_dir, ec)) {
    const std::string name = e.path().filename().string();
    n += name.rfind("result-", 0) == 0 && name.size() > 5 &&
         name.compare(name.size() - 5, 5, ".json") == 0;
  }
  return n;
}

// Whether process `pid` still exists (and is not a zombie).
inline bool ProcessAlive(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  if (!stat) return false;
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const size_t paren = text.rfind(')');
  return paren != std::string::npos && paren + 2 < text.size() && text[paren + 2] != 'Z';
}

}  // namespace kvscope::testing

#endif  // KVSCOPE_TESTS_WORKER_WORKER_TEST_UTIL_H_

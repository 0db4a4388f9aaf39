// File: worker/trial_runner.h
//
// Runs one trial attempt in a child process, so that a crash, an out-of-memory kill or an
// abort fails that attempt only. In `work_dir` (one directory per attempt) it writes the
// assignment's config to config.yaml and runs
//
//   KVSCOPE bench --config work_dir/config.yaml --out work_dir/out
//                 --progress-file work_dir/progress.json
//
// in its own process group, with stdout to work_dir/stdout.log and stderr to
// work_dir/stderr.log (GPU trials see only their GPUs through CUDA_VISIBLE_DEVICES). It
// polls the child and its progress file, and turns the outcome into a ResultReport: on exit
// 0, out/result.json and out/requests.jsonl; otherwise succeeded = false with the exit code
// or signal and the last lines of stderr.
//
// Thread safety: Run() is called once, from one thread; Stop() may be called from any
// thread, before, during or after Run().
#ifndef KVSCOPE_WORKER_TRIAL_RUNNER_H_
#define KVSCOPE_WORKER_TRIAL_RUNNER_H_

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/coordinator.h"

namespace kvscope::worker {

struct TrialRunnerOptions {
  // The kvscope binary the child runs. The default is the running binary, which is kvscope
  // itself in `kvscope worker` and `kvscope run`.
  std::string kvscope_binary = "/proc/self/exe";
  // After Stop(): SIGTERM to the child's group, then SIGKILL once this many seconds passed.
  double stop_grace_seconds = 5;
  // How often the child's state and progress file are checked.
  double poll_interval_seconds = 0.1;
  // Lines of stderr quoted in a failure's error.
  int32_t stderr_tail_lines = 10;
};

// The progress file's contents (`kvscope bench --progress-file`).
struct TrialProgress {
  int64_t requests_done = 0;
  int64_t requests_total = 0;
  double elapsed_s = 0;
};

// Parses {"requests_done":N,"requests_total":M,"elapsed_s":S}. InvalidArgument otherwise.
absl::StatusOr<TrialProgress> ParseProgress(const std::string& text);

// The attempt's directory name under the daemon's work dir: "<trial id>-a<attempt id>", with
// characters outside [A-Za-z0-9_.-] replaced by '_'.
std::string AttemptDirName(const coordinator::TrialAssignment& assignment);

// "SIGABRT", "SIGKILL", ... for a signal number; "signal N" for others.
std::string SignalName(int signal_number);

class TrialRunner {
 public:
  TrialRunner(TrialRunnerOptions options, coordinator::TrialAssignment assignment,
              std::string work_dir);
  TrialRunner(const TrialRunner&) = delete;
  TrialRunner& operator=(const TrialRunner&) = delete;

  // Runs the attempt to its end and reports how it went; blocks. `on_progress` (may be
  // empty) is called on this thread each time the progress file changes. Never throws;
  // problems before the child starts (work dir, fork) also become a failed report.
  coordinator::ResultReport Run(const std::function<void(const TrialProgress&)>& on_progress);

  // Asks Run() to end the child: SIGTERM to its process group, SIGKILL after the grace
  // period. The report then says the attempt was stopped. Idempotent.
  void Stop();
  bool stop_requested() const { return stop_requested_.load(); }

  const coordinator::TrialAssignment& assignment() const { return assignment_; }
  const std::string& work_dir() const { return work_dir_; }

 private:
  // Starts the child; returns its pid.
  absl::StatusOr<pid_t> Spawn();
  coordinator::ResultReport Collect(int wait_status, bool stopped);

  const TrialRunnerOptions options_;
  const coordinator::TrialAssignment assignment_;
  const std::string work_dir_;
  std::atomic<bool> stop_requested_{false};
  std::mutex mu_;
  std::condition_variable wake_;  // Stop() wakes Run()'s poll wait
};

}  // namespace kvscope::worker

#endif  // KVSCOPE_WORKER_TRIAL_RUNNER_H_

// File: worker/trial_runner.h
//
// Runs one trial attempt in a child process, so that a crash, an out-of-memory kill or an
// abort fails that attempt only. In `work_dir` (one directory per attempt) it writes the
// assignment's config to config.yaml and runs
//
//   KVSCOPE bench --config work_dir/config.yaml --out work_dir/out
//                 --progress-file work_dir/progress.json
//
// (plus the gang flags for one rank of a multi-worker trial, see GangRole)
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

// The attempt's place in a gang: a tensor-parallel group spread over `world_size` workers
// (docs/cluster.md, "Multi-node trials"). world_size 1 is an ordinary trial.
struct GangRole {
  int32_t rank = 0;
  int32_t world_size = 1;
};

// How a gang's ranks meet; the daemon implements both over the coordinator's rendezvous.
// Called on Run()'s thread.
struct RendezvousHooks {
  // Rank 0: called once with the blob the child wrote to its rendezvous file (its listening
  // address and token). A non-OK status stops the child and fails the attempt with it.
  std::function<absl::Status(const std::string& blob)> publish;
  // Ranks > 0: called before the child starts; returns rank 0's blob, or the error that
  // fails the attempt. It retries transient errors itself and gives up once `stopped()`.
  std::function<absl::StatusOr<std::string>(const std::function<bool()>& stopped)> await;
};

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
  // For a gang rank, the child also gets --gang-rank, --gang-size, --gang-rendezvous-file
  // work_dir/rendezvous and (rank 0) --gang-listen-host. A rank > 0 writes no result:
  // exit 0 is reported as success with an empty result.
  GangRole gang;
  std::string gang_listen_host = "127.0.0.1";  // where rank 0's child listens for the others
  RendezvousHooks rendezvous;                  // required for a gang
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
  std::string RendezvousPath() const { return work_dir_ + "/rendezvous"; }

  const TrialRunnerOptions options_;
  const coordinator::TrialAssignment assignment_;
  const std::string work_dir_;
  std::string rendezvous_blob_;  // rank > 0: rank 0's blob, from the await hook
  std::atomic<bool> stop_requested_{false};
  std::mutex mu_;
  std::condition_variable wake_;  // Stop() wakes Run()'s poll wait
};

}  // namespace kvscope::worker

#endif  // KVSCOPE_WORKER_TRIAL_RUNNER_H_

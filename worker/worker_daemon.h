// File: worker/worker_daemon.h
//
// The worker daemon: registers with the coordinator, heartbeats, takes trials while it has
// room, runs each in a child process (worker/trial_runner.h) on its own thread, reports
// progress, and reports each result once it is safe on disk (worker/result_spool.h). A
// result report also asks for the worker's next trials (ReportResultAndAcquire), so a busy
// worker makes one call per trial; AcquireTrials fills whatever slots are still free.
// Transport-free: it talks to the coordinator through a CoordinatorConnection, which is gRPC
// in `kvscope worker` and an in-process Coordinator in tests and `kvscope run`.
//
// Behaviour by error (see worker/coordinator_connection.h):
//   Unavailable / DeadlineExceeded  the coordinator is away: retry with exponential backoff
//                                   and jitter (registration, and heartbeats as the probe
//                                   once registered); trials keep running meanwhile, and
//                                   the spool is re-sent once it answers again.
//   NotFound from Heartbeat         the coordinator forgot this worker: register again,
//                                   keeping the worker id.
//   FailedPrecondition from a report  the attempt is stale: its result is dropped (logged),
//                                   a progress report stops the attempt.
//   Unauthenticated / PermissionDenied  fatal: Run() stops the trials and returns the error.
// The coordinator's stop_attempts (cancelled, or lease lost) stop those trials; their
// results are not reported.
//
// Gang ranks (TrialAssignment::gang): rank 0's child listens and writes a rendezvous blob,
// which the daemon publishes (PublishRendezvous); a rank > 0 first waits for that blob
// (AwaitRendezvous, asked again while it answers DeadlineExceeded or the coordinator is
// away), then starts its child. A rank > 0 reports success without a result.
//
// Thread safety: Run() is called once, from one thread. Shutdown() and the accessors may be
// called from any thread.
#ifndef KVSCOPE_WORKER_WORKER_DAEMON_H_
#define KVSCOPE_WORKER_WORKER_DAEMON_H_

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "coordinator/coordinator.h"
#include "worker/coordinator_connection.h"

namespace kvscope::worker {

struct WorkerDaemonOptions {
  CoordinatorConnection* connection = nullptr;   // required; not owned; outlives the daemon
  coordinator::WorkerCapabilities capabilities;  // worker/capabilities.h
  std::string work_dir;                          // required; one subdirectory per attempt
  std::string spool_dir;  // finished results and the worker id; "" = work_dir + "/spool"
  std::string kvscope_binary = "/proc/self/exe";  // what runs `bench` in the child
  int32_t max_concurrent_trials = 1;              // trials run at once, >= 1
  // Backoff while the coordinator is unreachable: the n-th consecutive failure waits a
  // random time in [d/2, d] with d = min(backoff_max, backoff_base * 2^(n-1)).
  double backoff_base_seconds = 0.5;
  double backoff_max_seconds = 30;
  uint64_t backoff_seed = 0;  // seeds the jitter; 0 = from the random device
  // How often an idle worker asks for trials, and the least time between two progress
  // reports of one attempt.
  double acquire_interval_seconds = 1;
  double progress_interval_seconds = 1;
  double stop_grace_seconds = 5;   // SIGTERM -> SIGKILL for a stopped trial
  bool keep_attempt_dirs = false;  // keep each attempt's config, logs and output
  // Gangs (a trial's tensor-parallel group over several workers): the address rank 0's
  // child listens on, which the other ranks' workers must be able to reach.
  std::string advertise_host = "127.0.0.1";
  // Longest a rank > 0 waits for rank 0's rendezvous (the gang's attempt usually ends
  // sooner, through a lease, when rank 0 is gone).
  double rendezvous_timeout_seconds = 600;
};

// The wait before retry number `failures` (>= 1), as WorkerDaemonOptions describes.
double BackoffSeconds(int32_t failures, double base_seconds, double max_seconds,
                      std::mt19937_64* rng);

class WorkerDaemon {
 public:
  // InvalidArgument for a missing connection or work dir, or max_concurrent_trials < 1;
  // the spool's errors when it cannot be opened.
  static absl::StatusOr<std::unique_ptr<WorkerDaemon>> Create(WorkerDaemonOptions options);
  ~WorkerDaemon();
  WorkerDaemon(const WorkerDaemon&) = delete;
  WorkerDaemon& operator=(const WorkerDaemon&) = delete;

  // Serves until Shutdown(): OK then. A fatal error (Unauthenticated, PermissionDenied, or a
  // registration refused as InvalidArgument) ends it with that error. Running trials are
  // stopped before it returns; results that could not be reported stay in the spool.
  absl::Status Run();
  // Makes Run() return soon. Idempotent; may be called before Run().
  void Shutdown();

  // The id the coordinator gave, or "" before the first registration.
  std::string worker_id() const;
  // Attempts running now.
  std::vector<int64_t> RunningAttempts() const;

 private:
  class Impl;
  explicit WorkerDaemon(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvscope::worker

#endif  // KVSCOPE_WORKER_WORKER_DAEMON_H_

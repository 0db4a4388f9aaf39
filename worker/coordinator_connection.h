// File: worker/coordinator_connection.h
//
// The worker daemon's view of the coordinator: the worker-facing API of
// coordinator/coordinator.h, behind an interface so that the daemon is free of any
// transport. worker/grpc_connection.cc implements it over gRPC (WorkerService in
// proto/kvscope/v1/worker.proto); tests implement it by calling a Coordinator in process.
//
// Errors: Unavailable (or DeadlineExceeded) means the coordinator could not be reached and
// the call may be retried with backoff; NotFound from Heartbeat means the worker is unknown
// and must register again; FailedPrecondition from ReportProgress/ReportResult means the
// attempt is stale (its lease expired and the trial was handed to someone else): the
// result must be dropped, not retried; Unauthenticated/PermissionDenied are fatal.
//
// Thread safety: implementations must allow calls from several threads at once.
#ifndef KVSCOPE_WORKER_COORDINATOR_CONNECTION_H_
#define KVSCOPE_WORKER_COORDINATOR_CONNECTION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "coordinator/coordinator.h"  // plain data types only (no store, no gRPC)

namespace kvscope::worker {

struct Registration {
  std::string worker_id;
  double heartbeat_interval_seconds = 5;
  double lease_seconds = 30;
};

class CoordinatorConnection {
 public:
  virtual ~CoordinatorConnection() = default;
  // `worker_id`: the id from an earlier registration, or "" for a new worker.
  virtual absl::StatusOr<Registration> Register(
      const coordinator::WorkerCapabilities& capabilities, const std::string& worker_id) = 0;
  virtual absl::StatusOr<coordinator::HeartbeatReply> Heartbeat(
      const std::string& worker_id, const std::vector<int64_t>& running_attempts) = 0;
  virtual absl::StatusOr<std::vector<coordinator::TrialAssignment>> AcquireTrials(
      const std::string& worker_id, int32_t max_trials) = 0;
  virtual absl::Status ReportProgress(const std::string& worker_id, int64_t attempt_id,
                                      int64_t requests_done, int64_t requests_total,
                                      double elapsed_s) = 0;
  virtual absl::Status ReportResult(const std::string& worker_id, int64_t attempt_id,
                                    const coordinator::ResultReport& report) = 0;
  // ReportResult that also asks for up to `max_next_trials` new trials in the same call
  // (Coordinator::ReportResultAndAcquire): one call per trial instead of report + acquire.
  // Returns the new assignments, possibly none; errors are those of ReportResult, and a
  // refused report gets no assignment. The default calls ReportResult and returns none,
  // which is also what a coordinator that predates this answers, so callers must go on
  // calling AcquireTrials when they got fewer than they asked for.
  virtual absl::StatusOr<std::vector<coordinator::TrialAssignment>> ReportResultAndAcquire(
      const std::string& worker_id, int64_t attempt_id, const coordinator::ResultReport& report,
      int32_t max_next_trials) {
    if (absl::Status s = ReportResult(worker_id, attempt_id, report); !s.ok()) return s;
    return std::vector<coordinator::TrialAssignment>();
  }

  // --- gang rendezvous (Coordinator::PublishRendezvous / AwaitRendezvous) ---
  // Rank 0's worker publishes its driver's rendezvous blob. Errors: FailedPrecondition
  // (stale attempt, not rank 0, another blob already published: stop the rank),
  // InvalidArgument (empty or over 256 bytes), Unavailable (retry). The defaults answer
  // Unimplemented (a connection that does not support gangs).
  virtual absl::Status PublishRendezvous(const std::string& worker_id, int64_t attempt_id,
                                         const std::string& gang_id, const std::string& blob) {
    return absl::UnimplementedError("this coordinator connection does not support gangs");
  }
  // A rank > 0 waits (one bounded call, about 10 s at most) for rank 0's blob.
  // DeadlineExceeded: not published yet, ask again; Unavailable: the coordinator is
  // unreachable, ask again with backoff; Aborted: the attempt has ended, stop the rank;
  // FailedPrecondition: stale (not this attempt's gang, rank or worker), stop.
  virtual absl::StatusOr<coordinator::Rendezvous> AwaitRendezvous(const std::string& worker_id,
                                                                  int64_t attempt_id,
                                                                  const std::string& gang_id,
                                                                  int32_t rank) {
    return absl::UnimplementedError("this coordinator connection does not support gangs");
  }
};

}  // namespace kvscope::worker

#endif  // KVSCOPE_WORKER_COORDINATOR_CONNECTION_H_

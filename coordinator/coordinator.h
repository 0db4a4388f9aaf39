// File: coordinator/coordinator.h
//
// The coordinator's logic, free of any transport: the gRPC services (coordinator/
// grpc_*.cc) are thin adapters over this class, and tests drive it directly with a
// FakeClock.
//
// Trial state machine (docs/cluster.md):
//   pending --AcquireTrials--> leased --ReportProgress--> running
//   leased|running --ReportResult(ok)--> succeeded
//   leased|running --ReportResult(error) or lease expiry--> pending with a new attempt,
//                   or failed once max_attempts attempts have failed (reasons of each kept)
//   pending|leased|running --CancelExperiment--> cancelled
// Every state change is committed to the Store before the call returns, so an
// acknowledged change survives a coordinator crash.
//
// Fencing: each lease is an attempt with a fresh attempt id. Progress and results that
// name an attempt other than the trial's current one are refused with FailedPrecondition
// ("stale attempt"), so a worker that comes back after its lease expired cannot overwrite
// the re-run. A result reported twice for the same attempt (a retry after a lost
// acknowledgement) is acknowledged again and stored once.
//
// Durability and threads: a mutating call changes memory under the coordinator's lock and
// queues its rows; the rows of many calls are committed together (group commit). The
// synchronous methods return once their change is committed. The asynchronous ones (the
// *Async methods, for the gRPC callback services) return at once and report the outcome
// through a callback, which the coordinator's commit thread runs once the change is
// committed, so that no thread waits per call.
//
// Gangs (docs/cluster.md, "Multi-node trials"): a trial whose requirements have nodes > 1
// runs as one attempt over `nodes` ranks on distinct workers. Placement is all-or-nothing
// in one store transaction: the worker calling AcquireTrials takes rank 0 and ranks
// 1..n-1 are leased at once to other alive workers that have the capacity now (a rank
// holds a CPU slot, or `gpus` GPUs, exactly like an ordinary trial); those ranks are handed
// out in their workers' next AcquireTrials / ReportResultAndAcquire replies, before any new
// placement. Each rank's lease is renewed by its own worker (heartbeats, progress). Any
// rank's lease expiring or any rank reporting failure ends the whole attempt (the other
// ranks find it in stop_attempts; the trial is retried with a new attempt and gang_id as
// usual). Rank 0 reports the result; a rank > 0 reporting success only releases its own
// hold, and its reports after the attempt ended are acknowledged. The rendezvous blob
// (PublishRendezvous / AwaitRendezvous) lives in memory only; see AwaitRendezvous for what
// a restart does to a gang in flight.
//
// Thread safety: every method may be called from any thread.
#ifndef KVSCOPE_COORDINATOR_COORDINATOR_H_
#define KVSCOPE_COORDINATOR_COORDINATOR_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/clock.h"
#include "coordinator/sweep.h"
#include "nlohmann/json.hpp"

namespace kvscope::coordinator {

class Store;  // coordinator/store.h

enum class TrialState { kPending, kLeased, kRunning, kSucceeded, kFailed, kCancelled };
enum class ExperimentState { kRunning, kSucceeded, kFailed, kCancelled };
// "pending", "leased", ... and back; the names used in the store, the API and the CLI.
const char* TrialStateName(TrialState state);
const char* ExperimentStateName(ExperimentState state);
// The inverse of the two above; nullopt for an unknown name.
std::optional<TrialState> TrialStateFromName(const std::string& name);
std::optional<ExperimentState> ExperimentStateFromName(const std::string& name);

struct GpuInfo {
  int32_t index = 0;
  std::string name;
  int64_t memory_bytes = 0;
  std::string compute_capability;  // "9.0"
  std::string driver;
};

struct WorkerCapabilities {
  std::string hostname;
  int32_t cpu_cores = 0;
  int64_t memory_bytes = 0;
  std::vector<GpuInfo> gpus;
  std::string topology;               // NVLink/PCIe matrix as text; "" without GPUs
  std::vector<std::string> backends;  // "cpu", and "cuda" in CUDA builds with a GPU
  std::vector<std::string> models;    // model directories this worker can read
  int32_t max_cpu_trials = 1;         // CPU trials run at once
  nlohmann::json fingerprint = nlohmann::json::object();  // common/env_fingerprint.h
};

// The capabilities as the store and `kvscope workers` show them (and `kvscope worker
// --print-capabilities` prints them).
nlohmann::json CapabilitiesToJson(const WorkerCapabilities& c);

struct WorkerInfo {
  std::string worker_id;
  WorkerCapabilities capabilities;
  bool alive = false;             // heartbeat within the lease period
  double last_heartbeat_unix_s = 0;
  std::vector<std::string> running_trials;  // trial ids
};

// One rank's place in a gang attempt.
struct GangPlacement {
  std::string gang_id;                // unique per attempt; names the rendezvous
  int32_t rank = 0;                   // 0 .. world_size-1; rank 0 publishes the rendezvous
  int32_t world_size = 0;             // = the trial's nodes
  std::vector<std::string> worker_ids;  // the worker of every rank, in rank order
  int32_t gpus_per_rank = 0;          // GPUs each rank holds on its worker; 0 for cpu
};

struct TrialAssignment {
  std::string experiment_id;
  std::string trial_id;
  int64_t attempt_id = 0;     // fencing token; unique across the store
  int32_t attempt_number = 1; // 1-based
  std::string config_yaml;    // TrialSpec::config_yaml
  std::vector<int32_t> gpu_indices;  // GPUs of this worker reserved for the trial (rank)
  double lease_seconds = 0;
  std::optional<GangPlacement> gang;  // set for every rank of a gang attempt
};

// What AwaitRendezvous returns: the blob rank 0 published, and the gang's size.
struct Rendezvous {
  std::string blob;
  int32_t world_size = 0;
};

// Longest rendezvous blob PublishRendezvous accepts.
inline constexpr size_t kMaxRendezvousBlobBytes = 256;

struct AttemptInfo {
  int64_t attempt_id = 0;
  int32_t number = 1;
  std::string worker_id;  // rank 0's worker for a gang
  std::string state;   // "leased", "running", "succeeded", "failed", "expired", "cancelled"
  std::string error;   // why it failed or expired
  double started_unix_s = 0, finished_unix_s = 0;
};

struct TrialInfo {
  std::string trial_id;
  int64_t index = 0;
  int32_t repeat = 0;
  nlohmann::json axes;
  std::string label;
  TrialState state = TrialState::kPending;
  std::vector<AttemptInfo> attempts;
  int64_t requests_done = 0, requests_total = 0;  // last progress report
  double elapsed_s = 0;
  std::string error;  // the reasons of every failed attempt, for a failed trial
  // For a pending gang (`nodes` > 1) that AcquireTrials tried and failed to place: why it
  // waits, e.g. "waiting for 4 workers that can each take a rank (a CPU trial slot); 2 can
  // now (w1, w2), 3 alive". Memory only: "" after a coordinator restart until the next try.
  std::string waiting;
};

struct ExperimentInfo {
  std::string experiment_id;
  std::string name;
  ExperimentState state = ExperimentState::kRunning;
  double created_unix_s = 0;
  int64_t num_trials = 0;
  int64_t pending = 0, leased = 0, running = 0, succeeded = 0, failed = 0, cancelled = 0;
  int64_t version = 0;  // increases with every change to the experiment or its trials
};

// A finished trial's stored outcome.
struct TrialResult {
  std::string trial_id;
  int64_t attempt_id = 0;
  nlohmann::json result;        // the trial's result.json (summary, config, environment)
  std::string requests_jsonl;   // the trial's requests.jsonl
};

struct ResultReport {
  bool succeeded = false;
  std::string error;            // when !succeeded: what failed (exit status, signal, message)
  nlohmann::json result;        // result.json when succeeded
  std::string requests_jsonl;
};

struct HeartbeatReply {
  // Attempts the worker named that it must stop now (cancelled, or no longer its lease).
  std::vector<int64_t> stop_attempts;
};

struct CoordinatorOptions {
  double lease_seconds = 30;          // a lease not renewed for this long expires
  double heartbeat_interval_seconds = 5;  // told to workers at registration
  int32_t default_max_attempts = 3;   // when the sweep does not set max_attempts
  SweepLimits sweep_limits;
  // Added to the commit thread's nice value (Linux, per thread; 0 leaves it), so that when
  // the CPU is saturated the threads that answer heartbeats win it over the bulk work of
  // committing and finishing calls (docs/benchmarks.md, "Coordinator throughput").
  int32_t commit_thread_nice = 5;
  // Longest one AwaitRendezvous call waits (real time) before DeadlineExceeded; also how
  // long (on the clock) after a restart a gang attempt found open may go without its
  // rendezvous being published again before an AwaitRendezvous ends it.
  double rendezvous_wait_seconds = 10;
};

// Adds `increment` to the calling thread's nice value (Linux: per thread). Best effort:
// does nothing when increment is 0 or the change is refused.
void LowerThisThreadPriority(int32_t increment);

class Coordinator {
 public:
  // `store` and `clock` must outlive the coordinator. `clock` times leases only (it is
  // monotonic, so times shown to users come from the wall clock). Resumes whatever the
  // store holds: every lease found at start gets a fresh full lease period, so that its
  // worker has time to reconnect and renew it.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(Store* store, const Clock* clock,
                                                             const CoordinatorOptions& options);
  ~Coordinator();

  // --- client API ---
  // Parses and validates the sweep; stores nothing when it is invalid
  // (InvalidArgument with the parser's message). Returns the experiment id.
  absl::StatusOr<std::string> Submit(const std::string& sweep_yaml, const std::string& source);
  // Submit with the sweep already parsed (`sweep_yaml` is only stored); for callers that
  // parsed it themselves, and for tests that need hand-made trial requirements.
  absl::StatusOr<std::string> SubmitParsed(const Sweep& sweep, const std::string& sweep_yaml,
                                           const std::string& source);
  absl::StatusOr<ExperimentInfo> GetExperiment(const std::string& experiment_id);
  absl::StatusOr<std::vector<ExperimentInfo>> ListExperiments();
  absl::StatusOr<std::vector<TrialInfo>> ListTrials(const std::string& experiment_id);
  // Results of the experiment's succeeded trials, in trial order.
  absl::StatusOr<std::vector<TrialResult>> Results(const std::string& experiment_id);
  // Cancels every unfinished trial; running ones are stopped at their next heartbeat.
  absl::Status Cancel(const std::string& experiment_id);
  absl::StatusOr<std::vector<WorkerInfo>> ListWorkers();
  // Blocks until the experiment's version exceeds `after_version`, or `timeout_seconds` of
  // real time pass, then returns its current info (watch streams are built on this).
  absl::StatusOr<ExperimentInfo> WaitForChange(const std::string& experiment_id,
                                               int64_t after_version, double timeout_seconds);

  // --- worker API ---
  // Registers (or re-registers, keeping `worker_id` when given and known) a worker.
  absl::StatusOr<std::string> RegisterWorker(const WorkerCapabilities& capabilities,
                                             const std::string& worker_id);
  // Renews the leases of `running_attempts` held by this worker. NotFound for an unknown
  // worker (it must register again).
  absl::StatusOr<HeartbeatReply> Heartbeat(const std::string& worker_id,
                                           const std::vector<int64_t>& running_attempts);
  // Leases up to `max_trials` pending trials that fit what the worker has free (GPUs not
  // held by its other leases, backend, GPU memory, models, max_cpu_trials).
  absl::StatusOr<std::vector<TrialAssignment>> AcquireTrials(const std::string& worker_id,
                                                             int32_t max_trials);
  absl::Status ReportProgress(const std::string& worker_id, int64_t attempt_id,
                              int64_t requests_done, int64_t requests_total, double elapsed_s);
  absl::Status ReportResult(const std::string& worker_id, int64_t attempt_id,
                            const ResultReport& report);
  // One call per trial: ReportResult, then, once the report is accepted, AcquireTrials for
  // up to `max_next_trials` trials (the worker's free slots after this result; 0 leases
  // nothing), under one lock hold and committed together. Returns the new assignments.
  // A refused report (FailedPrecondition for a stale attempt, NotFound for an unknown
  // worker, ...) returns that error and leases nothing. A repeated report of a success
  // (a retry after a lost reply) is acknowledged again and leases anew; the assignments of
  // the lost reply stay leased until their leases expire, as with a lost AcquireTrials reply.
  absl::StatusOr<std::vector<TrialAssignment>> ReportResultAndAcquire(
      const std::string& worker_id, int64_t attempt_id, const ResultReport& report,
      int32_t max_next_trials);

  // --- gang rendezvous ---
  // Rank 0 of gang attempt `attempt_id` (its worker, `worker_id`) publishes the blob the
  // other ranks need to join (opaque to the coordinator; e.g. "tcp://host:port/token").
  // InvalidArgument for an empty blob or one over kMaxRendezvousBlobBytes;
  // FailedPrecondition, like reports, for an attempt that is not open (stale), not a gang,
  // `gang_id` other than the attempt's, a worker other than rank 0's, or a blob other than
  // the one already published. Publishing the same blob again is acknowledged. Kept in
  // memory only (a restart forgets it).
  absl::Status PublishRendezvous(const std::string& worker_id, int64_t attempt_id,
                                 const std::string& gang_id, const std::string& blob);
  // Rank `rank` of the gang (its worker, `worker_id`) waits for rank 0's blob: returns at
  // once when it is published, else blocks until it is, the attempt ends, or
  // min(timeout_seconds, rendezvous_wait_seconds) of real time pass (DeadlineExceeded: ask
  // again). Aborted when the attempt ended (before or during the wait: stop the rank);
  // FailedPrecondition for a `gang_id`, rank or worker that is not this attempt's, checked
  // the same way (from the store) once the attempt has ended, so that only a worker that
  // held rank `rank` of this gang learns how it ended; NotFound for an unknown attempt or
  // worker.
  // After a coordinator restart the blobs are gone. A gang attempt found open at start
  // keeps its leases (ranks that joined run on: the rendezvous is only needed to start),
  // and rank 0 may publish again; but once rendezvous_wait_seconds have passed on the
  // clock since the start with nothing published, a call for that attempt ends it
  // ("failed": its rendezvous was lost in a coordinator restart; retried per max_attempts)
  // and answers Aborted.
  absl::StatusOr<Rendezvous> AwaitRendezvous(const std::string& worker_id, int64_t attempt_id,
                                             const std::string& gang_id, int32_t rank,
                                             double timeout_seconds);

  // --- asynchronous forms of the mutating worker and client calls ---
  // Each does what the synchronous method of the same name does and calls `done` exactly
  // once with the same outcome: on the calling thread when no commit is needed (a refusal,
  // nothing changed, or the change is durable already), otherwise on the coordinator's
  // commit thread once the change is committed. `done` runs with no coordinator lock held;
  // it must not block (it delays the commits behind it), so it should only hand the outcome
  // on (e.g. finish a gRPC reactor). The Coordinator must outlive every pending `done`:
  // destroying it runs the commits still queued and their callbacks first.
  template <typename T>
  using Callback = std::function<void(T)>;
  void RegisterWorkerAsync(const WorkerCapabilities& capabilities, const std::string& worker_id,
                           Callback<absl::StatusOr<std::string>> done);
  void AcquireTrialsAsync(const std::string& worker_id, int32_t max_trials,
                          Callback<absl::StatusOr<std::vector<TrialAssignment>>> done);
  void ReportProgressAsync(const std::string& worker_id, int64_t attempt_id,
                           int64_t requests_done, int64_t requests_total, double elapsed_s,
                           Callback<absl::Status> done);
  // ReportResultAndAcquire; max_next_trials = 0 makes it plain ReportResult (empty list).
  void ReportResultAndAcquireAsync(const std::string& worker_id, int64_t attempt_id,
                                   const ResultReport& report, int32_t max_next_trials,
                                   Callback<absl::StatusOr<std::vector<TrialAssignment>>> done);
  void CancelAsync(const std::string& experiment_id, Callback<absl::Status> done);
  // AwaitRendezvous without blocking, for gRPC's callback threads: it takes neither the
  // coordinator's lock nor the store, only a queue lock held to append the call, and
  // returns at once. The coordinator's rendezvous thread takes the calls up in call order
  // (checks, store reads for an ended attempt, registering the wait). `done` runs once:
  // on the rendezvous thread (answered at once, publish, timeout, cancel, shutdown) or,
  // for the end of the attempt (Aborted), on the thread that commits that end, once it is
  // durable (a failed commit answers its error instead); it may run before this returns.
  // Returns a handle for CancelAwait; 0 only once the coordinator is being destroyed, when
  // `done` already ran on this thread with Unavailable. Every answer but that one passes
  // through the rendezvous thread, so `done` must not block on another rendezvous answer
  // (e.g. call AwaitRendezvous): it would wait for its own thread.
  int64_t AwaitRendezvousAsync(const std::string& worker_id, int64_t attempt_id,
                               const std::string& gang_id, int32_t rank,
                               double timeout_seconds, Callback<absl::StatusOr<Rendezvous>> done);
  // Ends a wait of AwaitRendezvousAsync early (its `done` gets Cancelled, on the rendezvous
  // thread); nothing when it already finished. For a gRPC call the client cancelled. Like
  // AwaitRendezvousAsync it only queues the request (no coordinator lock) and returns at
  // once; taken up after the calls queued before it, so it may follow the await at once.
  void CancelAwait(int64_t handle);

  // Expires leases whose renewal is older than lease_seconds on the clock. The daemon
  // calls it every second; tests call it after advancing a FakeClock. Should a store read
  // fail for a lease (ending a trial's last attempt reads its earlier ones), that lease
  // stays open, unchanged, for the next pass, the others expire as usual, and the first
  // such error is returned once the pass's changes are committed.
  // Also writes what is kept in memory between state changes: heartbeat times of workers
  // and progress of running trials (so a crash loses at most about a second of those).
  absl::Status ExpireLeases();

  const CoordinatorOptions& options() const;

 private:
  class Impl;
  explicit Coordinator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvscope::coordinator

#endif  // KVSCOPE_COORDINATOR_COORDINATOR_H_

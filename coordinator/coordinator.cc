// The Coordinator: the trial state machine over an in-memory model rebuilt from the Store.
//
// Memory holds every trial's state (compact: no config, axes or label), the pending trials
// grouped by their requirements (so AcquireTrials looks at a handful of queue heads, not at
// every trial), the open leases and the workers. Each mutating call changes memory under
// mu_ and queues the matching rows as one StoreBatch; it then waits, without mu_, until that
// batch is committed before it returns (group commit: whoever waits first commits every
// queued batch in one transaction, so concurrent calls share one fsync). Batches are queued
// in the order memory changed and committed in that order, so an acknowledged change never
// depends on one that is not durable.
//
// Kept in memory only, written about once a second by ExpireLeases: worker heartbeat times,
// lease renewals by heartbeat (a restart renews every lease anyway), and progress numbers
// after the first report (the leased -> running change itself is committed).
//
// Asynchronous calls (the *Async methods) queue their batch like the others and register a
// callback for its ticket instead of waiting; a commit thread leads the commits that such
// callbacks wait for and runs each callback once its ticket is durable. Whoever finishes a
// commit (the commit thread or a synchronous caller leading one) runs the callbacks it made
// due, after releasing commit_mu_. AwaitRendezvousAsync and CancelAwait, called on gRPC's
// callback threads, take no lock but the rendezvous inbox's: the rendezvous thread takes
// them up under mu_ (so a gRPC thread never waits for mu_, nor for the store behind it).
//
// Should a commit fail (disk full, I/O error), memory is ahead of the file: the coordinator
// then refuses every further change with Unavailable until it is restarted, which rebuilds
// memory from the file (fail-stop rather than guessing).
#include "coordinator/coordinator.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <array>
#include <chrono>
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "coordinator/store.h"

namespace kvscope::coordinator {

const char* TrialStateName(TrialState state) {
  switch (state) {
    case TrialState::kPending:
      return "pending";
    case TrialState::kLeased:
      return "leased";
    case TrialState::kRunning:
      return "running";
    case TrialState::kSucceeded:
      return "succeeded";
    case TrialState::kFailed:
      return "failed";
    case TrialState::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

const char* ExperimentStateName(ExperimentState state) {
  switch (state) {
    case ExperimentState::kRunning:
      return "running";
    case ExperimentState::kSucceeded:
      return "succeeded";
    case ExperimentState::kFailed:
      return "failed";
    case ExperimentState::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

std::optional<TrialState> TrialStateFromName(const std::string& name) {
  for (TrialState s : {TrialState::kPending, TrialState::kLeased, TrialState::kRunning,
                       TrialState::kSucceeded, TrialState::kFailed, TrialState::kCancelled}) {
    if (name == TrialStateName(s)) return s;
  }
  return std::nullopt;
}

std::optional<ExperimentState> ExperimentStateFromName(const std::string& name) {
  for (ExperimentState s : {ExperimentState::kRunning, ExperimentState::kSucceeded,
                            ExperimentState::kFailed, ExperimentState::kCancelled}) {
    if (name == ExperimentStateName(s)) return s;
  }
  return std::nullopt;
}

void LowerThisThreadPriority(int32_t increment) {
  if (increment == 0) return;
  const auto tid = static_cast<id_t>(syscall(SYS_gettid));
  errno = 0;
  const int current = getpriority(PRIO_PROCESS, tid);
  if (current == -1 && errno != 0) return;
  (void)setpriority(PRIO_PROCESS, tid, std::clamp(current + increment, -20, 19));
}

nlohmann::json CapabilitiesToJson(const WorkerCapabilities& c) {
  nlohmann::json gpus = nlohmann::json::array();
  for (const GpuInfo& g : c.gpus) {
    gpus.push_back({{"index", g.index},
                    {"name", g.name},
                    {"memory_bytes", g.memory_bytes},
                    {"compute_capability", g.compute_capability},
                    {"driver", g.driver}});
  }
  return {{"hostname", c.hostname},         {"cpu_cores", c.cpu_cores},
          {"memory_bytes", c.memory_bytes}, {"gpus", gpus},
          {"topology", c.topology},         {"backends", c.backends},
          {"models", c.models},             {"max_cpu_trials", c.max_cpu_trials},
          {"fingerprint", c.fingerprint}};
}

namespace {

double WallNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

WorkerCapabilities CapabilitiesFromJson(const nlohmann::json& j) {
  WorkerCapabilities c;
  if (!j.is_object()) return c;
  c.hostname = j.value("hostname", std::string());
  c.cpu_cores = j.value("cpu_cores", 0);
  c.memory_bytes = j.value("memory_bytes", int64_t{0});
  if (j.contains("gpus") && j["gpus"].is_array()) {
    for (const auto& g : j["gpus"]) {
      GpuInfo info;
      info.index = g.value("index", 0);
      info.name = g.value("name", std::string());
      info.memory_bytes = g.value("memory_bytes", int64_t{0});
      info.compute_capability = g.value("compute_capability", std::string());
      info.driver = g.value("driver", std::string());
      c.gpus.push_back(std::move(info));
    }
  }
  c.topology = j.value("topology", std::string());
  c.backends = j.value("backends", std::vector<std::string>());
  c.models = j.value("models", std::vector<std::string>());
  c.max_cpu_trials = j.value("max_cpu_trials", 1);
  c.fingerprint = j.value("fingerprint", nlohmann::json::object());
  return c;
}

std::string NormalizePath(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

std::string RequirementsKey(const TrialRequirements& r) {
  return absl::StrCat(r.backend, "|", r.gpus, "|", r.cpu_threads, "|", r.gpu_memory_bytes, "|",
                      NormalizePath(r.model_path), "|", std::max(1, r.nodes));
}

// One rank of one attempt: the key of a rank's lease renewal.
struct RankKey {
  int64_t attempt = 0;
  int32_t rank = 0;
  bool operator==(const RankKey& o) const { return attempt == o.attempt && rank == o.rank; }
};
struct RankKeyHash {
  size_t operator()(const RankKey& k) const {
    return std::hash<int64_t>()(k.attempt) * 31 + static_cast<size_t>(k.rank);
  }
};

bool Unfinished(TrialState s) {
  return s == TrialState::kPending || s == TrialState::kLeased || s == TrialState::kRunning;
}

}  // namespace

class Coordinator::Impl {
 public:
  Impl(Store* store, const Clock* clock, const CoordinatorOptions& options)
      : store_(store), clock_(clock), options_(options) {}
  // Commits what is still queued, runs the callbacks waiting for it, stops the commit thread.
  ~Impl();

  absl::Status Load();
  // Starts the commit thread (after Load).
  void StartCommitThread();

  absl::StatusOr<std::string> SubmitParsed(const Sweep& sweep, const std::string& sweep_yaml,
                                           const std::string& source);
  absl::StatusOr<ExperimentInfo> GetExperiment(const std::string& experiment_id);
  absl::StatusOr<std::vector<ExperimentInfo>> ListExperiments();
  absl::StatusOr<std::vector<TrialInfo>> ListTrials(const std::string& experiment_id);
  absl::StatusOr<std::vector<TrialResult>> Results(const std::string& experiment_id);
  absl::Status Cancel(const std::string& experiment_id);
  absl::StatusOr<std::vector<WorkerInfo>> ListWorkers();
  absl::StatusOr<ExperimentInfo> WaitForChange(const std::string& experiment_id,
                                               int64_t after_version, double timeout_seconds);
  absl::StatusOr<std::string> RegisterWorker(const WorkerCapabilities& capabilities,
                                             const std::string& worker_id);
  absl::StatusOr<HeartbeatReply> Heartbeat(const std::string& worker_id,
                                           const std::vector<int64_t>& running_attempts);
  absl::StatusOr<std::vector<TrialAssignment>> AcquireTrials(const std::string& worker_id,
                                                             int32_t max_trials);
  absl::Status ReportProgress(const std::string& worker_id, int64_t attempt_id,
                              int64_t requests_done, int64_t requests_total, double elapsed_s);
  absl::Status ReportResult(const std::string& worker_id, int64_t attempt_id,
                            const ResultReport& report);
  absl::StatusOr<std::vector<TrialAssignment>> ReportResultAndAcquire(
      const std::string& worker_id, int64_t attempt_id, const ResultReport& report,
      int32_t max_next_trials);
  absl::Status ExpireLeases();
  const CoordinatorOptions& options() const { return options_; }

  template <typename T>
  using Callback = Coordinator::Callback<T>;
  void RegisterWorkerAsync(const WorkerCapabilities& capabilities, const std::string& worker_id,
                           Callback<absl::StatusOr<std::string>> done);
  void AcquireTrialsAsync(const std::string& worker_id, int32_t max_trials,
                          Callback<absl::StatusOr<std::vector<TrialAssignment>>> done);
  void ReportProgressAsync(const std::string& worker_id, int64_t attempt_id,
                           int64_t requests_done, int64_t requests_total, double elapsed_s,
                           Callback<absl::Status> done);
  void ReportResultAndAcquireAsync(const std::string& worker_id, int64_t attempt_id,
                                   const ResultReport& report, int32_t max_next_trials,
                                   Callback<absl::StatusOr<std::vector<TrialAssignment>>> done);
  void CancelAsync(const std::string& experiment_id, Callback<absl::Status> done);

  absl::Status PublishRendezvous(const std::string& worker_id, int64_t attempt_id,
                                 const std::string& gang_id, const std::string& blob);
  absl::StatusOr<Rendezvous> AwaitRendezvous(const std::string& worker_id, int64_t attempt_id,
                                             const std::string& gang_id, int32_t rank,
                                             double timeout_seconds);
  int64_t AwaitRendezvousAsync(const std::string& worker_id, int64_t attempt_id,
                               const std::string& gang_id, int32_t rank,
                               double timeout_seconds, Callback<absl::StatusOr<Rendezvous>> done);
  void CancelAwait(int64_t handle);

 private:
  struct Trial {
    std::string id;
    int32_t experiment = 0;  // index into experiments_
    int64_t index = 0;
    TrialState state = TrialState::kPending;
    int64_t current_attempt = 0;
    int32_t attempt_count = 0;
    int32_t max_attempts = 3;
    int32_t klass = 0;  // index into classes_
    int64_t requests_done = 0, requests_total = 0;
    double elapsed_s = 0;
    std::string error;
    bool progress_dirty = false;  // progress newer than the store's
  };
  struct Experiment {
    std::string id;
    std::string name;
    double created_unix_s = 0;
    ExperimentState state = ExperimentState::kRunning;
    int64_t version = 0;
    std::array<int64_t, 6> counts{};  // by TrialState
    std::vector<int32_t> trials;      // indices into trials_, in index order
  };
  // One rank's hold on its worker (an ordinary attempt has one: rank 0).
  struct Hold {
    std::string worker_id;
    std::vector<int32_t> gpus;  // GpuInfo::index values
    bool cpu = false;           // counts against max_cpu_trials
    int64_t renewed_nanos = 0;  // on clock_
    double renewed_unix_s = 0;
    bool delivered = true;      // handed to its worker (ranks > 0 start undelivered)
    bool released = false;      // a rank > 0 that reported success: holds nothing any more
  };
  struct Lease {
    int64_t attempt_id = 0;
    int32_t trial = 0;
    int32_t number = 1;
    bool running = false;        // rank 0 reported progress
    std::vector<Hold> ranks;     // in rank order; one unless a gang
    std::string gang_id;         // "" unless a gang
    bool recovered = false;      // a gang found open at start: its rendezvous may be lost
    int64_t recovered_nanos = 0; // on clock_: when it was found
    const std::string& worker_id() const { return ranks[0].worker_id; }
    bool gang() const { return ranks.size() > 1; }
    // The rank `worker_id` holds (released or not), or -1.
    int32_t RankOf(const std::string& worker_id) const {
      for (size_t r = 0; r < ranks.size(); ++r) {
        if (ranks[r].worker_id == worker_id) return static_cast<int32_t>(r);
      }
      return -1;
    }
  };
  // What a worker has free: GPUs (by position in caps.gpus) and CPU trial slots in use.
  struct Capacity {
    std::vector<bool> gpu_busy;
    int32_t cpu_running = 0;
  };
  // An AwaitRendezvousAsync call waiting for its blob.
  struct RendezvousWaiter {
    int64_t attempt_id = 0;
    std::chrono::steady_clock::time_point deadline;
    Callback<absl::StatusOr<Rendezvous>> done;
  };
  // An AwaitRendezvousAsync or CancelAwait call, queued for the rendezvous thread.
  struct RendezvousCall {
    int64_t handle = 0;
    bool cancel = false;  // CancelAwait(handle); the fields below are AwaitRendezvousAsync's
    std::string worker_id;
    int64_t attempt_id = 0;
    std::string gang_id;
    int32_t rank = 0;
    bool wait = false;  // may wait (until `deadline`) when the blob is not published yet
    std::chrono::steady_clock::time_point deadline;
    Callback<absl::StatusOr<Rendezvous>> done;
  };
  // An answer to send once the change that ended its attempt is durable: (ticket, answer).
  using RendezvousAfterCommit =
      std::tuple<int64_t, absl::Status, Callback<absl::StatusOr<Rendezvous>>>;
  struct Worker {
    std::string id;
    int64_t seq = 0;
    WorkerCapabilities caps;
    double registered_unix_s = 0;
    double last_heartbeat_unix_s = 0;
    bool heard = false;  // since this coordinator started
    int64_t last_heard_nanos = 0;
    bool heartbeat_dirty = false;
    std::set<int64_t> attempts;  // open leases
  };
  // Pending trials that need the same things, oldest first.
  struct RequirementClass {
    TrialRequirements requirements;
    std::set<int32_t> pending;  // indices into trials_ (submission order)
    // Why the class's oldest pending gang could not be placed the last time AcquireTrials
    // evaluated it; "" once a gang of the class is placed. Memory only (soft state, like
    // progress): ListTrials shows it on the class's pending trials.
    std::string waiting;
  };
  // What one call changes, committed by Finish().
  struct Op {
    StoreBatch batch;
    std::set<int32_t> experiments;  // touched: version bump, state re-derived
    double now_unix_s = WallNow();
  };

  absl::Status CancelLocked(const std::string& experiment_id, int64_t* ticket);
  absl::StatusOr<std::string> RegisterWorkerLocked(const WorkerCapabilities& capabilities,
                                                   const std::string& worker_id,
                                                   int64_t* ticket);
  absl::StatusOr<std::vector<TrialAssignment>> AcquireTrialsLocked(const std::string& worker_id,
                                                                   int32_t max_trials,
                                                                   int64_t* ticket);
  absl::Status ReportProgressLocked(const std::string& worker_id, int64_t attempt_id,
                                    int64_t requests_done, int64_t requests_total,
                                    double elapsed_s, int64_t* ticket);
  absl::Status ReportResultLocked(const std::string& worker_id, int64_t attempt_id,
                                  const ResultReport& report, int64_t* ticket);
  // Ends every lease not renewed within lease_seconds. When a store read fails part-way,
  // the leases ended before it stay ended and are queued like any change (`*ticket`, with
  // their rendezvous waiters), and the error is returned; the lease it failed on stays
  // open, unchanged, for the next pass.
  absl::Status ExpireLeasesLocked(int64_t* ticket);
  // ReportResultLocked, then AcquireTrialsLocked when the report was accepted; `*ticket`
  // covers both.
  absl::StatusOr<std::vector<TrialAssignment>> ReportResultAndAcquireLocked(
      const std::string& worker_id, int64_t attempt_id, const ResultReport& report,
      int32_t max_next_trials, int64_t* ticket);
  // Fills in each assignment's config (immutable once stored; read without mu_).
  absl::StatusOr<std::vector<TrialAssignment>> LoadConfigs(std::vector<TrialAssignment> out);

  absl::Status CheckUsable() {
    if (broken_ok_.load()) return absl::OkStatus();
    std::lock_guard<std::mutex> lock(commit_mu_);
    return BrokenStatus();
  }
  int32_t ClassFor(const TrialRequirements& requirements);
  void SetTrialState(int32_t t, TrialState state, Op* op);
  TrialChange MakeTrialChange(const Trial& t) const;
  void AddEvent(Op* op, const std::string& experiment_id, const std::string& trial_id,
                int64_t attempt_id, const std::string& kind, const std::string& message);
  // Removes an open lease and its holds on its worker.
  void ReleaseLease(int64_t attempt_id);
  // After attempt `lease` ended without success (`reason`): pending again, or failed.
  // Fails only when the trial is on its last attempt and reading its earlier attempts from
  // the store fails; it has then changed nothing, in memory or in `op` (callers ending
  // several attempts in one op rely on that).
  absl::Status RetryOrFail(const Lease& lease, const std::string& attempt_state,
                           const std::string& reason, Op* op);
  // Queues the op's writes for commit; returns the ticket to WaitDurable on (0: nothing to
  // write). Called with mu_ held, so batches are queued in the order memory changed.
  int64_t Finish(Op* op);
  // Blocks until the batch with `ticket` is committed (leading the commit if nobody is).
  // Called without mu_. Commits merge every batch queued meanwhile into one transaction.
  absl::Status WaitDurable(int64_t ticket);
  // Calls `done` with what WaitDurable(ticket) would return, once the batch with `ticket`
  // is committed: at once on this thread when it is (or ticket is 0), else on the thread
  // that finishes that commit. Called without mu_.
  void WhenDurable(int64_t ticket, Callback<absl::Status> done);
  // One group commit of everything queued: called with commit_mu_ held through `lock`,
  // !committing_ and queue_ not empty; returns with it held again. Runs the callbacks that
  // became due, with commit_mu_ released meanwhile.
  void CommitRound(std::unique_lock<std::mutex>& lock);
  // Commit thread body: leads a commit whenever a callback waits on a queued batch and no
  // commit is under way.
  void CommitLoop();
  int64_t LastTicket();
  absl::Status BrokenStatus() const {
    if (broken_.ok()) return absl::OkStatus();
    return absl::UnavailableError(absl::StrCat(
        "the coordinator stopped accepting changes after a store write failed (",
        broken_.message(), "); restart it to resume from the store"));
  }
  // Adds what the heartbeats and progress reports left in memory to `op`.
  void FlushSoftState(Op* op);
  // Moves the renewals and liveness recorded by Heartbeat into leases_ and workers_.
  // Called with mu_ held before anything reads them.
  void FoldHeartbeats();
  absl::Status StaleError(int64_t attempt_id);
  // FailedPrecondition unless attempt `attempt_id`, whose gang id is `attempt_gang_id`
  // ("" for an ordinary attempt), is a gang and `gang_id` names it (rendezvous calls).
  static absl::Status CheckGang(int64_t attempt_id, const std::string& attempt_gang_id,
                                const std::string& gang_id);
  // The FailedPrecondition of an AwaitRendezvous whose worker is not rank `rank`'s.
  static absl::Status NotRankError(const std::string& worker_id, int32_t rank,
                                   const std::string& gang_id);
  ExperimentInfo MakeInfo(const Experiment& e) const;
  static ExperimentState Derive(const Experiment& e);
  bool Fits(const Worker& w, const TrialRequirements& r, const std::vector<bool>& gpu_busy,
            int32_t cpu_running) const;
  Capacity CapacityOf(const Worker& w) const;
  // Reserves what one rank of `r` needs from `cap` (a CPU slot, or r.gpus GPUs of the
  // needed memory) and returns the GPUs taken.
  std::vector<int32_t> Take(const Worker& w, const TrialRequirements& r, Capacity* cap) const;
  bool Alive(const Worker& w, int64_t now) const {
    return w.heard && static_cast<double>(now - w.last_heard_nanos) * 1e-9 < options_.lease_seconds;
  }
  // Up to `n` alive workers other than `except` that can take one rank of `r` now.
  std::vector<Worker*> FindFollowers(const std::string& except, const TrialRequirements& r,
                                     int32_t n, int64_t now);
  // The waiting reason of a gang of `r` that could not be placed: `driver` can take rank 0
  // and `followers` (all the other alive workers that can take a rank now) are too few.
  std::string GangWaitingReason(const TrialRequirements& r, const Worker& driver,
                                const std::vector<Worker*>& followers, int64_t now) const;
  TrialAssignment MakeAssignment(const Lease& lease, int32_t rank) const;
  // Registers a new lease's holds with their workers and the heartbeat owner map.
  void AddLease(Lease lease);
  // AwaitRendezvous up to the wait: the blob, nullopt to wait, or the refusal. Ends a
  // recovered gang whose rendezvous is lost (RendezvousLost), setting `*ticket`; for an
  // attempt that has ended, sets `*ticket` to the last queued one (its end may be queued).
  // Checks the caller (gang id, rank, the rank's worker) for an ended attempt as for an
  // open one, from the store: how an attempt ended is told to its own ranks only. Reads the
  // store unless the attempt is open: called on the rendezvous thread only.
  absl::StatusOr<std::optional<Rendezvous>> AwaitCheckLocked(const std::string& worker_id,
                                                              int64_t attempt_id,
                                                              const std::string& gang_id,
                                                              int32_t rank, int64_t* ticket);
  bool RendezvousLost(const Lease& lease) const;
  // Ends the recovered gang attempt `attempt_id` whose rendezvous was lost; returns the
  // Aborted status to answer.
  absl::Status EndLostRendezvousLocked(int64_t attempt_id, int64_t* ticket);
  // Takes up one queued call on the rendezvous thread: answers it (rv_due_, or
  // `after_commit` when the answer waits for a commit), registers its wait, or cancels one.
  // `stopping`: the coordinator is being destroyed, so nothing new waits.
  void TakeRendezvousCallLocked(RendezvousCall call, bool stopping,
                                std::vector<RendezvousAfterCommit>* after_commit);
  // Tells the rendezvous thread that rv_due_ or rv_waiters_ changed. Called with mu_ held.
  void WakeRendezvousThread();
  // Rendezvous thread body: takes up the queued calls, times out waiters and runs the
  // completions queued in rv_due_.
  void RendezvousLoop();

  Store* const store_;
  const Clock* const clock_;
  const CoordinatorOptions options_;

  std::mutex mu_;                    // guards the model below
  std::condition_variable changed_;  // notified after every change of an experiment
  std::vector<Experiment> experiments_;
  std::unordered_map<std::string, int32_t> experiment_by_id_;
  std::vector<Trial> trials_;
  std::unordered_map<std::string, int32_t> trial_by_id_;
  std::vector<RequirementClass> classes_;
  std::map<std::string, int32_t> class_by_key_;
  std::map<int64_t, Lease> leases_;                // open attempts by id
  std::unordered_map<int64_t, std::string> succeeded_attempts_;  // attempt -> worker
  std::map<std::string, Worker> workers_;          // by id
  std::set<int32_t> dirty_experiments_;            // versions newer than the store's
  int64_t next_attempt_id_ = 1;
  int64_t next_worker_seq_ = 1;

  // Heartbeats take hb_mu_ only, never mu_, so that they do not queue behind the calls
  // that change trials (docs/benchmarks.md, "Coordinator throughput"). Lock order: mu_,
  // then hb_mu_. The owner map mirrors leases_ and the worker set mirrors workers_; both
  // are changed only with mu_ and hb_mu_ held.
  struct Stamp {
    int64_t nanos = 0;  // on clock_
    double unix_s = 0;
  };
  std::mutex hb_mu_;
  std::unordered_set<std::string> hb_workers_;
  // attempt -> the worker of each rank ("" for a released rank)
  std::unordered_map<int64_t, std::vector<std::string>> hb_lease_owner_;
  std::unordered_map<RankKey, Stamp, RankKeyHash> hb_renewed_;  // rank -> latest renewal
  std::unordered_map<std::string, Stamp> hb_heard_;    // worker -> latest heartbeat

  // Group commit. commit_mu_ is taken after mu_ (never the other way round) or alone.
  std::mutex commit_mu_;
  std::condition_variable committed_;
  std::vector<StoreBatch> queue_;  // batches not yet handed to the store, oldest first
  int64_t enqueued_ = 0;           // tickets handed out
  int64_t durable_ = 0;            // tickets committed (or failed: see broken_)
  bool committing_ = false;        // a caller is inside store_->Apply
  absl::Status broken_;            // the failed commit, once one failed
  std::atomic<bool> broken_ok_{true};  // broken_.ok(), readable without commit_mu_
  // Callbacks of asynchronous calls by the ticket they wait for.
  std::multimap<int64_t, Callback<absl::Status>> waiters_;
  std::condition_variable commit_wanted_;  // waiters_ or stop_commits_ changed, or a commit ended
  bool stop_commits_ = false;
  std::thread commit_thread_;

  // Gang rendezvous, guarded by mu_. Blobs live in memory only.
  std::unordered_map<int64_t, std::string> rendezvous_;  // attempt -> published blob
  std::map<int64_t, RendezvousWaiter> rv_waiters_;       // by handle
  // Completions for the rendezvous thread to run without mu_.
  std::vector<std::pair<Callback<absl::StatusOr<Rendezvous>>, absl::StatusOr<Rendezvous>>>
      rv_due_;
  // Waiters of attempts that the change being made ended (ReleaseLease): answered (Aborted)
  // once that change is durable; Finish hands them to the commit with its ticket.
  std::vector<std::pair<Callback<absl::StatusOr<Rendezvous>>, absl::Status>> rv_ended_;
  std::thread rv_thread_;

  // The rendezvous thread's inbox. AwaitRendezvousAsync and CancelAwait run on gRPC's
  // callback threads, so they never take mu_ (held across store reads and long scans, for
  // as long as the store makes them wait): they only queue the call here, and the thread
  // takes it up under mu_. rv_in_mu_ is a leaf lock (taken alone or after mu_, nothing taken
  // while it is held), held only to queue, take or flag.
  std::mutex rv_in_mu_;
  std::condition_variable rv_in_cv_;   // rv_in_, rv_wake_ or stop_rv_ changed
  std::vector<RendezvousCall> rv_in_;  // in call order
  bool rv_wake_ = false;    // rv_due_ or rv_waiters_ changed since the thread last looked
  bool stop_rv_ = false;    // ~Impl: answer every call and waiter, then return
  bool rv_closed_ = false;  // the thread has returned: calls are answered by the caller
  std::atomic<int64_t> next_rv_handle_{1};
};

// --- bookkeeping ---

int32_t Coordinator::Impl::ClassFor(const TrialRequirements& requirements) {
  const std::string key = RequirementsKey(requirements);
  auto it = class_by_key_.find(key);
  if (it != class_by_key_.end()) return it->second;
  RequirementClass c;
  c.requirements = requirements;
  c.requirements.model_path = NormalizePath(requirements.model_path);
  classes_.push_back(std::move(c));
  const int32_t id = static_cast<int32_t>(classes_.size() - 1);
  class_by_key_.emplace(key, id);
  return id;
}

void Coordinator::Impl::SetTrialState(int32_t t, TrialState state, Op* op) {
  Trial& trial = trials_[t];
  Experiment& e = experiments_[trial.experiment];
  if (trial.state == TrialState::kPending) classes_[trial.klass].pending.erase(t);
  e.counts[static_cast<size_t>(trial.state)]--;
  trial.state = state;
  e.counts[static_cast<size_t>(state)]++;
  if (state == TrialState::kPending) classes_[trial.klass].pending.insert(t);
  op->experiments.insert(trial.experiment);
}

TrialChange Coordinator::Impl::MakeTrialChange(const Trial& t) const {
  TrialChange c;
  c.id = t.id;
  c.state = TrialStateName(t.state);
  c.current_attempt = t.current_attempt;
  c.attempt_count = t.attempt_count;
  c.requests_done = t.requests_done;
  c.requests_total = t.requests_total;
  c.elapsed_s = t.elapsed_s;
  c.error = t.error;
  return c;
}

void Coordinator::Impl::AddEvent(Op* op, const std::string& experiment_id,
                                 const std::string& trial_id, int64_t attempt_id,
                                 const std::string& kind, const std::string& message) {
  EventRow e;
  e.time_unix_s = op->now_unix_s;
  e.experiment_id = experiment_id;
  e.trial_id = trial_id;
  e.attempt_id = attempt_id;
  e.kind = kind;
  e.message = message;
  op->batch.events.push_back(std::move(e));
}

void Coordinator::Impl::ReleaseLease(int64_t attempt_id) {
  auto it = leases_.find(attempt_id);
  if (it == leases_.end()) return;
  const int32_t n = static_cast<int32_t>(it->second.ranks.size());
  for (const Hold& h : it->second.ranks) {
    auto w = workers_.find(h.worker_id);
    if (w != workers_.end()) w->second.attempts.erase(attempt_id);
  }
  const bool gang = it->second.gang();
  leases_.erase(it);
  {
    std::lock_guard<std::mutex> hb_lock(hb_mu_);
    hb_lease_owner_.erase(attempt_id);
    for (int32_t r = 0; r < n; ++r) hb_renewed_.erase(RankKey{attempt_id, r});
  }
  if (!gang) return;
  // The gang is over: its rendezvous goes, and whoever waits for it is told to stop, once
  // the change that ended it is durable (Finish hands them to the commit).
  rendezvous_.erase(attempt_id);
  for (auto w = rv_waiters_.begin(); w != rv_waiters_.end();) {
    if (w->second.attempt_id != attempt_id) {
      ++w;
      continue;
    }
    rv_ended_.emplace_back(std::move(w->second.done),
                           absl::AbortedError(absl::StrCat(
                               "gang attempt ", attempt_id,
                               " ended (a rank failed or its lease expired, the experiment was "
                               "cancelled, or the trial finished); stop this rank")));
    w = rv_waiters_.erase(w);
  }
}

Coordinator::Impl::Capacity Coordinator::Impl::CapacityOf(const Worker& w) const {
  Capacity cap;
  cap.gpu_busy.assign(w.caps.gpus.size(), false);
  for (int64_t a : w.attempts) {
    const Lease& lease = leases_.at(a);
    const int32_t r = lease.RankOf(w.id);
    if (r < 0) continue;
    const Hold& hold = lease.ranks[static_cast<size_t>(r)];
    if (hold.released) continue;
    if (hold.cpu) ++cap.cpu_running;
    for (int32_t g : hold.gpus) {
      for (size_t i = 0; i < w.caps.gpus.size(); ++i) {
        if (w.caps.gpus[i].index == g) cap.gpu_busy[i] = true;
      }
    }
  }
  return cap;
}

std::vector<int32_t> Coordinator::Impl::Take(const Worker& w, const TrialRequirements& r,
                                             Capacity* cap) const {
  std::vector<int32_t> gpus;
  if (r.backend != "cuda") {
    ++cap->cpu_running;
    return gpus;
  }
  for (size_t g = 0;
       g < w.caps.gpus.size() && static_cast<int32_t>(gpus.size()) < std::max(1, r.gpus); ++g) {
    if (cap->gpu_busy[g] || w.caps.gpus[g].memory_bytes < r.gpu_memory_bytes) continue;
    cap->gpu_busy[g] = true;
    gpus.push_back(w.caps.gpus[g].index);
  }
  return gpus;
}

std::vector<Coordinator::Impl::Worker*> Coordinator::Impl::FindFollowers(
    const std::string& except, const TrialRequirements& r, int32_t n, int64_t now) {
  std::vector<Worker*> out;
  std::vector<Worker*> sorted;
  for (auto& [id, w] : workers_) sorted.push_back(&w);
  std::sort(sorted.begin(), sorted.end(),
            [](const Worker* a, const Worker* b) { return a->seq < b->seq; });
  for (Worker* w : sorted) {
    if (static_cast<int32_t>(out.size()) >= n) break;
    if (w->id == except || !Alive(*w, now)) continue;
    const Capacity cap = CapacityOf(*w);
    if (Fits(*w, r, cap.gpu_busy, cap.cpu_running)) out.push_back(w);
  }
  return out;
}

namespace {

// What one rank of `r` needs, e.g. "a CPU trial slot" or "2 GPUs of 40.00 GiB, model /m".
std::string DescribeRank(const TrialRequirements& r) {
  std::string what;
  if (r.backend == "cuda") {
    const int32_t gpus = std::max(1, r.gpus);
    what = absl::StrCat(gpus, gpus == 1 ? " GPU" : " GPUs");
    if (r.gpu_memory_bytes > 0) absl::StrAppend(&what, " of ", FormatBytes(r.gpu_memory_bytes));
  } else {
    what = r.backend == "cpu" ? "a CPU trial slot" : absl::StrCat("backend ", r.backend);
  }
  if (r.cpu_threads > 0) absl::StrAppend(&what, ", ", r.cpu_threads, " CPU cores");
  if (!r.model_path.empty()) absl::StrAppend(&what, ", model ", r.model_path);
  return what;
}

}  // namespace

std::string Coordinator::Impl::GangWaitingReason(const TrialRequirements& r,
                                                 const Worker& driver,
                                                 const std::vector<Worker*>& followers,
                                                 int64_t now) const {
  const int32_t nodes = std::max(1, r.nodes);
  int32_t alive = 0;
  int32_t capable = 0;  // alive workers that could take a rank with nothing running
  for (const auto& [id, w] : workers_) {
    if (!Alive(w, now)) continue;
    ++alive;
    if (Fits(w, r, std::vector<bool>(w.caps.gpus.size(), false), 0)) ++capable;
  }
  const std::string need =
      absl::StrCat(nodes, " workers that can each take a rank (", DescribeRank(r), ")");
  if (alive < nodes) {
    return absl::StrCat("waiting for ", need, "; only ", alive,
                        alive == 1 ? " worker is" : " workers are", " alive, fewer than nodes=",
                        nodes, ": it cannot be placed until more workers register");
  }
  if (capable < nodes) {
    return absl::StrCat("waiting for ", need, "; only ", capable, " of the ", alive,
                        " alive workers could take a rank even when idle: it cannot be "
                        "placed until more such workers register");
  }
  constexpr size_t kMaxNames = 8;
  std::vector<std::string> names = {driver.id};
  for (const Worker* f : followers) {
    if (names.size() == kMaxNames) {
      names.push_back("...");
      break;
    }
    names.push_back(f->id);
  }
  return absl::StrCat("waiting for ", need, "; ", followers.size() + 1, " can now (",
                      absl::StrJoin(names, ", "), "), ", alive, " alive");
}

TrialAssignment Coordinator::Impl::MakeAssignment(const Lease& lease, int32_t rank) const {
  const Trial& t = trials_[lease.trial];
  TrialAssignment a;
  a.experiment_id = experiments_[t.experiment].id;
  a.trial_id = t.id;
  a.attempt_id = lease.attempt_id;
  a.attempt_number = lease.number;
  a.gpu_indices = lease.ranks[static_cast<size_t>(rank)].gpus;
  a.lease_seconds = options_.lease_seconds;
  if (lease.gang()) {
    GangPlacement g;
    g.gang_id = lease.gang_id;
    g.rank = rank;
    g.world_size = static_cast<int32_t>(lease.ranks.size());
    for (const Hold& h : lease.ranks) g.worker_ids.push_back(h.worker_id);
    const TrialRequirements& r = classes_[t.klass].requirements;
    g.gpus_per_rank = r.backend == "cuda" ? std::max(1, r.gpus) : 0;
    a.gang = std::move(g);
  }
  return a;
}

void Coordinator::Impl::AddLease(Lease lease) {
  std::vector<std::string> owners;
  for (const Hold& h : lease.ranks) {
    owners.push_back(h.released ? std::string() : h.worker_id);
    if (h.released) continue;
    auto w = workers_.find(h.worker_id);
    if (w != workers_.end()) w->second.attempts.insert(lease.attempt_id);
  }
  {
    std::lock_guard<std::mutex> hb_lock(hb_mu_);
    hb_lease_owner_[lease.attempt_id] = std::move(owners);
  }
  const int64_t id = lease.attempt_id;
  leases_.emplace(id, std::move(lease));
}

void Coordinator::Impl::FoldHeartbeats() {
  std::unordered_map<RankKey, Stamp, RankKeyHash> renewed;
  std::unordered_map<std::string, Stamp> heard;
  {
    std::lock_guard<std::mutex> hb_lock(hb_mu_);
    renewed.swap(hb_renewed_);
    heard.swap(hb_heard_);
  }
  for (const auto& [id, stamp] : heard) {
    auto w = workers_.find(id);
    if (w == workers_.end() || stamp.nanos < w->second.last_heard_nanos) continue;
    w->second.heard = true;
    w->second.last_heard_nanos = stamp.nanos;
    w->second.last_heartbeat_unix_s = stamp.unix_s;
    w->second.heartbeat_dirty = true;
  }
  for (const auto& [key, stamp] : renewed) {
    auto lease = leases_.find(key.attempt);
    if (lease == leases_.end() || key.rank < 0 ||
        static_cast<size_t>(key.rank) >= lease->second.ranks.size()) {
      continue;
    }
    Hold& hold = lease->second.ranks[static_cast<size_t>(key.rank)];
    if (stamp.nanos < hold.renewed_nanos) continue;
    hold.renewed_nanos = stamp.nanos;
    hold.renewed_unix_s = stamp.unix_s;
  }
}

ExperimentState Coordinator::Impl::Derive(const Experiment& e) {
  auto count = [&](TrialState s) { return e.counts[static_cast<size_t>(s)]; };
  if (count(TrialState::kPending) + count(TrialState::kLeased) + count(TrialState::kRunning) > 0) {
    return ExperimentState::kRunning;
  }
  if (count(TrialState::kSucceeded) == static_cast<int64_t>(e.trials.size())) {
    return ExperimentState::kSucceeded;
  }
  if (count(TrialState::kFailed) > 0) return ExperimentState::kFailed;
  return ExperimentState::kCancelled;
}

ExperimentInfo Coordinator::Impl::MakeInfo(const Experiment& e) const {
  ExperimentInfo info;
  info.experiment_id = e.id;
  info.name = e.name;
  info.state = e.state;
  info.created_unix_s = e.created_unix_s;
  info.num_trials = static_cast<int64_t>(e.trials.size());
  info.pending = e.counts[static_cast<size_t>(TrialState::kPending)];
  info.leased = e.counts[static_cast<size_t>(TrialState::kLeased)];
  info.running = e.counts[static_cast<size_t>(TrialState::kRunning)];
  info.succeeded = e.counts[static_cast<size_t>(TrialState::kSucceeded)];
  info.failed = e.counts[static_cast<size_t>(TrialState::kFailed)];
  info.cancelled = e.counts[static_cast<size_t>(TrialState::kCancelled)];
  info.version = e.version;
  return info;
}

int64_t Coordinator::Impl::Finish(Op* op) {
  for (int32_t x : op->experiments) {
    Experiment& e = experiments_[x];
    e.version++;
    const ExperimentState state = Derive(e);
    if (state != e.state) {
      e.state = state;
      if (state != ExperimentState::kRunning) {
        AddEvent(op, e.id, "", 0, "finish",
                 absl::StrCat("experiment ", ExperimentStateName(state), ": ",
                              e.counts[static_cast<size_t>(TrialState::kSucceeded)],
                              " succeeded, ", e.counts[static_cast<size_t>(TrialState::kFailed)],
                              " failed, ",
                              e.counts[static_cast<size_t>(TrialState::kCancelled)],
                              " cancelled"));
      }
    }
    op->batch.experiment_changes.push_back({e.id, ExperimentStateName(e.state), e.version});
    dirty_experiments_.erase(x);
  }
  if (!op->experiments.empty()) changed_.notify_all();
  if (op->batch.empty()) {
    // Nothing to wait for: the rendezvous thread answers the ended waiters (if any).
    if (!rv_ended_.empty()) {
      for (auto& [done, outcome] : rv_ended_) rv_due_.emplace_back(std::move(done), outcome);
      rv_ended_.clear();
      WakeRendezvousThread();
    }
    return 0;
  }
  std::lock_guard<std::mutex> lock(commit_mu_);
  queue_.push_back(std::move(op->batch));
  const int64_t ticket = ++enqueued_;
  // Waiters of gang attempts this change ended hear Aborted once it is durable (or the
  // commit's error), like any asynchronous caller.
  if (!rv_ended_.empty()) {
    for (auto& [done, outcome] : rv_ended_) {
      waiters_.emplace(ticket, [done = std::move(done), outcome](absl::Status s) {
        done(s.ok() ? absl::StatusOr<Rendezvous>(outcome) : absl::StatusOr<Rendezvous>(s));
      });
    }
    rv_ended_.clear();
    commit_wanted_.notify_one();
  }
  return ticket;
}

int64_t Coordinator::Impl::LastTicket() {
  std::lock_guard<std::mutex> lock(commit_mu_);
  return enqueued_;
}

absl::Status Coordinator::Impl::WaitDurable(int64_t ticket) {
  std::unique_lock<std::mutex> lock(commit_mu_);
  while (durable_ < ticket) {
    if (committing_) {
      committed_.wait(lock);
      continue;
    }
    CommitRound(lock);  // lead one (group commit: one fsync for many calls)
  }
  return BrokenStatus();
}

void Coordinator::Impl::CommitRound(std::unique_lock<std::mutex>& lock) {
  committing_ = true;
  std::vector<StoreBatch> batches = std::move(queue_);
  queue_.clear();
  const int64_t last = enqueued_;
  lock.unlock();
  StoreBatch merged = std::move(batches.front());
  for (size_t i = 1; i < batches.size(); ++i) merged.Append(std::move(batches[i]));
  absl::Status status = broken_ok_.load() ? store_->Apply(merged) : absl::OkStatus();
  lock.lock();
  committing_ = false;
  if (!status.ok() && broken_.ok()) {
    broken_ = status;
    broken_ok_.store(false);
  }
  durable_ = last;
  committed_.notify_all();
  commit_wanted_.notify_one();
  if (waiters_.empty() || waiters_.begin()->first > durable_) return;
  std::vector<Callback<absl::Status>> due;
  const auto end = waiters_.upper_bound(durable_);
  for (auto it = waiters_.begin(); it != end; ++it) due.push_back(std::move(it->second));
  waiters_.erase(waiters_.begin(), end);
  const absl::Status outcome = BrokenStatus();
  lock.unlock();
  for (Callback<absl::Status>& done : due) done(outcome);
  lock.lock();
}

void Coordinator::Impl::WhenDurable(int64_t ticket, Callback<absl::Status> done) {
  absl::Status outcome;
  {
    std::lock_guard<std::mutex> lock(commit_mu_);
    if (durable_ < ticket) {
      waiters_.emplace(ticket, std::move(done));
      commit_wanted_.notify_one();
      return;
    }
    outcome = BrokenStatus();
  }
  done(outcome);
}

void Coordinator::Impl::CommitLoop() {
  LowerThisThreadPriority(options_.commit_thread_nice);
  std::unique_lock<std::mutex> lock(commit_mu_);
  for (;;) {
    // Due: a callback waits on a batch that nobody is committing. (A batch being committed
    // by someone else is followed by a notify when that commit ends.)
    const bool due = !committing_ && !queue_.empty() && !waiters_.empty() &&
                     waiters_.begin()->first > durable_;
    if (due) {
      CommitRound(lock);
      continue;
    }
    if (stop_commits_ && waiters_.empty() && !committing_) return;
    commit_wanted_.wait(lock);
  }
}

void Coordinator::Impl::StartCommitThread() {
  commit_thread_ = std::thread([this] { CommitLoop(); });
  rv_thread_ = std::thread([this] { RendezvousLoop(); });
}

Coordinator::Impl::~Impl() {
  // The rendezvous thread first: it answers the waiters still there and may queue commits.
  {
    std::lock_guard<std::mutex> in(rv_in_mu_);
    stop_rv_ = true;
  }
  rv_in_cv_.notify_one();
  if (rv_thread_.joinable()) rv_thread_.join();
  {
    std::lock_guard<std::mutex> lock(commit_mu_);
    stop_commits_ = true;
  }
  commit_wanted_.notify_all();
  if (commit_thread_.joinable()) commit_thread_.join();
}

void Coordinator::Impl::FlushSoftState(Op* op) {
  for (auto& [id, w] : workers_) {
    if (!w.heartbeat_dirty) continue;
    op->batch.worker_heartbeats.emplace_back(id, w.last_heartbeat_unix_s);
    w.heartbeat_dirty = false;
  }
  for (auto& [id, lease] : leases_) {
    Trial& t = trials_[lease.trial];
    if (!t.progress_dirty) continue;
    op->batch.trial_changes.push_back(MakeTrialChange(t));
    t.progress_dirty = false;
  }
  for (int32_t x : dirty_experiments_) {
    if (op->experiments.count(x) != 0) continue;  // Finish writes it
    const Experiment& e = experiments_[x];
    op->batch.experiment_changes.push_back({e.id, ExperimentStateName(e.state), e.version});
  }
  dirty_experiments_.clear();
}

// --- restart ---

absl::Status Coordinator::Impl::Load() {
  std::lock_guard<std::mutex> lock(mu_);
  KVSCOPE_ASSIGN_OR_RETURN(std::vector<ExperimentRow> experiments, store_->LoadExperiments());
  for (const ExperimentRow& row : experiments) {
    Experiment e;
    e.id = row.id;
    e.name = row.name;
    e.created_unix_s = row.created_unix_s;
    e.state = ExperimentStateFromName(row.state).value_or(ExperimentState::kRunning);
    e.version = row.version;
    experiment_by_id_.emplace(e.id, static_cast<int32_t>(experiments_.size()));
    experiments_.push_back(std::move(e));
  }
  KVSCOPE_ASSIGN_OR_RETURN(std::vector<TrialRow> trials, store_->LoadTrialStates());
  trials_.reserve(trials.size());
  for (TrialRow& row : trials) {
    auto e = experiment_by_id_.find(row.experiment_id);
    std::optional<TrialState> state = TrialStateFromName(row.state);
    if (e == experiment_by_id_.end() || !state) {
      return absl::DataLossError(absl::StrCat("store ", store_->path(), ": trial ", row.id,
                                              " has experiment ", row.experiment_id,
                                              " and state \"", row.state, "\""));
    }
    Trial t;
    t.id = std::move(row.id);
    t.experiment = e->second;
    t.index = row.index;
    t.state = *state;
    t.current_attempt = row.current_attempt;
    t.attempt_count = row.attempt_count;
    t.max_attempts = row.max_attempts;
    t.klass = ClassFor(row.requirements);
    t.requests_done = row.requests_done;
    t.requests_total = row.requests_total;
    t.elapsed_s = row.elapsed_s;
    t.error = std::move(row.error);
    const int32_t index = static_cast<int32_t>(trials_.size());
    Experiment& x = experiments_[t.experiment];
    x.counts[static_cast<size_t>(t.state)]++;
    x.trials.push_back(index);
    if (t.state == TrialState::kPending) classes_[t.klass].pending.insert(index);
    trial_by_id_.emplace(t.id, index);
    trials_.push_back(std::move(t));
  }
  KVSCOPE_ASSIGN_OR_RETURN(std::vector<WorkerRow> workers, store_->LoadWorkers());
  for (const WorkerRow& row : workers) {
    Worker w;
    w.id = row.id;
    w.seq = row.seq;
    w.caps = CapabilitiesFromJson(row.capabilities);
    w.registered_unix_s = row.registered_unix_s;
    w.last_heartbeat_unix_s = row.last_heartbeat_unix_s;
    next_worker_seq_ = std::max(next_worker_seq_, row.seq + 1);
    {
      std::lock_guard<std::mutex> hb_lock(hb_mu_);
      hb_workers_.insert(w.id);
    }
    workers_.emplace(w.id, std::move(w));
  }
  // Every open lease gets a fresh full period, so its worker has time to reconnect.
  const int64_t now = clock_->NowNanos();
  const double now_unix_s = WallNow();
  KVSCOPE_ASSIGN_OR_RETURN(std::vector<AttemptRow> open, store_->LoadOpenAttempts());
  KVSCOPE_ASSIGN_OR_RETURN(std::vector<AttemptRankRow> open_ranks,
                           store_->LoadOpenAttemptRanks());
  std::map<int64_t, Lease> loaded;
  for (const AttemptRow& row : open) {
    auto t = trial_by_id_.find(row.trial_id);
    if (t == trial_by_id_.end()) continue;
    Lease lease;
    lease.attempt_id = row.id;
    lease.trial = t->second;
    lease.number = row.number;
    lease.running = row.state == "running";
    const bool cpu = classes_[trials_[t->second].klass].requirements.backend != "cuda";
    lease.ranks.resize(static_cast<size_t>(std::max(1, row.world_size)));
    for (Hold& h : lease.ranks) {
      h.cpu = cpu;
      h.renewed_nanos = now;
      h.renewed_unix_s = now_unix_s;
    }
    lease.ranks[0].worker_id = row.worker_id;
    lease.ranks[0].gpus = row.gpu_indices;
    lease.gang_id = row.gang_id;
    // The rendezvous of a gang in flight was in the old process's memory only.
    lease.recovered = lease.gang();
    lease.recovered_nanos = now;
    loaded.emplace(row.id, std::move(lease));
  }
  for (const AttemptRankRow& row : open_ranks) {
    auto lease = loaded.find(row.attempt_id);
    if (lease == loaded.end()) continue;
    if (row.rank < 1 || static_cast<size_t>(row.rank) >= lease->second.ranks.size()) {
      return absl::DataLossError(absl::StrCat("store ", store_->path(), ": attempt ",
                                              row.attempt_id, " has a rank ", row.rank,
                                              " outside its world size ",
                                              lease->second.ranks.size()));
    }
    Hold& h = lease->second.ranks[static_cast<size_t>(row.rank)];
    h.worker_id = row.worker_id;
    h.gpus = row.gpu_indices;
    h.delivered = row.state != "placed";
    h.released = row.state == "released";
  }
  for (auto& [id, lease] : loaded) {
    for (size_t r = 1; r < lease.ranks.size(); ++r) {
      if (lease.ranks[r].worker_id.empty()) {
        return absl::DataLossError(absl::StrCat("store ", store_->path(), ": gang attempt ", id,
                                                " has no row for its rank ", r));
      }
    }
    AddLease(std::move(lease));
  }
  KVSCOPE_ASSIGN_OR_RETURN(int64_t max_attempt, store_->MaxAttemptId());
  next_attempt_id_ = max_attempt + 1;
  return absl::OkStatus();
}

// --- client API ---

absl::StatusOr<std::string> Coordinator::Impl::SubmitParsed(const Sweep& sweep,
                                                            const std::string& sweep_yaml,
                                                            const std::string& source) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    KVSCOPE_RETURN_IF_ERROR(CheckUsable());
  }
  const int32_t max_attempts =
      sweep.max_attempts > 0 ? sweep.max_attempts : std::max(1, options_.default_max_attempts);
  const double now_unix_s = WallNow();
  ExperimentRow row;
  row.name = sweep.name;
  row.source = source;
  row.sweep_yaml = sweep_yaml;
  row.axis_names = sweep.axis_names;
  row.max_attempts = max_attempts;
  row.version = 1;
  row.created_unix_s = now_unix_s;
  std::vector<TrialRow> trials;
  trials.reserve(sweep.trials.size());
  for (const TrialSpec& spec : sweep.trials) {
    TrialRow t;
    t.index = spec.index;
    t.repeat = spec.repeat;
    t.seed = spec.seed;
    t.axes = spec.axes;
    t.label = spec.label;
    t.config_yaml = spec.config_yaml;
    t.requirements = spec.requirements;
    t.state = TrialStateName(TrialState::kPending);
    t.max_attempts = max_attempts;
    trials.push_back(std::move(t));
  }
  // An experiment without trials is finished at once.
  row.state = ExperimentStateName(trials.empty() ? ExperimentState::kSucceeded
                                                 : ExperimentState::kRunning);
  EventRow event;
  event.time_unix_s = now_unix_s;
  event.kind = "submit";
  event.message = absl::StrCat("submitted \"", sweep.name, "\" from ", source, ": ",
                               trials.size(), " trials, max_attempts ", max_attempts);
  // The big insert runs without mu_: nobody knows the new ids until it is done.
  KVSCOPE_ASSIGN_OR_RETURN(std::string id, store_->InsertExperiment(row, trials, event));

  std::lock_guard<std::mutex> lock(mu_);
  Experiment e;
  e.id = id;
  e.name = sweep.name;
  e.created_unix_s = now_unix_s;
  e.state = *ExperimentStateFromName(row.state);
  e.version = 1;
  const int32_t x = static_cast<int32_t>(experiments_.size());
  e.counts[static_cast<size_t>(TrialState::kPending)] = static_cast<int64_t>(trials.size());
  for (const TrialRow& row_t : trials) {
    Trial t;
    t.id = MakeTrialId(id, row_t.index);
    t.experiment = x;
    t.index = row_t.index;
    t.max_attempts = max_attempts;
    t.klass = ClassFor(row_t.requirements);
    const int32_t index = static_cast<int32_t>(trials_.size());
    e.trials.push_back(index);
    classes_[t.klass].pending.insert(index);
    trial_by_id_.emplace(t.id, index);
    trials_.push_back(std::move(t));
  }
  experiment_by_id_.emplace(id, x);
  experiments_.push_back(std::move(e));
  changed_.notify_all();
  return id;
}

absl::StatusOr<ExperimentInfo> Coordinator::Impl::GetExperiment(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = experiment_by_id_.find(id);
  if (it == experiment_by_id_.end()) return absl::NotFoundError(absl::StrCat("no experiment ", id));
  return MakeInfo(experiments_[it->second]);
}

absl::StatusOr<std::vector<ExperimentInfo>> Coordinator::Impl::ListExperiments() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ExperimentInfo> out;
  out.reserve(experiments_.size());
  for (const Experiment& e : experiments_) out.push_back(MakeInfo(e));
  return out;
}

absl::StatusOr<std::vector<TrialInfo>> Coordinator::Impl::ListTrials(const std::string& id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (experiment_by_id_.count(id) == 0) {
      return absl::NotFoundError(absl::StrCat("no experiment ", id));
    }
  }
  // Memory may be ahead of the store (a change whose commit is still queued); read the
  // store only once it holds every change this caller could have seen in memory.
  KVSCOPE_RETURN_IF_ERROR(WaitDurable(LastTicket()));
  KVSCOPE_ASSIGN_OR_RETURN(std::vector<TrialRow> rows, store_->ListTrials(id));
  KVSCOPE_ASSIGN_OR_RETURN(std::vector<AttemptRow> attempts, store_->ListAttempts(id));
  std::vector<TrialInfo> out;
  out.reserve(rows.size());
  std::unordered_map<std::string, size_t> position;
  for (TrialRow& row : rows) {
    TrialInfo info;
    info.trial_id = row.id;
    info.index = row.index;
    info.repeat = row.repeat;
    info.axes = std::move(row.axes);
    info.label = std::move(row.label);
    info.state = TrialStateFromName(row.state).value_or(TrialState::kPending);
    info.requests_done = row.requests_done;
    info.requests_total = row.requests_total;
    info.elapsed_s = row.elapsed_s;
    info.error = std::move(row.error);
    position.emplace(info.trial_id, out.size());
    out.push_back(std::move(info));
  }
  for (AttemptRow& a : attempts) {
    auto p = position.find(a.trial_id);
    if (p == position.end()) continue;
    AttemptInfo info;
    info.attempt_id = a.id;
    info.number = a.number;
    info.worker_id = std::move(a.worker_id);
    info.state = std::move(a.state);
    info.error = std::move(a.error);
    info.started_unix_s = a.started_unix_s;
    info.finished_unix_s = a.finished_unix_s;
    out[p->second].attempts.push_back(std::move(info));
  }
  // Memory is newer than the store for progress (written about once a second).
  std::lock_guard<std::mutex> lock(mu_);
  for (TrialInfo& info : out) {
    auto t = trial_by_id_.find(info.trial_id);
    if (t == trial_by_id_.end()) continue;
    const Trial& trial = trials_[t->second];
    if (trial.state != info.state) continue;  // changed since the read; keep the snapshot
    info.requests_done = trial.requests_done;
    info.requests_total = trial.requests_total;
    info.elapsed_s = trial.elapsed_s;
    if (trial.state == TrialState::kPending) info.waiting = classes_[trial.klass].waiting;
  }
  return out;
}

absl::StatusOr<std::vector<TrialResult>> Coordinator::Impl::Results(const std::string& id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (experiment_by_id_.count(id) == 0) {
      return absl::NotFoundError(absl::StrCat("no experiment ", id));
    }
  }
  KVSCOPE_RETURN_IF_ERROR(WaitDurable(LastTicket()));  // as in ListTrials
  KVSCOPE_ASSIGN_OR_RETURN(std::vector<ResultRecord> rows, store_->ListResults(id));
  std::vector<TrialResult> out;
  out.reserve(rows.size());
  for (ResultRecord& row : rows) {
    TrialResult r;
    r.trial_id = std::move(row.trial_id);
    r.attempt_id = row.attempt_id;
    r.result = nlohmann::json::parse(row.result_json, nullptr, /*allow_exceptions=*/false);
    if (r.result.is_discarded()) {
      return absl::DataLossError(absl::StrCat("store ", store_->path(), ": the result of trial ",
                                              r.trial_id, " is not valid JSON"));
    }
    r.requests_jsonl = std::move(row.requests_jsonl);
    out.push_back(std::move(r));
  }
  return out;
}

absl::Status Coordinator::Impl::CancelLocked(const std::string& id, int64_t* ticket) {
  KVSCOPE_RETURN_IF_ERROR(CheckUsable());
  auto it = experiment_by_id_.find(id);
  if (it == experiment_by_id_.end()) return absl::NotFoundError(absl::StrCat("no experiment ", id));
  Op op;
  int64_t pending = 0, active = 0;
  for (int32_t t : experiments_[it->second].trials) {
    Trial& trial = trials_[t];
    if (!Unfinished(trial.state)) continue;
    if (trial.state == TrialState::kPending) {
      ++pending;
    } else {
      ++active;
      auto lease = leases_.find(trial.current_attempt);
      if (lease != leases_.end()) {
        AttemptChange a;
        a.id = lease->first;
        a.state = "cancelled";
        a.error = "experiment cancelled";
        a.lease_renewed_unix_s = lease->second.ranks[0].renewed_unix_s;
        a.finished_unix_s = op.now_unix_s;
        op.batch.attempt_changes.push_back(std::move(a));
        AddEvent(&op, id, trial.id, lease->first, "cancel",
                 absl::StrCat("attempt ", lease->second.number, " on ", lease->second.worker_id(),
                              lease->second.gang() ? " (and the other ranks of its gang)" : "",
                              " is stopped at the worker's next heartbeat"));
        ReleaseLease(trial.current_attempt);
      }
    }
    SetTrialState(t, TrialState::kCancelled, &op);
    trial.progress_dirty = false;
    op.batch.trial_changes.push_back(MakeTrialChange(trial));
  }
  if (pending + active == 0) return absl::OkStatus();  // already finished
  AddEvent(&op, id, "", 0, "cancel",
           absl::StrCat("cancelled ", pending, " pending and ", active,
                        " leased or running trials"));
  *ticket = Finish(&op);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<WorkerInfo>> Coordinator::Impl::ListWorkers() {
  std::lock_guard<std::mutex> lock(mu_);
  FoldHeartbeats();
  const int64_t now = clock_->NowNanos();
  std::vector<const Worker*> sorted;
  for (const auto& [id, w] : workers_) sorted.push_back(&w);
  std::sort(sorted.begin(), sorted.end(),
            [](const Worker* a, const Worker* b) { return a->seq < b->seq; });
  std::vector<WorkerInfo> out;
  for (const Worker* w : sorted) {
    WorkerInfo info;
    info.worker_id = w->id;
    info.capabilities = w->caps;
    info.alive = w->heard && static_cast<double>(now - w->last_heard_nanos) * 1e-9 <
                                 options_.lease_seconds;
    info.last_heartbeat_unix_s = w->last_heartbeat_unix_s;
    for (int64_t a : w->attempts) {
      auto lease = leases_.find(a);
      if (lease != leases_.end()) info.running_trials.push_back(trials_[lease->second.trial].id);
    }
    out.push_back(std::move(info));
  }
  return out;
}

absl::StatusOr<ExperimentInfo> Coordinator::Impl::WaitForChange(const std::string& id,
                                                                int64_t after_version,
                                                                double timeout_seconds) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = experiment_by_id_.find(id);
  if (it == experiment_by_id_.end()) return absl::NotFoundError(absl::StrCat("no experiment ", id));
  const int32_t x = it->second;
  changed_.wait_for(lock, std::chrono::duration<double>(std::max(0.0, timeout_seconds)),
                    [&] { return experiments_[x].version > after_version; });
  return MakeInfo(experiments_[x]);
}

// --- worker API ---

absl::StatusOr<std::string> Coordinator::Impl::RegisterWorkerLocked(
    const WorkerCapabilities& capabilities, const std::string& worker_id, int64_t* ticket) {
  KVSCOPE_RETURN_IF_ERROR(CheckUsable());
  Op op;
  Worker* w = nullptr;
  auto it = worker_id.empty() ? workers_.end() : workers_.find(worker_id);
  const bool known = it != workers_.end();
  if (known) {
    w = &it->second;
  } else {
    Worker fresh;
    fresh.seq = next_worker_seq_;
    fresh.id = absl::StrCat("w", fresh.seq);
    fresh.registered_unix_s = op.now_unix_s;
    w = &workers_.emplace(fresh.id, std::move(fresh)).first->second;
    std::lock_guard<std::mutex> hb_lock(hb_mu_);
    hb_workers_.insert(w->id);
  }
  WorkerRow row;
  row.id = w->id;
  row.seq = w->seq;
  row.capabilities = CapabilitiesToJson(capabilities);
  row.registered_unix_s = w->registered_unix_s;
  row.last_heartbeat_unix_s = op.now_unix_s;
  op.batch.upsert_workers.push_back(row);
  AddEvent(&op, "", "", 0, "register",
           absl::StrCat(known ? "worker re-registered: " : "worker registered: ", w->id, " (",
                        capabilities.hostname, ", ", capabilities.gpus.size(), " GPUs, ",
                        capabilities.cpu_cores, " cores)"));
  *ticket = Finish(&op);
  if (!known) ++next_worker_seq_;
  w->caps = capabilities;
  w->heard = true;
  w->last_heard_nanos = clock_->NowNanos();
  w->last_heartbeat_unix_s = op.now_unix_s;
  w->heartbeat_dirty = false;
  return w->id;
}

absl::StatusOr<HeartbeatReply> Coordinator::Impl::Heartbeat(
    const std::string& worker_id, const std::vector<int64_t>& running_attempts) {
  const Stamp now{clock_->NowNanos(), WallNow()};
  std::lock_guard<std::mutex> lock(hb_mu_);  // not mu_: see hb_mu_
  if (hb_workers_.count(worker_id) == 0) {
    return absl::NotFoundError(absl::StrCat("unknown worker ", worker_id, "; register again"));
  }
  hb_heard_[worker_id] = now;
  HeartbeatReply reply;
  for (int64_t a : running_attempts) {
    auto owner = hb_lease_owner_.find(a);
    int32_t rank = -1;
    if (owner != hb_lease_owner_.end()) {
      for (size_t r = 0; r < owner->second.size(); ++r) {
        if (owner->second[r] == worker_id) rank = static_cast<int32_t>(r);
      }
    }
    if (rank < 0) {
      reply.stop_attempts.push_back(a);
      continue;
    }
    hb_renewed_[RankKey{a, rank}] = now;
  }
  return reply;
}

bool Coordinator::Impl::Fits(const Worker& w, const TrialRequirements& r,
                             const std::vector<bool>& gpu_busy, int32_t cpu_running) const {
  const WorkerCapabilities& c = w.caps;
  auto has_backend = [&](const std::string& b) {
    if (c.backends.empty()) return b == "cpu";
    return std::find(c.backends.begin(), c.backends.end(), b) != c.backends.end();
  };
  if (!has_backend(r.backend)) return false;
  if (r.cpu_threads > 0 && c.cpu_cores > 0 && c.cpu_cores < r.cpu_threads) return false;
  if (!r.model_path.empty()) {
    bool found = false;
    for (const std::string& m : c.models) found = found || NormalizePath(m) == r.model_path;
    if (!found) return false;
  }
  if (r.backend == "cuda") {
    int32_t free = 0;
    for (size_t g = 0; g < c.gpus.size(); ++g) {
      if (!gpu_busy[g] && c.gpus[g].memory_bytes >= r.gpu_memory_bytes) ++free;
    }
    return free >= std::max(1, r.gpus);
  }
  return cpu_running < std::max(1, c.max_cpu_trials);
}

absl::StatusOr<std::vector<TrialAssignment>> Coordinator::Impl::AcquireTrialsLocked(
    const std::string& worker_id, int32_t max_trials, int64_t* ticket) {
  KVSCOPE_RETURN_IF_ERROR(CheckUsable());
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) {
    return absl::NotFoundError(absl::StrCat("unknown worker ", worker_id, "; register again"));
  }
  Worker& w = it->second;
  const int64_t now = clock_->NowNanos();
  FoldHeartbeats();  // liveness of the workers a gang may use
  w.heard = true;
  w.last_heard_nanos = now;
  Capacity cap = CapacityOf(w);
  Op op;
  std::vector<TrialAssignment> out;
  // First the ranks > 0 of gangs placed earlier that hold capacity here, not yet handed out.
  for (int64_t a : w.attempts) {
    if (static_cast<int32_t>(out.size()) >= max_trials) break;
    Lease& lease = leases_.at(a);
    const int32_t r = lease.RankOf(worker_id);
    if (r <= 0) continue;
    Hold& hold = lease.ranks[static_cast<size_t>(r)];
    if (hold.delivered || hold.released) continue;
    hold.delivered = true;
    hold.renewed_nanos = now;
    hold.renewed_unix_s = op.now_unix_s;
    op.batch.attempt_rank_changes.push_back({a, r, "delivered"});
    out.push_back(MakeAssignment(lease, r));
  }
  while (static_cast<int32_t>(out.size()) < max_trials) {
    // The oldest pending trial among the classes that fit; a gang fits when `nodes` - 1
    // other alive workers can take a rank each now.
    int32_t best_class = -1;
    int32_t best_trial = 0;
    std::vector<Worker*> best_followers;
    for (size_t k = 0; k < classes_.size(); ++k) {
      RequirementClass& c = classes_[k];
      if (c.pending.empty()) continue;
      const int32_t head = *c.pending.begin();
      if (best_class >= 0 && head > best_trial) continue;
      if (!Fits(w, c.requirements, cap.gpu_busy, cap.cpu_running)) continue;
      std::vector<Worker*> followers;
      const int32_t nodes = std::max(1, c.requirements.nodes);
      if (nodes > 1) {
        followers = FindFollowers(worker_id, c.requirements, nodes - 1, now);
        if (static_cast<int32_t>(followers.size()) < nodes - 1) {
          c.waiting = GangWaitingReason(c.requirements, w, followers, now);
          continue;
        }
      }
      best_class = static_cast<int32_t>(k);
      best_trial = head;
      best_followers = std::move(followers);
    }
    if (best_class < 0) break;
    classes_[best_class].waiting.clear();
    const TrialRequirements& r = classes_[best_class].requirements;
    Lease lease;
    lease.attempt_id = next_attempt_id_++;
    lease.trial = best_trial;
    Hold driver;
    driver.worker_id = worker_id;
    driver.cpu = r.backend != "cuda";
    driver.renewed_nanos = now;
    driver.renewed_unix_s = op.now_unix_s;
    driver.gpus = Take(w, r, &cap);
    lease.ranks.push_back(std::move(driver));
    for (Worker* f : best_followers) {
      Capacity fcap = CapacityOf(*f);
      Hold hold;
      hold.worker_id = f->id;
      hold.cpu = r.backend != "cuda";
      hold.renewed_nanos = now;
      hold.renewed_unix_s = op.now_unix_s;
      hold.gpus = Take(*f, r, &fcap);
      hold.delivered = false;
      lease.ranks.push_back(std::move(hold));
    }
    Trial& t = trials_[best_trial];
    if (lease.gang()) lease.gang_id = absl::StrCat(t.id, ".g", lease.attempt_id);
    t.current_attempt = lease.attempt_id;
    t.attempt_count++;
    t.requests_done = t.requests_total = 0;
    t.elapsed_s = 0;
    t.progress_dirty = false;
    lease.number = t.attempt_count;
    SetTrialState(best_trial, TrialState::kLeased, &op);
    op.batch.trial_changes.push_back(MakeTrialChange(t));
    AttemptRow row;
    row.id = lease.attempt_id;
    row.trial_id = t.id;
    row.number = lease.number;
    row.worker_id = worker_id;
    row.gpu_indices = lease.ranks[0].gpus;
    row.state = "leased";
    row.lease_renewed_unix_s = op.now_unix_s;
    row.started_unix_s = op.now_unix_s;
    row.gang_id = lease.gang_id;
    row.world_size = static_cast<int32_t>(lease.ranks.size());
    op.batch.insert_attempts.push_back(std::move(row));
    std::vector<std::string> where;
    for (size_t k = 0; k < lease.ranks.size(); ++k) {
      const Hold& h = lease.ranks[k];
      if (k > 0) {
        AttemptRankRow rank_row;
        rank_row.attempt_id = lease.attempt_id;
        rank_row.rank = static_cast<int32_t>(k);
        rank_row.worker_id = h.worker_id;
        rank_row.gpu_indices = h.gpus;
        rank_row.state = "placed";
        op.batch.insert_attempt_ranks.push_back(std::move(rank_row));
      }
      where.push_back(absl::StrCat(lease.gang() ? absl::StrCat("rank ", k, " on ") : "",
                                   h.worker_id, h.gpus.empty() ? "" : " on GPUs ",
                                   absl::StrJoin(h.gpus, ",")));
    }
    const Experiment& e = experiments_[t.experiment];
    AddEvent(&op, e.id, t.id, lease.attempt_id, "lease",
             absl::StrCat("attempt ", lease.number, " leased to ",
                          lease.gang() ? absl::StrCat("a gang of ", lease.ranks.size(), " (",
                                                      lease.gang_id, "): ")
                                       : "",
                          absl::StrJoin(where, ", ")));
    out.push_back(MakeAssignment(lease, 0));
    AddLease(std::move(lease));
  }
  if (out.empty()) return out;
  *ticket = Finish(&op);
  return out;
}

absl::Status Coordinator::Impl::CheckGang(int64_t attempt_id,
                                          const std::string& attempt_gang_id,
                                          const std::string& gang_id) {
  if (attempt_gang_id.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("attempt ", attempt_id, " is not a gang; it has no rendezvous"));
  }
  if (gang_id != attempt_gang_id) {
    // The attempt's own gang id is not named: the caller may be any registered worker.
    return absl::FailedPreconditionError(absl::StrCat(
        "stale gang ", gang_id, ": attempt ", attempt_id,
        " belongs to another gang; stop this rank (a retried trial runs under a new gang id)"));
  }
  return absl::OkStatus();
}

absl::Status Coordinator::Impl::NotRankError(const std::string& worker_id, int32_t rank,
                                             const std::string& gang_id) {
  return absl::FailedPreconditionError(
      absl::StrCat("worker ", worker_id, " is not rank ", rank, " of gang ", gang_id,
                   "; ask with the worker_id and rank of this worker's own assignment"));
}

absl::Status Coordinator::Impl::StaleError(int64_t attempt_id) {
  KVSCOPE_ASSIGN_OR_RETURN(std::optional<AttemptRow> row, store_->GetAttempt(attempt_id));
  if (!row) return absl::NotFoundError(absl::StrCat("unknown attempt ", attempt_id));
  std::string current;
  auto t = trial_by_id_.find(row->trial_id);
  if (t != trial_by_id_.end()) {
    const Trial& trial = trials_[t->second];
    current = absl::StrCat("; the trial is ", TrialStateName(trial.state));
    if (trial.current_attempt != attempt_id && trial.current_attempt != 0) {
      absl::StrAppend(&current, " with attempt ", trial.current_attempt, " (number ",
                      trial.attempt_count, ")");
    }
  }
  return absl::FailedPreconditionError(
      absl::StrCat("stale attempt ", attempt_id, " (number ", row->number, " of trial ",
                   row->trial_id, " on ", row->worker_id, "): it is ", row->state,
                   row->error.empty() ? "" : absl::StrCat(" (", row->error, ")"), current,
                   ". Drop this report."));
}

absl::Status Coordinator::Impl::ReportProgressLocked(const std::string& worker_id,
                                                     int64_t attempt_id, int64_t requests_done,
                                                     int64_t requests_total, double elapsed_s,
                                                     int64_t* ticket) {
  KVSCOPE_RETURN_IF_ERROR(CheckUsable());
  if (workers_.count(worker_id) == 0) {
    return absl::NotFoundError(absl::StrCat("unknown worker ", worker_id, "; register again"));
  }
  auto it = leases_.find(attempt_id);
  if (it == leases_.end()) {
    // Progress that crossed its own attempt's result on the wire changes nothing and is
    // not an error: the worker must not take it for a lost lease.
    KVSCOPE_ASSIGN_OR_RETURN(std::optional<AttemptRow> row, store_->GetAttempt(attempt_id));
    if (row && row->state == "succeeded") {
      if (row->worker_id == worker_id) return absl::OkStatus();
      KVSCOPE_ASSIGN_OR_RETURN(std::vector<AttemptRankRow> ranks,
                               store_->ListAttemptRanks(attempt_id));
      for (const AttemptRankRow& r : ranks) {
        if (r.worker_id == worker_id) return absl::OkStatus();
      }
    }
    return StaleError(attempt_id);
  }
  Lease& lease = it->second;
  const int32_t rank = lease.RankOf(worker_id);
  if (rank < 0) {
    return absl::FailedPreconditionError(absl::StrCat("stale attempt ", attempt_id,
                                                      ": it is leased to ", lease.worker_id(),
                                                      ", not to ", worker_id));
  }
  Op op;
  Hold& hold = lease.ranks[static_cast<size_t>(rank)];
  hold.renewed_nanos = clock_->NowNanos();
  hold.renewed_unix_s = op.now_unix_s;
  if (rank > 0) return absl::OkStatus();  // renews the rank; rank 0's numbers are the trial's
  Trial& t = trials_[lease.trial];
  t.requests_done = requests_done;
  t.requests_total = requests_total;
  t.elapsed_s = elapsed_s;
  if (lease.running) {
    // Not a state change: kept in memory, written by the next commit or ExpireLeases.
    t.progress_dirty = true;
    dirty_experiments_.insert(t.experiment);
    experiments_[t.experiment].version++;
    changed_.notify_all();
    return absl::OkStatus();
  }
  lease.running = true;
  t.progress_dirty = false;
  SetTrialState(lease.trial, TrialState::kRunning, &op);
  op.batch.trial_changes.push_back(MakeTrialChange(t));
  AttemptChange a;
  a.id = attempt_id;
  a.state = "running";
  a.lease_renewed_unix_s = op.now_unix_s;
  op.batch.attempt_changes.push_back(std::move(a));
  AddEvent(&op, experiments_[t.experiment].id, t.id, attempt_id, "running",
           absl::StrCat("attempt ", lease.number, " running on ", worker_id));
  *ticket = Finish(&op);
  return absl::OkStatus();
}

absl::Status Coordinator::Impl::RetryOrFail(const Lease& lease, const std::string& attempt_state,
                                            const std::string& reason, Op* op) {
  Trial& t = trials_[lease.trial];
  const Experiment& e = experiments_[t.experiment];
  const bool retry = t.attempt_count < t.max_attempts;
  // The only step that can fail comes first, before anything is changed.
  std::vector<AttemptRow> earlier;  // for a failed trial: the reasons of every attempt
  if (!retry) {
    KVSCOPE_ASSIGN_OR_RETURN(earlier, store_->ListTrialAttempts(t.id));
  }
  AttemptChange a;
  a.id = lease.attempt_id;
  a.state = attempt_state;
  a.error = reason;
  a.lease_renewed_unix_s = lease.ranks[0].renewed_unix_s;
  a.finished_unix_s = op->now_unix_s;
  op->batch.attempt_changes.push_back(a);
  std::string where = lease.worker_id();
  if (lease.gang()) {
    std::vector<std::string> workers;
    for (const Hold& h : lease.ranks) workers.push_back(h.worker_id);
    where = absl::StrCat("gang ", lease.gang_id, " (", absl::StrJoin(workers, ","), ")");
  }
  t.progress_dirty = false;
  if (retry) {
    SetTrialState(lease.trial, TrialState::kPending, op);
    AddEvent(op, e.id, t.id, lease.attempt_id, attempt_state == "expired" ? "expiry" : "failure",
             absl::StrCat("attempt ", lease.number, " on ", where, " ", attempt_state,
                          ": ", reason, "; the trial is pending again (", t.attempt_count, " of ",
                          t.max_attempts, " attempts used)"));
  } else {
    // The reasons of every attempt, the earlier ones from the store.
    std::vector<std::string> reasons;
    for (const AttemptRow& r : earlier) {
      if (r.id == lease.attempt_id) continue;
      reasons.push_back(absl::StrCat("attempt ", r.number, " on ", r.worker_id, " ", r.state,
                                     ": ", r.error.empty() ? "(no reason given)" : r.error));
    }
    reasons.push_back(absl::StrCat("attempt ", lease.number, " on ", where, " ",
                                   attempt_state, ": ", reason));
    t.error = absl::StrCat("failed after ", t.attempt_count, " attempts: ",
                           absl::StrJoin(reasons, "; "));
    SetTrialState(lease.trial, TrialState::kFailed, op);
    AddEvent(op, e.id, t.id, lease.attempt_id, "failure", t.error);
  }
  op->batch.trial_changes.push_back(MakeTrialChange(t));
  return absl::OkStatus();
}

absl::Status Coordinator::Impl::ReportResultLocked(const std::string& worker_id,
                                                   int64_t attempt_id, const ResultReport& report,
                                                   int64_t* ticket) {
  KVSCOPE_RETURN_IF_ERROR(CheckUsable());
  if (workers_.count(worker_id) == 0) {
    return absl::NotFoundError(absl::StrCat("unknown worker ", worker_id, "; register again"));
  }
  auto it = leases_.find(attempt_id);
  if (it == leases_.end()) {
    // A retry of a reported success (its acknowledgement was lost) is acknowledged again,
    // once the first report is durable.
    auto done = succeeded_attempts_.find(attempt_id);
    if (done != succeeded_attempts_.end() && report.succeeded && done->second == worker_id) {
      *ticket = LastTicket();
      return absl::OkStatus();
    }
    if (done == succeeded_attempts_.end() && report.succeeded) {  // succeeded before a restart
      KVSCOPE_ASSIGN_OR_RETURN(std::optional<AttemptRow> row, store_->GetAttempt(attempt_id));
      if (row && row->state == "succeeded" && row->worker_id == worker_id) return absl::OkStatus();
    }
    // A rank > 0 of a gang whose attempt is over (it succeeded, failed, expired or was
    // cancelled): acknowledged, whatever it reports; the attempt's outcome stands.
    KVSCOPE_ASSIGN_OR_RETURN(std::vector<AttemptRankRow> ranks,
                             store_->ListAttemptRanks(attempt_id));
    for (const AttemptRankRow& r : ranks) {
      if (r.worker_id != worker_id) continue;
      *ticket = LastTicket();
      return absl::OkStatus();
    }
    return StaleError(attempt_id);
  }
  const int32_t rank = it->second.RankOf(worker_id);
  if (rank < 0) {
    return absl::FailedPreconditionError(absl::StrCat("stale attempt ", attempt_id,
                                                      ": it is leased to ",
                                                      it->second.worker_id(), ", not to ",
                                                      worker_id));
  }
  // Only a report that stores a result needs one.
  if (rank == 0 && report.succeeded && !report.result.is_object()) {
    return absl::InvalidArgumentError("a succeeded result must carry result_json, a JSON object");
  }
  Op op;
  if (rank > 0) {
    Lease& gang = it->second;
    Hold& hold = gang.ranks[static_cast<size_t>(rank)];
    if (hold.released) {  // a retry of this rank's success
      *ticket = LastTicket();
      return absl::OkStatus();
    }
    if (report.succeeded) {
      // The follower is done: its hold goes, the attempt waits for rank 0's result.
      hold.released = true;
      workers_[worker_id].attempts.erase(attempt_id);
      {
        std::lock_guard<std::mutex> hb_lock(hb_mu_);
        auto owner = hb_lease_owner_.find(attempt_id);
        if (owner != hb_lease_owner_.end()) owner->second[static_cast<size_t>(rank)].clear();
        hb_renewed_.erase(RankKey{attempt_id, rank});
      }
      op.batch.attempt_rank_changes.push_back({attempt_id, rank, "released"});
      const Trial& t = trials_[gang.trial];
      AddEvent(&op, experiments_[t.experiment].id, t.id, attempt_id, "rank",
               absl::StrCat("rank ", rank, " of attempt ", gang.number, " on ", worker_id,
                            " finished; released"));
      *ticket = Finish(&op);
      return absl::OkStatus();
    }
  }
  const Lease lease = it->second;
  Trial& t = trials_[lease.trial];
  const Experiment& e = experiments_[t.experiment];
  if (!report.succeeded) {
    std::string reason = report.error.empty() ? "failed (no reason given)" : report.error;
    if (lease.gang()) reason = absl::StrCat("rank ", rank, " on ", worker_id, ": ", reason);
    KVSCOPE_RETURN_IF_ERROR(RetryOrFail(lease, "failed", reason, &op));
  }
  if (report.succeeded) {
    AttemptChange a;
    a.id = attempt_id;
    a.state = "succeeded";
    a.lease_renewed_unix_s = op.now_unix_s;
    a.finished_unix_s = op.now_unix_s;
    op.batch.attempt_changes.push_back(std::move(a));
    ResultRecord r;
    r.trial_id = t.id;
    r.attempt_id = attempt_id;
    r.result_json = report.result.dump();
    r.requests_jsonl = report.requests_jsonl;
    r.stored_unix_s = op.now_unix_s;
    op.batch.results.push_back(std::move(r));
    t.progress_dirty = false;
    SetTrialState(lease.trial, TrialState::kSucceeded, &op);
    op.batch.trial_changes.push_back(MakeTrialChange(t));
    AddEvent(&op, e.id, t.id, attempt_id, "result",
             absl::StrCat("attempt ", lease.number, " on ", worker_id, " succeeded"));
  }
  if (report.succeeded) succeeded_attempts_.emplace(attempt_id, worker_id);
  ReleaseLease(attempt_id);
  *ticket = Finish(&op);
  return absl::OkStatus();
}

absl::Status Coordinator::Impl::ExpireLeasesLocked(int64_t* ticket) {
  KVSCOPE_RETURN_IF_ERROR(CheckUsable());
  const int64_t now = clock_->NowNanos();
  const auto period = static_cast<int64_t>(options_.lease_seconds * 1e9);
  FoldHeartbeats();
  Op op;
  absl::Status status;
  std::vector<std::pair<Lease, size_t>> expired;  // and the first rank that expired
  for (const auto& [id, lease] : leases_) {
    for (size_t r = 0; r < lease.ranks.size(); ++r) {
      const Hold& h = lease.ranks[r];
      if (h.released || now - h.renewed_nanos < period) continue;
      expired.emplace_back(lease, r);
      break;
    }
  }
  for (const auto& [lease, r] : expired) {
    const Hold& h = lease.ranks[r];
    std::string reason =
        absl::StrCat("lease expired: not renewed for ",
                     absl::StrFormat("%.1f", static_cast<double>(now - h.renewed_nanos) * 1e-9),
                     " s (lease period ", options_.lease_seconds, " s)");
    if (lease.gang()) {
      reason = absl::StrCat("the lease of rank ", r, " on ", h.worker_id, " expired: not renewed for ",
                            absl::StrFormat("%.1f", static_cast<double>(now - h.renewed_nanos) * 1e-9),
                            " s (lease period ", options_.lease_seconds, " s)",
                            h.delivered ? "" : "; the worker never asked for it");
    }
    const absl::Status ended = RetryOrFail(lease, "expired", reason, &op);
    if (!ended.ok()) {
      // RetryOrFail changed nothing: this lease stays open for the next pass, and the others
      // still expire (a lease that cannot be ended must not hold back every later one). The
      // pass's changes are queued below like any change; the first error is returned.
      if (status.ok()) {
        status = absl::Status(
            ended.code(),
            absl::StrCat("expiring the lease of attempt ", lease.attempt_id, " (trial ",
                         trials_[lease.trial].id, "): ", ended.message(),
                         "; it stays open and is expired at the next pass once the store can "
                         "be read again (the other leases this pass expired are committed)"));
      }
      continue;
    }
    ReleaseLease(lease.attempt_id);
  }
  FlushSoftState(&op);
  *ticket = Finish(&op);
  return status;
}

// --- gang rendezvous ---

absl::Status Coordinator::Impl::PublishRendezvous(const std::string& worker_id,
                                                  int64_t attempt_id, const std::string& gang_id,
                                                  const std::string& blob) {
  if (blob.empty()) return absl::InvalidArgumentError("the rendezvous blob is empty");
  if (blob.size() > kMaxRendezvousBlobBytes) {
    return absl::InvalidArgumentError(absl::StrCat("the rendezvous blob has ", blob.size(),
                                                   " bytes; at most ", kMaxRendezvousBlobBytes,
                                                   " are accepted"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  KVSCOPE_RETURN_IF_ERROR(CheckUsable());
  if (workers_.count(worker_id) == 0) {
    return absl::NotFoundError(absl::StrCat("unknown worker ", worker_id, "; register again"));
  }
  auto it = leases_.find(attempt_id);
  if (it == leases_.end()) return StaleError(attempt_id);
  const Lease& lease = it->second;
  KVSCOPE_RETURN_IF_ERROR(CheckGang(attempt_id, lease.gang_id, gang_id));
  if (lease.worker_id() != worker_id) {
    return absl::FailedPreconditionError(
        absl::StrCat("only rank 0 of gang ", gang_id, " (worker ", lease.worker_id(),
                     ") publishes its rendezvous, not ", worker_id));
  }
  auto [published, fresh] = rendezvous_.emplace(attempt_id, blob);
  if (!fresh) {
    if (published->second == blob) return absl::OkStatus();  // a retry
    return absl::FailedPreconditionError(absl::StrCat(
        "gang ", gang_id, " already has a different rendezvous blob; a rank 0 publishes once"));
  }
  Rendezvous rv;
  rv.blob = blob;
  rv.world_size = static_cast<int32_t>(lease.ranks.size());
  bool woke = false;
  for (auto w = rv_waiters_.begin(); w != rv_waiters_.end();) {
    if (w->second.attempt_id != attempt_id) {
      ++w;
      continue;
    }
    rv_due_.emplace_back(std::move(w->second.done), rv);
    w = rv_waiters_.erase(w);
    woke = true;
  }
  if (woke) WakeRendezvousThread();
  return absl::OkStatus();
}

bool Coordinator::Impl::RendezvousLost(const Lease& lease) const {
  if (!lease.recovered || rendezvous_.count(lease.attempt_id) != 0) return false;
  const auto wait = static_cast<int64_t>(options_.rendezvous_wait_seconds * 1e9);
  return clock_->NowNanos() - lease.recovered_nanos >= wait;
}

absl::Status Coordinator::Impl::EndLostRendezvousLocked(int64_t attempt_id, int64_t* ticket) {
  KVSCOPE_RETURN_IF_ERROR(CheckUsable());
  const Lease lease = leases_.at(attempt_id);
  Op op;
  KVSCOPE_RETURN_IF_ERROR(RetryOrFail(
      lease, "failed",
      absl::StrCat("the rendezvous of gang ", lease.gang_id,
                   " was lost when the coordinator restarted (rank 0 did not publish it again "
                   "within ",
                   options_.rendezvous_wait_seconds, " s)"),
      &op));
  ReleaseLease(attempt_id);
  *ticket = Finish(&op);
  return absl::AbortedError(absl::StrCat(
      "gang attempt ", attempt_id, " ended: its rendezvous was lost when the coordinator "
      "restarted; stop this rank (the trial is retried)"));
}

absl::StatusOr<std::optional<Rendezvous>> Coordinator::Impl::AwaitCheckLocked(
    const std::string& worker_id, int64_t attempt_id, const std::string& gang_id, int32_t rank,
    int64_t* ticket) {
  KVSCOPE_RETURN_IF_ERROR(CheckUsable());
  if (workers_.count(worker_id) == 0) {
    return absl::NotFoundError(absl::StrCat("unknown worker ", worker_id, "; register again"));
  }
  auto it = leases_.find(attempt_id);
  if (it == leases_.end()) {
    KVSCOPE_ASSIGN_OR_RETURN(std::optional<AttemptRow> row, store_->GetAttempt(attempt_id));
    if (!row) return absl::NotFoundError(absl::StrCat("unknown attempt ", attempt_id));
    // Only a worker that held this rank of this gang hears how it ended.
    KVSCOPE_RETURN_IF_ERROR(CheckGang(attempt_id, row->gang_id, gang_id));
    std::string holder;  // the worker of `rank`; "" for no such rank
    if (rank == 0) {
      holder = row->worker_id;
    } else if (rank > 0 && rank < row->world_size) {
      KVSCOPE_ASSIGN_OR_RETURN(std::vector<AttemptRankRow> ranks,
                               store_->ListAttemptRanks(attempt_id));
      for (const AttemptRankRow& r : ranks) {
        if (r.rank == rank) holder = r.worker_id;
      }
    }
    if (holder.empty() || holder != worker_id) return NotRankError(worker_id, rank, gang_id);
    // Its end may still be queued: answer once everything queued is durable.
    *ticket = LastTicket();
    return absl::AbortedError(absl::StrCat(
        "attempt ", attempt_id, " (number ", row->number, " of trial ", row->trial_id,
        ") has ended: it is ", row->state, row->error.empty() ? "" : " (" + row->error + ")",
        "; stop this rank"));
  }
  const Lease& lease = it->second;
  KVSCOPE_RETURN_IF_ERROR(CheckGang(attempt_id, lease.gang_id, gang_id));
  if (rank < 0 || static_cast<size_t>(rank) >= lease.ranks.size() ||
      lease.ranks[static_cast<size_t>(rank)].worker_id != worker_id) {
    return NotRankError(worker_id, rank, gang_id);
  }
  auto published = rendezvous_.find(attempt_id);
  if (published != rendezvous_.end()) {
    Rendezvous rv;
    rv.blob = published->second;
    rv.world_size = static_cast<int32_t>(lease.ranks.size());
    return std::optional<Rendezvous>(std::move(rv));
  }
  if (RendezvousLost(lease)) return EndLostRendezvousLocked(attempt_id, ticket);
  return std::optional<Rendezvous>();
}

int64_t Coordinator::Impl::AwaitRendezvousAsync(const std::string& worker_id, int64_t attempt_id,
                                                const std::string& gang_id, int32_t rank,
                                                double timeout_seconds,
                                                Callback<absl::StatusOr<Rendezvous>> done) {
  // Only queues the call (no mu_, no store): the rendezvous thread takes it up.
  RendezvousCall call;
  call.handle = next_rv_handle_.fetch_add(1);
  call.worker_id = worker_id;
  call.attempt_id = attempt_id;
  call.gang_id = gang_id;
  call.rank = rank;
  const double wait = std::min(timeout_seconds, options_.rendezvous_wait_seconds);
  call.wait = wait > 0;
  if (call.wait) {
    call.deadline = std::chrono::steady_clock::now() +
                    std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                        std::chrono::duration<double>(wait));
  }
  call.done = std::move(done);
  const int64_t handle = call.handle;
  {
    std::lock_guard<std::mutex> in(rv_in_mu_);
    if (!rv_closed_) {
      rv_in_.push_back(std::move(call));
      rv_in_cv_.notify_one();
      return handle;
    }
  }
  call.done(absl::UnavailableError("the coordinator is shutting down; ask again"));
  return 0;
}

void Coordinator::Impl::CancelAwait(int64_t handle) {
  RendezvousCall call;
  call.handle = handle;
  call.cancel = true;
  std::lock_guard<std::mutex> in(rv_in_mu_);
  if (rv_closed_) return;  // every wait was answered when the thread stopped
  rv_in_.push_back(std::move(call));
  rv_in_cv_.notify_one();
}

void Coordinator::Impl::WakeRendezvousThread() {
  std::lock_guard<std::mutex> in(rv_in_mu_);
  rv_wake_ = true;
  rv_in_cv_.notify_one();
}

void Coordinator::Impl::TakeRendezvousCallLocked(
    RendezvousCall call, bool stopping, std::vector<RendezvousAfterCommit>* after_commit) {
  if (call.cancel) {
    auto w = rv_waiters_.find(call.handle);
    if (w == rv_waiters_.end()) return;  // answered already
    rv_due_.emplace_back(std::move(w->second.done),
                         absl::CancelledError("the wait for the rendezvous was cancelled"));
    rv_waiters_.erase(w);
    return;
  }
  int64_t ticket = 0;
  absl::StatusOr<std::optional<Rendezvous>> now =
      AwaitCheckLocked(call.worker_id, call.attempt_id, call.gang_id, call.rank, &ticket);
  if (ticket != 0) {  // the attempt ended (maybe by this call): answer once that is durable
    after_commit->emplace_back(ticket, now.status(), std::move(call.done));
  } else if (!now.ok()) {
    rv_due_.emplace_back(std::move(call.done), now.status());
  } else if (now->has_value()) {
    rv_due_.emplace_back(std::move(call.done), **std::move(now));
  } else if (call.wait && !stopping) {
    RendezvousWaiter waiter;
    waiter.attempt_id = call.attempt_id;
    waiter.deadline = call.deadline;
    waiter.done = std::move(call.done);
    rv_waiters_.emplace(call.handle, std::move(waiter));
  } else if (stopping) {
    rv_due_.emplace_back(std::move(call.done),
                         absl::UnavailableError("the coordinator is shutting down; ask again"));
  } else {
    rv_due_.emplace_back(std::move(call.done),
                         absl::DeadlineExceededError(absl::StrCat(
                             "rank 0 has not published the rendezvous of gang ", call.gang_id,
                             " yet; ask again")));
  }
}

absl::StatusOr<Rendezvous> Coordinator::Impl::AwaitRendezvous(const std::string& worker_id,
                                                               int64_t attempt_id,
                                                               const std::string& gang_id,
                                                               int32_t rank,
                                                               double timeout_seconds) {
  std::mutex m;
  std::condition_variable cv;
  std::optional<absl::StatusOr<Rendezvous>> result;
  AwaitRendezvousAsync(worker_id, attempt_id, gang_id, rank, timeout_seconds,
                       [&](absl::StatusOr<Rendezvous> r) {
                         std::lock_guard<std::mutex> lock(m);  // notify under the lock: the
                         result = std::move(r);                // waiter owns m and cv
                         cv.notify_all();
                       });
  // Bounded: the rendezvous thread answers every waiter by its deadline.
  std::unique_lock<std::mutex> lock(m);
  cv.wait(lock, [&] { return result.has_value(); });
  return *std::move(result);
}

void Coordinator::Impl::RendezvousLoop() {
  constexpr auto kNoWaiter = std::chrono::steady_clock::time_point::max();
  auto next_deadline = kNoWaiter;  // the earliest waiter's
  for (;;) {
    std::vector<RendezvousCall> calls;
    bool stopping = false;
    {
      std::unique_lock<std::mutex> in(rv_in_mu_);
      const auto ready = [&] { return rv_wake_ || stop_rv_ || !rv_in_.empty(); };
      if (next_deadline == kNoWaiter) {
        rv_in_cv_.wait(in, ready);
      } else {
        rv_in_cv_.wait_until(in, next_deadline, ready);
      }
      calls.swap(rv_in_);
      rv_wake_ = false;
      stopping = stop_rv_;
    }
    // Completions to run without mu_ (taken from rv_due_).
    std::vector<std::pair<Callback<absl::StatusOr<Rendezvous>>, absl::StatusOr<Rendezvous>>>
        due;
    // Waiters whose call ended a gang, or found it ended: answered once that is durable.
    std::vector<RendezvousAfterCommit> after_commit;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (RendezvousCall& call : calls) {
        TakeRendezvousCallLocked(std::move(call), stopping, &after_commit);
      }
      const auto now = std::chrono::steady_clock::now();
      std::vector<int64_t> timed_out;
      for (const auto& [handle, w] : rv_waiters_) {
        if (stopping || w.deadline <= now) timed_out.push_back(handle);
      }
      for (int64_t handle : timed_out) {
        auto w = rv_waiters_.find(handle);
        if (w == rv_waiters_.end()) continue;  // answered meanwhile (its gang ended)
        RendezvousWaiter waiter = std::move(w->second);
        rv_waiters_.erase(w);
        if (stopping) {
          rv_due_.emplace_back(std::move(waiter.done), absl::UnavailableError(
                                   "the coordinator is shutting down; ask again"));
          continue;
        }
        auto lease = leases_.find(waiter.attempt_id);
        if (lease != leases_.end() && RendezvousLost(lease->second)) {
          int64_t ticket = 0;
          absl::Status ended = EndLostRendezvousLocked(waiter.attempt_id, &ticket);
          after_commit.emplace_back(ticket, std::move(ended), std::move(waiter.done));
          continue;
        }
        const std::string gang = lease != leases_.end() ? lease->second.gang_id : std::string();
        rv_due_.emplace_back(std::move(waiter.done),
                             absl::DeadlineExceededError(absl::StrCat(
                                 "rank 0 has not published the rendezvous of gang ", gang,
                                 " yet; ask again")));
      }
      next_deadline = kNoWaiter;
      for (const auto& [handle, w] : rv_waiters_) {
        next_deadline = std::min(next_deadline, w.deadline);
      }
      due.swap(rv_due_);
    }
    for (auto& [done, outcome] : due) done(std::move(outcome));
    for (auto& [ticket, ended, done] : after_commit) {
      WhenDurable(ticket, [outcome = ended, done = std::move(done)](absl::Status s) {
        done(s.ok() ? outcome : s);
      });
    }
    if (stopping) {
      std::lock_guard<std::mutex> in(rv_in_mu_);
      if (rv_in_.empty()) {
        rv_closed_ = true;
        return;
      }
    }
  }
}

// --- locking and durability around the *Locked methods ---

absl::Status Coordinator::Impl::Cancel(const std::string& id) {
  int64_t ticket = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    KVSCOPE_RETURN_IF_ERROR(CancelLocked(id, &ticket));
  }
  return WaitDurable(ticket);
}

absl::StatusOr<std::string> Coordinator::Impl::RegisterWorker(
    const WorkerCapabilities& capabilities, const std::string& worker_id) {
  int64_t ticket = 0;
  std::string id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    KVSCOPE_ASSIGN_OR_RETURN(id, RegisterWorkerLocked(capabilities, worker_id, &ticket));
  }
  KVSCOPE_RETURN_IF_ERROR(WaitDurable(ticket));
  return id;
}

absl::StatusOr<std::vector<TrialAssignment>> Coordinator::Impl::LoadConfigs(
    std::vector<TrialAssignment> out) {
  for (TrialAssignment& a : out) {
    KVSCOPE_ASSIGN_OR_RETURN(a.config_yaml, store_->GetTrialConfig(a.trial_id));
  }
  return out;
}

absl::StatusOr<std::vector<TrialAssignment>> Coordinator::Impl::AcquireTrials(
    const std::string& worker_id, int32_t max_trials) {
  int64_t ticket = 0;
  std::vector<TrialAssignment> out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    KVSCOPE_ASSIGN_OR_RETURN(out, AcquireTrialsLocked(worker_id, max_trials, &ticket));
  }
  KVSCOPE_RETURN_IF_ERROR(WaitDurable(ticket));
  return LoadConfigs(std::move(out));
}

absl::Status Coordinator::Impl::ReportProgress(const std::string& worker_id, int64_t attempt_id,
                                               int64_t requests_done, int64_t requests_total,
                                               double elapsed_s) {
  int64_t ticket = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    KVSCOPE_RETURN_IF_ERROR(ReportProgressLocked(worker_id, attempt_id, requests_done,
                                                 requests_total, elapsed_s, &ticket));
  }
  return WaitDurable(ticket);
}

absl::Status Coordinator::Impl::ReportResult(const std::string& worker_id, int64_t attempt_id,
                                             const ResultReport& report) {
  int64_t ticket = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    KVSCOPE_RETURN_IF_ERROR(ReportResultLocked(worker_id, attempt_id, report, &ticket));
  }
  return WaitDurable(ticket);
}

absl::StatusOr<std::vector<TrialAssignment>> Coordinator::Impl::ReportResultAndAcquireLocked(
    const std::string& worker_id, int64_t attempt_id, const ResultReport& report,
    int32_t max_next_trials, int64_t* ticket) {
  KVSCOPE_RETURN_IF_ERROR(ReportResultLocked(worker_id, attempt_id, report, ticket));
  if (max_next_trials <= 0) return std::vector<TrialAssignment>();
  int64_t acquire_ticket = 0;
  absl::StatusOr<std::vector<TrialAssignment>> next =
      AcquireTrialsLocked(worker_id, max_next_trials, &acquire_ticket);
  // The report stands either way; a worker that got nothing asks again with AcquireTrials.
  if (!next.ok()) return std::vector<TrialAssignment>();
  *ticket = std::max(*ticket, acquire_ticket);
  return next;
}

absl::StatusOr<std::vector<TrialAssignment>> Coordinator::Impl::ReportResultAndAcquire(
    const std::string& worker_id, int64_t attempt_id, const ResultReport& report,
    int32_t max_next_trials) {
  int64_t ticket = 0;
  std::vector<TrialAssignment> out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    KVSCOPE_ASSIGN_OR_RETURN(out, ReportResultAndAcquireLocked(worker_id, attempt_id, report,
                                                               max_next_trials, &ticket));
  }
  KVSCOPE_RETURN_IF_ERROR(WaitDurable(ticket));
  return LoadConfigs(std::move(out));
}

// --- asynchronous forms: the same *Locked steps, then WhenDurable instead of WaitDurable ---

void Coordinator::Impl::RegisterWorkerAsync(const WorkerCapabilities& capabilities,
                                            const std::string& worker_id,
                                            Callback<absl::StatusOr<std::string>> done) {
  int64_t ticket = 0;
  absl::StatusOr<std::string> id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    id = RegisterWorkerLocked(capabilities, worker_id, &ticket);
  }
  if (!id.ok()) return done(id.status());
  WhenDurable(ticket, [id = *std::move(id), done = std::move(done)](absl::Status s) {
    if (!s.ok()) return done(s);
    done(id);
  });
}

void Coordinator::Impl::AcquireTrialsAsync(
    const std::string& worker_id, int32_t max_trials,
    Callback<absl::StatusOr<std::vector<TrialAssignment>>> done) {
  int64_t ticket = 0;
  absl::StatusOr<std::vector<TrialAssignment>> out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    out = AcquireTrialsLocked(worker_id, max_trials, &ticket);
  }
  if (!out.ok()) return done(out.status());
  WhenDurable(ticket, [this, out = *std::move(out), done = std::move(done)](absl::Status s) {
    if (!s.ok()) return done(s);
    done(LoadConfigs(out));
  });
}

void Coordinator::Impl::ReportProgressAsync(const std::string& worker_id, int64_t attempt_id,
                                            int64_t requests_done, int64_t requests_total,
                                            double elapsed_s, Callback<absl::Status> done) {
  int64_t ticket = 0;
  absl::Status status;
  {
    std::lock_guard<std::mutex> lock(mu_);
    status = ReportProgressLocked(worker_id, attempt_id, requests_done, requests_total,
                                  elapsed_s, &ticket);
  }
  if (!status.ok()) return done(status);
  WhenDurable(ticket, std::move(done));
}

void Coordinator::Impl::ReportResultAndAcquireAsync(
    const std::string& worker_id, int64_t attempt_id, const ResultReport& report,
    int32_t max_next_trials, Callback<absl::StatusOr<std::vector<TrialAssignment>>> done) {
  int64_t ticket = 0;
  absl::StatusOr<std::vector<TrialAssignment>> out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    out = ReportResultAndAcquireLocked(worker_id, attempt_id, report, max_next_trials, &ticket);
  }
  if (!out.ok()) return done(out.status());
  WhenDurable(ticket, [this, out = *std::move(out), done = std::move(done)](absl::Status s) {
    if (!s.ok()) return done(s);
    if (out.empty()) return done(out);
    done(LoadConfigs(out));
  });
}

void Coordinator::Impl::CancelAsync(const std::string& id, Callback<absl::Status> done) {
  int64_t ticket = 0;
  absl::Status status;
  {
    std::lock_guard<std::mutex> lock(mu_);
    status = CancelLocked(id, &ticket);
  }
  if (!status.ok()) return done(status);
  WhenDurable(ticket, std::move(done));
}

absl::Status Coordinator::Impl::ExpireLeases() {
  int64_t ticket = 0;
  absl::Status expired;
  {
    std::lock_guard<std::mutex> lock(mu_);
    expired = ExpireLeasesLocked(&ticket);
  }
  // What a pass that failed part-way did change is queued too: durable before returning.
  KVSCOPE_RETURN_IF_ERROR(WaitDurable(ticket));
  return expired;
}

// --- Coordinator ---

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(
    Store* store, const Clock* clock, const CoordinatorOptions& options) {
  if (store == nullptr || clock == nullptr) {
    return absl::InvalidArgumentError("Coordinator::Create needs a store and a clock");
  }
  if (!(options.lease_seconds > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("lease_seconds must be positive, got ", options.lease_seconds));
  }
  auto impl = std::make_unique<Impl>(store, clock, options);
  KVSCOPE_RETURN_IF_ERROR(impl->Load());
  impl->StartCommitThread();
  return std::unique_ptr<Coordinator>(new Coordinator(std::move(impl)));
}

Coordinator::Coordinator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Coordinator::~Coordinator() = default;

absl::StatusOr<std::string> Coordinator::Submit(const std::string& sweep_yaml,
                                                const std::string& source) {
  absl::StatusOr<Sweep> sweep = ParseSweep(sweep_yaml, source, impl_->options().sweep_limits);
  if (!sweep.ok()) return absl::InvalidArgumentError(sweep.status().message());
  return impl_->SubmitParsed(*sweep, sweep_yaml, source);
}
absl::StatusOr<std::string> Coordinator::SubmitParsed(const Sweep& sweep,
                                                      const std::string& sweep_yaml,
                                                      const std::string& source) {
  return impl_->SubmitParsed(sweep, sweep_yaml, source);
}
absl::StatusOr<ExperimentInfo> Coordinator::GetExperiment(const std::string& id) {
  return impl_->GetExperiment(id);
}
absl::StatusOr<std::vector<ExperimentInfo>> Coordinator::ListExperiments() {
  return impl_->ListExperiments();
}
absl::StatusOr<std::vector<TrialInfo>> Coordinator::ListTrials(const std::string& id) {
  return impl_->ListTrials(id);
}
absl::StatusOr<std::vector<TrialResult>> Coordinator::Results(const std::string& id) {
  return impl_->Results(id);
}
absl::Status Coordinator::Cancel(const std::string& id) { return impl_->Cancel(id); }
absl::StatusOr<std::vector<WorkerInfo>> Coordinator::ListWorkers() { return impl_->ListWorkers(); }
absl::StatusOr<ExperimentInfo> Coordinator::WaitForChange(const std::string& id,
                                                          int64_t after_version,
                                                          double timeout_seconds) {
  return impl_->WaitForChange(id, after_version, timeout_seconds);
}
absl::StatusOr<std::string> Coordinator::RegisterWorker(const WorkerCapabilities& capabilities,
                                                        const std::string& worker_id) {
  return impl_->RegisterWorker(capabilities, worker_id);
}
absl::StatusOr<HeartbeatReply> Coordinator::Heartbeat(
    const std::string& worker_id, const std::vector<int64_t>& running_attempts) {
  return impl_->Heartbeat(worker_id, running_attempts);
}
absl::StatusOr<std::vector<TrialAssignment>> Coordinator::AcquireTrials(
    const std::string& worker_id, int32_t max_trials) {
  return impl_->AcquireTrials(worker_id, max_trials);
}
absl::Status Coordinator::ReportProgress(const std::string& worker_id, int64_t attempt_id,
                                         int64_t requests_done, int64_t requests_total,
                                         double elapsed_s) {
  return impl_->ReportProgress(worker_id, attempt_id, requests_done, requests_total, elapsed_s);
}
absl::Status Coordinator::ReportResult(const std::string& worker_id, int64_t attempt_id,
                                       const ResultReport& report) {
  return impl_->ReportResult(worker_id, attempt_id, report);
}
absl::StatusOr<std::vector<TrialAssignment>> Coordinator::ReportResultAndAcquire(
    const std::string& worker_id, int64_t attempt_id, const ResultReport& report,
    int32_t max_next_trials) {
  return impl_->ReportResultAndAcquire(worker_id, attempt_id, report, max_next_trials);
}
void Coordinator::RegisterWorkerAsync(const WorkerCapabilities& capabilities,
                                      const std::string& worker_id,
                                      Callback<absl::StatusOr<std::string>> done) {
  impl_->RegisterWorkerAsync(capabilities, worker_id, std::move(done));
}
void Coordinator::AcquireTrialsAsync(const std::string& worker_id, int32_t max_trials,
                                     Callback<absl::StatusOr<std::vector<TrialAssignment>>> done) {
  impl_->AcquireTrialsAsync(worker_id, max_trials, std::move(done));
}
void Coordinator::ReportProgressAsync(const std::string& worker_id, int64_t attempt_id,
                                      int64_t requests_done, int64_t requests_total,
                                      double elapsed_s, Callback<absl::Status> done) {
  impl_->ReportProgressAsync(worker_id, attempt_id, requests_done, requests_total, elapsed_s,
                             std::move(done));
}
void Coordinator::ReportResultAndAcquireAsync(
    const std::string& worker_id, int64_t attempt_id, const ResultReport& report,
    int32_t max_next_trials, Callback<absl::StatusOr<std::vector<TrialAssignment>>> done) {
  impl_->ReportResultAndAcquireAsync(worker_id, attempt_id, report, max_next_trials,
                                     std::move(done));
}
void Coordinator::CancelAsync(const std::string& experiment_id, Callback<absl::Status> done) {
  impl_->CancelAsync(experiment_id, std::move(done));
}
absl::Status Coordinator::PublishRendezvous(const std::string& worker_id, int64_t attempt_id,
                                            const std::string& gang_id,
                                            const std::string& blob) {
  return impl_->PublishRendezvous(worker_id, attempt_id, gang_id, blob);
}
absl::StatusOr<Rendezvous> Coordinator::AwaitRendezvous(const std::string& worker_id,
                                                        int64_t attempt_id,
                                                        const std::string& gang_id, int32_t rank,
                                                        double timeout_seconds) {
  return impl_->AwaitRendezvous(worker_id, attempt_id, gang_id, rank, timeout_seconds);
}
int64_t Coordinator::AwaitRendezvousAsync(const std::string& worker_id, int64_t attempt_id,
                                          const std::string& gang_id, int32_t rank,
                                          double timeout_seconds,
                                          Callback<absl::StatusOr<Rendezvous>> done) {
  return impl_->AwaitRendezvousAsync(worker_id, attempt_id, gang_id, rank, timeout_seconds,
                                     std::move(done));
}
void Coordinator::CancelAwait(int64_t handle) { impl_->CancelAwait(handle); }
absl::Status Coordinator::ExpireLeases() { return impl_->ExpireLeases(); }
const CoordinatorOptions& Coordinator::options() const { return impl_->options(); }

}  // namespace kvscope::coordinator

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
// due, after releasing commit_mu_.
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
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
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
                      NormalizePath(r.model_path));
}

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
  struct Lease {
    int64_t attempt_id = 0;
    int32_t trial = 0;
    int32_t number = 1;
    std::string worker_id;
    std::vector<int32_t> gpus;  // GpuInfo::index values
    bool cpu = false;           // counts against max_cpu_trials
    bool running = false;
    int64_t renewed_nanos = 0;  // on clock_
    double renewed_unix_s = 0;
  };
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
  ExperimentInfo MakeInfo(const Experiment& e) const;
  static ExperimentState Derive(const Experiment& e);
  bool Fits(const Worker& w, const TrialRequirements& r, const std::vector<bool>& gpu_busy,
            int32_t cpu_running) const;

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
  std::unordered_map<int64_t, std::string> hb_lease_owner_;
  std::unordered_map<int64_t, Stamp> hb_renewed_;      // attempt -> latest renewal
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
  auto w = workers_.find(it->second.worker_id);
  if (w != workers_.end()) w->second.attempts.erase(attempt_id);
  leases_.erase(it);
  std::lock_guard<std::mutex> hb_lock(hb_mu_);
  hb_lease_owner_.erase(attempt_id);
  hb_renewed_.erase(attempt_id);
}

void Coordinator::Impl::FoldHeartbeats() {
  std::unordered_map<int64_t, Stamp> renewed;
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
  for (const auto& [attempt, stamp] : renewed) {
    auto lease = leases_.find(attempt);
    if (lease == leases_.end() || stamp.nanos < lease->second.renewed_nanos) continue;
    lease->second.renewed_nanos = stamp.nanos;
    lease->second.renewed_unix_s = stamp.unix_s;
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
  if (op->batch.empty()) return 0;
  std::lock_guard<std::mutex> lock(commit_mu_);
  queue_.push_back(std::move(op->batch));
  return ++enqueued_;
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
}

Coordinator::Impl::~Impl() {
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
  for (const AttemptRow& row : open) {
    auto t = trial_by_id_.find(row.trial_id);
    if (t == trial_by_id_.end()) continue;
    Lease lease;
    lease.attempt_id = row.id;
    lease.trial = t->second;
    lease.number = row.number;
    lease.worker_id = row.worker_id;
    lease.gpus = row.gpu_indices;
    lease.cpu = classes_[trials_[t->second].klass].requirements.backend != "cuda";
    lease.running = row.state == "running";
    lease.renewed_nanos = now;
    lease.renewed_unix_s = now_unix_s;
    auto w = workers_.find(row.worker_id);
    if (w != workers_.end()) w->second.attempts.insert(row.id);
    {
      std::lock_guard<std::mutex> hb_lock(hb_mu_);
      hb_lease_owner_[row.id] = row.worker_id;
    }
    leases_.emplace(row.id, std::move(lease));
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
        a.lease_renewed_unix_s = lease->second.renewed_unix_s;
        a.finished_unix_s = op.now_unix_s;
        op.batch.attempt_changes.push_back(std::move(a));
        AddEvent(&op, id, trial.id, lease->first, "cancel",
                 absl::StrCat("attempt ", lease->second.number, " on ", lease->second.worker_id,
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
    if (owner == hb_lease_owner_.end() || owner->second != worker_id) {
      reply.stop_attempts.push_back(a);
      continue;
    }
    hb_renewed_[a] = now;
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
  w.heard = true;
  w.last_heard_nanos = now;
  // What the worker has free: GPUs (by position in caps.gpus) and CPU trial slots.
  std::vector<bool> gpu_busy(w.caps.gpus.size(), false);
  int32_t cpu_running = 0;
  for (int64_t a : w.attempts) {
    const Lease& lease = leases_.at(a);
    if (lease.cpu) ++cpu_running;
    for (int32_t g : lease.gpus) {
      for (size_t i = 0; i < w.caps.gpus.size(); ++i) {
        if (w.caps.gpus[i].index == g) gpu_busy[i] = true;
      }
    }
  }
  Op op;
  std::vector<TrialAssignment> out;
  while (static_cast<int32_t>(out.size()) < max_trials) {
    // The oldest pending trial among the classes that fit.
    int32_t best_class = -1;
    int32_t best_trial = 0;
    for (size_t k = 0; k < classes_.size(); ++k) {
      const RequirementClass& c = classes_[k];
      if (c.pending.empty()) continue;
      const int32_t head = *c.pending.begin();
      if (best_class >= 0 && head > best_trial) continue;
      if (!Fits(w, c.requirements, gpu_busy, cpu_running)) continue;
      best_class = static_cast<int32_t>(k);
      best_trial = head;
    }
    if (best_class < 0) break;
    const TrialRequirements& r = classes_[best_class].requirements;
    Lease lease;
    lease.attempt_id = next_attempt_id_++;
    lease.trial = best_trial;
    lease.worker_id = worker_id;
    lease.cpu = r.backend != "cuda";
    lease.renewed_nanos = now;
    lease.renewed_unix_s = op.now_unix_s;
    if (lease.cpu) {
      ++cpu_running;
    } else {
      for (size_t g = 0; g < w.caps.gpus.size() &&
                         static_cast<int32_t>(lease.gpus.size()) < std::max(1, r.gpus);
           ++g) {
        if (gpu_busy[g] || w.caps.gpus[g].memory_bytes < r.gpu_memory_bytes) continue;
        gpu_busy[g] = true;
        lease.gpus.push_back(w.caps.gpus[g].index);
      }
    }
    Trial& t = trials_[best_trial];
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
    row.gpu_indices = lease.gpus;
    row.state = "leased";
    row.lease_renewed_unix_s = op.now_unix_s;
    row.started_unix_s = op.now_unix_s;
    op.batch.insert_attempts.push_back(std::move(row));
    const Experiment& e = experiments_[t.experiment];
    AddEvent(&op, e.id, t.id, lease.attempt_id, "lease",
             absl::StrCat("attempt ", lease.number, " leased to ", worker_id,
                          lease.gpus.empty() ? "" : " on GPUs ",
                          absl::StrJoin(lease.gpus, ",")));
    TrialAssignment a;
    a.experiment_id = e.id;
    a.trial_id = t.id;
    a.attempt_id = lease.attempt_id;
    a.attempt_number = lease.number;
    a.gpu_indices = lease.gpus;
    a.lease_seconds = options_.lease_seconds;
    out.push_back(std::move(a));
    w.attempts.insert(lease.attempt_id);
    {
      std::lock_guard<std::mutex> hb_lock(hb_mu_);
      hb_lease_owner_[lease.attempt_id] = worker_id;
    }
    leases_.emplace(lease.attempt_id, std::move(lease));
  }
  if (out.empty()) return out;
  *ticket = Finish(&op);
  return out;
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
    if (row && row->worker_id == worker_id && row->state == "succeeded") {
      return absl::OkStatus();
    }
    return StaleError(attempt_id);
  }
  Lease& lease = it->second;
  if (lease.worker_id != worker_id) {
    return absl::FailedPreconditionError(absl::StrCat("stale attempt ", attempt_id,
                                                      ": it is leased to ", lease.worker_id,
                                                      ", not to ", worker_id));
  }
  Op op;
  lease.renewed_nanos = clock_->NowNanos();
  lease.renewed_unix_s = op.now_unix_s;
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
  AttemptChange a;
  a.id = lease.attempt_id;
  a.state = attempt_state;
  a.error = reason;
  a.lease_renewed_unix_s = lease.renewed_unix_s;
  a.finished_unix_s = op->now_unix_s;
  op->batch.attempt_changes.push_back(a);
  t.progress_dirty = false;
  if (t.attempt_count < t.max_attempts) {
    SetTrialState(lease.trial, TrialState::kPending, op);
    AddEvent(op, e.id, t.id, lease.attempt_id, attempt_state == "expired" ? "expiry" : "failure",
             absl::StrCat("attempt ", lease.number, " on ", lease.worker_id, " ", attempt_state,
                          ": ", reason, "; the trial is pending again (", t.attempt_count, " of ",
                          t.max_attempts, " attempts used)"));
  } else {
    // The reasons of every attempt, the earlier ones from the store.
    KVSCOPE_ASSIGN_OR_RETURN(std::vector<AttemptRow> earlier, store_->ListTrialAttempts(t.id));
    std::vector<std::string> reasons;
    for (const AttemptRow& r : earlier) {
      if (r.id == lease.attempt_id) continue;
      reasons.push_back(absl::StrCat("attempt ", r.number, " on ", r.worker_id, " ", r.state,
                                     ": ", r.error.empty() ? "(no reason given)" : r.error));
    }
    reasons.push_back(absl::StrCat("attempt ", lease.number, " on ", lease.worker_id, " ",
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
    return StaleError(attempt_id);
  }
  if (it->second.worker_id != worker_id) {
    return absl::FailedPreconditionError(absl::StrCat("stale attempt ", attempt_id,
                                                      ": it is leased to ",
                                                      it->second.worker_id, ", not to ",
                                                      worker_id));
  }
  const Lease lease = it->second;
  Op op;
  Trial& t = trials_[lease.trial];
  const Experiment& e = experiments_[t.experiment];
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
  } else {
    KVSCOPE_RETURN_IF_ERROR(RetryOrFail(
        lease, "failed", report.error.empty() ? "failed (no reason given)" : report.error, &op));
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
  std::vector<Lease> expired;
  for (const auto& [id, lease] : leases_) {
    if (now - lease.renewed_nanos >= period) expired.push_back(lease);
  }
  for (const Lease& lease : expired) {
    const std::string reason =
        absl::StrCat("lease expired: not renewed for ",
                     absl::StrFormat("%.1f", static_cast<double>(now - lease.renewed_nanos) * 1e-9),
                     " s (lease period ", options_.lease_seconds, " s)");
    KVSCOPE_RETURN_IF_ERROR(RetryOrFail(lease, "expired", reason, &op));
    ReleaseLease(lease.attempt_id);
  }
  FlushSoftState(&op);
  *ticket = Finish(&op);
  return absl::OkStatus();
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
  {
    std::lock_guard<std::mutex> lock(mu_);
    KVSCOPE_RETURN_IF_ERROR(ExpireLeasesLocked(&ticket));
  }
  return WaitDurable(ticket);
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
absl::Status Coordinator::ExpireLeases() { return impl_->ExpireLeases(); }
const CoordinatorOptions& Coordinator::options() const { return impl_->options(); }

}  // namespace kvscope::coordinator

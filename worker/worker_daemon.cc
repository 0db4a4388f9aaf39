#include "worker/worker_daemon.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/base/attributes.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "worker/result_spool.h"
#include "worker/trial_runner.h"

namespace kvscope::worker {
namespace {

using SteadyClock = std::chrono::steady_clock;
using TimePoint = SteadyClock::time_point;

SteadyClock::duration Seconds(double s) {
  return std::chrono::duration_cast<SteadyClock::duration>(std::chrono::duration<double>(s));
}

void Log(const char* format, ...) ABSL_PRINTF_ATTRIBUTE(1, 2);
void Log(const char* format, ...) {
  char buffer[2048];
  va_list args;
  va_start(args, format);
  std::vsnprintf(buffer, sizeof(buffer), format, args);
  va_end(args);
  std::fprintf(stderr, "kvscope worker: %s\n", buffer);
}

// How the daemon treats a call's status.
enum class Outcome { kOk, kAway, kFatal, kOther };

Outcome Classify(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kOk:
      return Outcome::kOk;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kCancelled:
      return Outcome::kAway;  // worth retrying later
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied:
      return Outcome::kFatal;
    default:
      break;
  }
  return Outcome::kOther;
}

std::string StatusText(const absl::Status& s) { return std::string(s.ToString()); }

}  // namespace

double BackoffSeconds(int32_t failures, double base_seconds, double max_seconds,
                      std::mt19937_64* rng) {
  const int32_t exponent = std::clamp(failures - 1, 0, 60);
  const double d = std::min(max_seconds, base_seconds * std::ldexp(1.0, exponent));
  std::uniform_real_distribution<double> jitter(0.5, 1.0);
  return d * jitter(*rng);
}

class WorkerDaemon::Impl {
 public:
  Impl(WorkerDaemonOptions options, std::unique_ptr<ResultSpool> spool)
      : options_(std::move(options)),
        conn_(options_.connection),
        spool_(std::move(spool)),
        rng_(options_.backoff_seed != 0 ? options_.backoff_seed : std::random_device{}()) {}

  absl::Status Run();
  void Shutdown() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      shutdown_ = true;
      wake_ = true;
    }
    cv_.notify_all();
  }
  std::string worker_id() const {
    std::lock_guard<std::mutex> lock(mu_);
    return worker_id_;
  }
  std::vector<int64_t> RunningAttempts() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<int64_t> ids;
    for (const auto& [id, trial] : running_) {
      if (!trial->finished) ids.push_back(id);
    }
    return ids;
  }

 private:
  // One attempt in flight. Fields other than runner/thread/assignment are guarded by mu_.
  struct Trial {
    coordinator::TrialAssignment assignment;
    std::string lease_worker_id;  // the id the lease was acquired under
    std::unique_ptr<TrialRunner> runner;
    std::thread thread;
    bool finished = false;
    bool stopped_by_coordinator = false;  // its result is not reported
    bool stopped_by_shutdown = false;
    std::optional<TrialProgress> progress;
    bool progress_dirty = false;
    TimePoint last_progress_report{};
  };

  // --- Main loop steps (main thread only). ---
  void TryRegister(TimePoint now);
  void Heartbeat(TimePoint now);
  void SendResults();
  void SendProgress(TimePoint now);
  void Acquire(TimePoint now);
  void StartTrial(const coordinator::TrialAssignment& assignment);
  void ReapFinished();
  // The coordinator did not answer: back off, then probe again.
  void Disconnected(TimePoint now, const std::string& what, const absl::Status& s);
  void Fatal(const std::string& what, const absl::Status& s) {
    if (fatal_.ok()) {
      fatal_ = absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
      Log("fatal: %s; stopping", StatusText(fatal_).c_str());
    }
  }
  // Trial thread body.
  void TrialMain(Trial* trial);
  // The rendezvous hooks of a gang rank's runner (called on its trial thread).
  RendezvousHooks GangHooks(const coordinator::TrialAssignment& assignment,
                            const std::string& lease_worker_id);

  const WorkerDaemonOptions options_;
  CoordinatorConnection* const conn_;
  const std::unique_ptr<ResultSpool> spool_;
  std::mt19937_64 rng_;  // main thread only

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool shutdown_ = false;
  bool wake_ = false;  // something for the main loop: a result, shutdown
  std::string worker_id_;
  std::map<int64_t, std::unique_ptr<Trial>> running_;  // by attempt id
  std::deque<SpooledResult> outbox_;  // spooled, not yet acknowledged, by finish order

  // Main thread only.
  bool registered_ = false, connected_ = false;
  int32_t failures_ = 0;
  TimePoint next_try_{}, next_heartbeat_{}, next_acquire_{};
  double heartbeat_interval_s_ = 5;
  absl::Status fatal_;
};

void WorkerDaemon::Impl::Disconnected(TimePoint now, const std::string& what,
                                      const absl::Status& s) {
  ++failures_;
  const double wait =
      BackoffSeconds(failures_, options_.backoff_base_seconds, options_.backoff_max_seconds, &rng_);
  if (connected_ || failures_ == 1 || failures_ % 10 == 0) {
    Log("%s: %s; retrying in %.2f s (attempt %d)", what.c_str(), StatusText(s).c_str(), wait,
        failures_);
  }
  connected_ = false;
  next_try_ = now + Seconds(wait);
}

void WorkerDaemon::Impl::TryRegister(TimePoint now) {
  const std::string id = worker_id();
  absl::StatusOr<Registration> reg = conn_->Register(options_.capabilities, id);
  if (!id.empty() && reg.status().code() == absl::StatusCode::kNotFound) {
    // A coordinator that lost this worker's id and will not take it back: start afresh.
    Log("the coordinator does not know worker %s (%s); registering as a new worker", id.c_str(),
        std::string(reg.status().message()).c_str());
    {
      std::lock_guard<std::mutex> lock(mu_);
      worker_id_.clear();
    }
    next_try_ = now;
    return;
  }
  switch (Classify(reg.status())) {
    case Outcome::kOk:
      break;
    case Outcome::kAway:
      Disconnected(now, "register", reg.status());
      return;
    case Outcome::kFatal:
    case Outcome::kOther:  // e.g. capabilities refused: retrying cannot help
      Fatal("register", reg.status());
      return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    worker_id_ = reg->worker_id;
  }
  if (reg->worker_id != id) {
    if (absl::Status s = spool_->SaveWorkerId(reg->worker_id); !s.ok()) {
      Log("cannot save the worker id: %s", StatusText(s).c_str());
    }
  }
  heartbeat_interval_s_ = reg->heartbeat_interval_seconds > 0 ? reg->heartbeat_interval_seconds : 5;
  if (reg->lease_seconds > 0) {
    heartbeat_interval_s_ = std::min(heartbeat_interval_s_, reg->lease_seconds / 3);
  }
  Log("registered as %s%s (heartbeat every %.3g s)", reg->worker_id.c_str(),
      id.empty() ? "" : (id == reg->worker_id ? " again" : " (new id)"), heartbeat_interval_s_);
  registered_ = connected_ = true;
  failures_ = 0;
  next_heartbeat_ = now + Seconds(heartbeat_interval_s_);
  next_acquire_ = now;
}

void WorkerDaemon::Impl::Heartbeat(TimePoint now) {
  std::vector<int64_t> attempts;
  std::string id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    id = worker_id_;
    for (const auto& [attempt, trial] : running_) attempts.push_back(attempt);
    // Finished but unacknowledged results keep their leases alive while they wait.
    for (const SpooledResult& r : outbox_) {
      if (std::find(attempts.begin(), attempts.end(), r.attempt_id) == attempts.end()) {
        attempts.push_back(r.attempt_id);
      }
    }
  }
  absl::StatusOr<coordinator::HeartbeatReply> reply = conn_->Heartbeat(id, attempts);
  next_heartbeat_ = now + Seconds(heartbeat_interval_s_);
  if (reply.ok()) {
    if (!connected_) Log("the coordinator answers again");
    connected_ = true;
    failures_ = 0;
    std::lock_guard<std::mutex> lock(mu_);
    for (int64_t attempt : reply->stop_attempts) {
      auto it = running_.find(attempt);
      if (it == running_.end() || it->second->finished) continue;
      Log("stopping attempt %lld of trial %s as the coordinator asks",
          static_cast<long long>(attempt), it->second->assignment.trial_id.c_str());
      it->second->stopped_by_coordinator = true;
      it->second->runner->Stop();
    }
    return;
  }
  if (reply.status().code() == absl::StatusCode::kNotFound) {
    Log("the coordinator does not know worker %s; registering again", id.c_str());
    registered_ = false;
    next_try_ = now;
    return;
  }
  switch (Classify(reply.status())) {
    case Outcome::kAway:
    case Outcome::kOther:
      Disconnected(now, "heartbeat", reply.status());
      return;
    case Outcome::kFatal:
      Fatal("heartbeat", reply.status());
      return;
    case Outcome::kOk:
      return;
  }
}

void WorkerDaemon::Impl::SendResults() {
  for (;;) {
    SpooledResult item;
    std::string current_id;
    int32_t free_slots = 0;
    bool shutting_down = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (outbox_.empty()) return;
      item = outbox_.front();
      current_id = worker_id_;
      shutting_down = shutdown_;
      // The trial's last progress goes out ahead of its result: when the trial ended
      // between this pass's SendProgress and now, wait for the next pass (the trial wakes
      // the main loop once it is marked finished; SendProgress then sends it at once).
      auto running = running_.find(item.attempt_id);
      if (running != running_.end() && running->second->progress_dirty &&
          running->second->progress && !running->second->stopped_by_coordinator) {
        return;
      }
      // A trial whose result waits in the outbox has ended (its runner returned) even
      // before its thread marks it finished.
      free_slots = options_.max_concurrent_trials;
      for (const auto& [attempt, trial] : running_) {
        if (!trial->finished && attempt != item.attempt_id) --free_slots;
      }
    }
    const std::string& id = item.worker_id.empty() ? current_id : item.worker_id;
    // One call per trial: the result asks for the next trials (leased to the current id
    // only, so not for a result spooled under an earlier registration; and not once
    // shutting down: the last pass after Shutdown() must not start trials).
    const int32_t want =
        id == current_id && fatal_.ok() && !shutting_down ? std::max(0, free_slots) : 0;
    absl::StatusOr<std::vector<coordinator::TrialAssignment>> next =
        conn_->ReportResultAndAcquire(id, item.attempt_id, item.report, want);
    const absl::Status s = next.status();
    bool done = false;
    if (s.ok()) {
      done = true;
      // Slots still free (fewer given than asked, or a coordinator that predates the
      // piggy-backed assignments) are filled by Acquire on its usual schedule.
      for (const coordinator::TrialAssignment& a : *next) StartTrial(a);
    } else if (s.code() == absl::StatusCode::kFailedPrecondition) {
      Log("result of attempt %lld (trial %s) refused as stale; dropped: %s",
          static_cast<long long>(item.attempt_id), item.trial_id.c_str(),
          std::string(s.message()).c_str());
      done = true;
    } else {
      switch (Classify(s)) {
        case Outcome::kAway:
          Disconnected(SteadyClock::now(), "report result", s);
          return;
        case Outcome::kFatal:
          Fatal("report result", s);
          return;
        case Outcome::kOther:  // NotFound, InvalidArgument: resending cannot help
          Log("result of attempt %lld (trial %s) refused; dropped: %s",
              static_cast<long long>(item.attempt_id), item.trial_id.c_str(),
              StatusText(s).c_str());
          done = true;
          break;
        case Outcome::kOk:
          break;
      }
    }
    if (!done) return;
    if (absl::Status r = spool_->Remove(item.attempt_id); !r.ok()) {
      Log("%s", StatusText(r).c_str());
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (!outbox_.empty() && outbox_.front().attempt_id == item.attempt_id) outbox_.pop_front();
  }
}

void WorkerDaemon::Impl::SendProgress(TimePoint now) {
  struct Pending {
    int64_t attempt;
    TrialProgress progress;
  };
  std::vector<Pending> due;
  std::string id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    id = worker_id_;
    for (auto& [attempt, trial] : running_) {
      if (!trial->progress_dirty || !trial->progress) continue;
      if (trial->stopped_by_coordinator) {
        trial->progress_dirty = false;
        continue;
      }
      // A finished trial's last progress goes out at once, ahead of its result.
      if (!trial->finished &&
          now - trial->last_progress_report < Seconds(options_.progress_interval_seconds) &&
          trial->last_progress_report != TimePoint{}) {
        continue;
      }
      due.push_back({attempt, *trial->progress});
      trial->progress_dirty = false;
      trial->last_progress_report = now;
    }
  }
  for (const Pending& p : due) {
    const absl::Status s = conn_->ReportProgress(id, p.attempt, p.progress.requests_done,
                                                 p.progress.requests_total, p.progress.elapsed_s);
    if (s.ok()) continue;
    if (s.code() == absl::StatusCode::kFailedPrecondition) {
      Log("attempt %lld is stale (%s); stopping it", static_cast<long long>(p.attempt),
          std::string(s.message()).c_str());
      std::lock_guard<std::mutex> lock(mu_);
      auto it = running_.find(p.attempt);
      if (it != running_.end()) {
        it->second->stopped_by_coordinator = true;
        it->second->runner->Stop();
      }
      continue;
    }
    switch (Classify(s)) {
      case Outcome::kAway:
        Disconnected(now, "report progress", s);
        return;
      case Outcome::kFatal:
        Fatal("report progress", s);
        return;
      case Outcome::kOther:
        Log("progress of attempt %lld refused: %s", static_cast<long long>(p.attempt),
            StatusText(s).c_str());
        break;
      case Outcome::kOk:
        break;
    }
  }
}

void WorkerDaemon::Impl::Acquire(TimePoint now) {
  int32_t capacity;
  std::string id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    capacity = options_.max_concurrent_trials - static_cast<int32_t>(running_.size());
    id = worker_id_;
  }
  if (capacity <= 0) return;
  absl::StatusOr<std::vector<coordinator::TrialAssignment>> got =
      conn_->AcquireTrials(id, capacity);
  if (!got.ok()) {
    next_acquire_ = now + Seconds(options_.acquire_interval_seconds);
    if (got.status().code() == absl::StatusCode::kNotFound) {
      Log("the coordinator does not know worker %s; registering again", id.c_str());
      registered_ = false;
      next_try_ = now;
      return;
    }
    switch (Classify(got.status())) {
      case Outcome::kAway:
        Disconnected(now, "acquire trials", got.status());
        return;
      case Outcome::kFatal:
        Fatal("acquire trials", got.status());
        return;
      case Outcome::kOther:
        Log("acquire trials: %s", StatusText(got.status()).c_str());
        return;
      case Outcome::kOk:
        return;
    }
  }
  for (const coordinator::TrialAssignment& a : *got) StartTrial(a);
  // A full answer may mean more is waiting; an empty one means wait.
  next_acquire_ = got->empty() ? now + Seconds(options_.acquire_interval_seconds) : now;
}

void WorkerDaemon::Impl::StartTrial(const coordinator::TrialAssignment& assignment) {
  auto trial = std::make_unique<Trial>();
  trial->assignment = assignment;
  TrialRunnerOptions runner_options;
  runner_options.kvscope_binary = options_.kvscope_binary;
  runner_options.stop_grace_seconds = options_.stop_grace_seconds;
  {
    std::lock_guard<std::mutex> lock(mu_);
    trial->lease_worker_id = worker_id_;
  }
  if (assignment.gang && assignment.gang->world_size > 1) {
    runner_options.gang = {assignment.gang->rank, assignment.gang->world_size};
    runner_options.gang_listen_host = options_.advertise_host;
    runner_options.rendezvous = GangHooks(assignment, trial->lease_worker_id);
  }
  trial->runner = std::make_unique<TrialRunner>(
      runner_options, assignment, options_.work_dir + "/" + AttemptDirName(assignment));
  Trial* raw = trial.get();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (running_.count(assignment.attempt_id) != 0) {
      Log("attempt %lld is already running; ignored",
          static_cast<long long>(assignment.attempt_id));
      return;
    }
    running_[assignment.attempt_id] = std::move(trial);
  }
  Log("running trial %s (experiment %s, attempt %lld, #%d%s)", assignment.trial_id.c_str(),
      assignment.experiment_id.c_str(), static_cast<long long>(assignment.attempt_id),
      assignment.attempt_number,
      assignment.gang ? absl::StrCat(", rank ", assignment.gang->rank, " of ",
                                     assignment.gang->world_size, " of gang ",
                                     assignment.gang->gang_id)
                            .c_str()
                      : "");
  raw->thread = std::thread([this, raw] { TrialMain(raw); });
}

RendezvousHooks WorkerDaemon::Impl::GangHooks(const coordinator::TrialAssignment& assignment,
                                              const std::string& lease_worker_id) {
  const coordinator::GangPlacement gang = *assignment.gang;
  const int64_t attempt = assignment.attempt_id;
  // Time and backoff on the trial thread: its own generator (rng_ is the main thread's).
  auto wait_seconds = [this](int32_t failures) {
    std::mt19937_64 rng(static_cast<uint64_t>(failures) * 7919 + options_.backoff_seed);
    return BackoffSeconds(failures, options_.backoff_base_seconds,
                          std::min(options_.backoff_max_seconds, 5.0), &rng);
  };
  // Sleeps up to `seconds`, waking early once `stopped()`; false when stopped.
  auto nap = [](double seconds, const std::function<bool()>& stopped) {
    const auto until = SteadyClock::now() + Seconds(seconds);
    while (SteadyClock::now() < until) {
      if (stopped()) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return !stopped();
  };
  RendezvousHooks hooks;
  hooks.publish = [this, gang, attempt, lease_worker_id, wait_seconds,
                   nap](const std::string& blob) -> absl::Status {
    // Rank 0's child waits for the others only so long; no point publishing later.
    const auto deadline =
        SteadyClock::now() + Seconds(std::min(options_.rendezvous_timeout_seconds, 60.0));
    for (int32_t failures = 1;; ++failures) {
      const absl::Status s = conn_->PublishRendezvous(lease_worker_id, attempt, gang.gang_id, blob);
      if (s.ok()) {
        Log("attempt %lld: published the rendezvous of gang %s", static_cast<long long>(attempt),
            gang.gang_id.c_str());
        return s;
      }
      if (Classify(s) != Outcome::kAway || s.code() == absl::StatusCode::kAborted ||
          SteadyClock::now() >= deadline) {
        return s;
      }
      if (!nap(wait_seconds(failures), [] { return false; })) return s;
    }
  };
  hooks.await = [this, gang, attempt, lease_worker_id, wait_seconds, nap](
                    const std::function<bool()>& stopped) -> absl::StatusOr<std::string> {
    const auto deadline = SteadyClock::now() + Seconds(options_.rendezvous_timeout_seconds);
    int32_t failures = 0;
    for (;;) {
      if (stopped()) return absl::CancelledError("stopped while waiting for rank 0");
      if (SteadyClock::now() >= deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat("rank 0 published no rendezvous within ",
                         options_.rendezvous_timeout_seconds, " s"));
      }
      absl::StatusOr<coordinator::Rendezvous> r =
          conn_->AwaitRendezvous(lease_worker_id, attempt, gang.gang_id, gang.rank);
      if (r.ok()) return r->blob;
      const absl::StatusCode code = r.status().code();
      if (code == absl::StatusCode::kDeadlineExceeded) continue;  // not yet published
      if (code == absl::StatusCode::kAborted || Classify(r.status()) != Outcome::kAway) {
        return r.status();  // the attempt ended, is stale, or the call was refused
      }
      if (!nap(wait_seconds(++failures), stopped)) {
        return absl::CancelledError("stopped while waiting for rank 0");
      }
    }
  };
  return hooks;
}

void WorkerDaemon::Impl::TrialMain(Trial* trial) {
  coordinator::ResultReport report = trial->runner->Run([this, trial](const TrialProgress& p) {
    std::lock_guard<std::mutex> lock(mu_);
    trial->progress = p;
    trial->progress_dirty = true;
  });
  const coordinator::TrialAssignment& a = trial->assignment;
  bool report_it;
  {
    std::lock_guard<std::mutex> lock(mu_);
    report_it = !trial->stopped_by_coordinator;
    if (trial->stopped_by_shutdown && !report.succeeded) {
      report.error = absl::StrCat("the worker shut down while the trial ran (", report.error, ")");
    }
  }
  if (report_it) {
    Log("trial %s attempt %lld %s", a.trial_id.c_str(), static_cast<long long>(a.attempt_id),
        report.succeeded ? "succeeded" : absl::StrCat("failed: ", report.error).c_str());
    SpooledResult spooled{trial->lease_worker_id, a.experiment_id, a.trial_id, a.attempt_id,
                          std::move(report)};
    if (absl::Status s = spool_->Put(spooled); !s.ok()) {
      Log("cannot spool the result of attempt %lld (%s); it is kept in memory only",
          static_cast<long long>(a.attempt_id), StatusText(s).c_str());
    }
    std::lock_guard<std::mutex> lock(mu_);
    outbox_.push_back(std::move(spooled));
  } else {
    Log("attempt %lld of trial %s stopped; its result is not reported",
        static_cast<long long>(a.attempt_id), a.trial_id.c_str());
  }
  if (!options_.keep_attempt_dirs) {
    std::error_code ec;
    std::filesystem::remove_all(trial->runner->work_dir(), ec);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    trial->finished = true;
    wake_ = true;
  }
  cv_.notify_all();
}

void WorkerDaemon::Impl::ReapFinished() {
  std::vector<std::unique_ptr<Trial>> done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = running_.begin(); it != running_.end();) {
      // Kept until its last progress is sent (or cannot be, the coordinator being away).
      if (it->second->finished && (!it->second->progress_dirty || !connected_)) {
        done.push_back(std::move(it->second));
        it = running_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (std::unique_ptr<Trial>& t : done) t->thread.join();
}

absl::Status WorkerDaemon::Impl::Run() {
  {
    absl::StatusOr<std::vector<SpooledResult>> spooled = spool_->List();
    if (!spooled.ok()) return spooled.status();
    std::lock_guard<std::mutex> lock(mu_);
    worker_id_ = spool_->LoadWorkerId();
    for (SpooledResult& r : *spooled) outbox_.push_back(std::move(r));
    if (!outbox_.empty()) {
      Log("%zu result(s) from an earlier run wait in %s", outbox_.size(), spool_->dir().c_str());
    }
  }
  next_try_ = SteadyClock::now();
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (shutdown_) break;
    }
    if (!fatal_.ok()) break;
    ReapFinished();
    TimePoint now = SteadyClock::now();
    if (!registered_) {
      if (now >= next_try_) TryRegister(now);
    } else if (!connected_) {
      if (now >= next_try_) Heartbeat(now);  // the probe
    } else if (now >= next_heartbeat_) {
      Heartbeat(now);
    }
    if (registered_ && connected_ && fatal_.ok()) SendProgress(SteadyClock::now());
    if (registered_ && connected_ && fatal_.ok()) SendResults();
    if (registered_ && connected_ && fatal_.ok() && SteadyClock::now() >= next_acquire_) {
      Acquire(SteadyClock::now());
    }
    if (!fatal_.ok()) break;

    // Sleep until the next thing is due, a trial finishes, or Shutdown().
    now = SteadyClock::now();
    TimePoint until = now + Seconds(1);
    if (!registered_ || !connected_) {
      until = std::min(until, next_try_);
    } else {
      until = std::min(until, next_heartbeat_);
      until = std::min(until, next_acquire_);
      until = std::min(until, now + Seconds(std::min(options_.progress_interval_seconds, 0.25)));
    }
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_until(lock, until, [&] { return wake_ || shutdown_; });
    wake_ = false;
  }

  // Stop what still runs; its results are spooled (and sent below when possible).
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [attempt, trial] : running_) {
      if (trial->finished) continue;
      trial->stopped_by_shutdown = true;
      trial->runner->Stop();
    }
  }
  std::vector<std::thread*> threads;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [attempt, trial] : running_) threads.push_back(&trial->thread);
  }
  for (std::thread* t : threads) t->join();
  {
    std::lock_guard<std::mutex> lock(mu_);
    running_.clear();
  }
  if (fatal_.ok() && registered_ && connected_) SendResults();  // one pass, no retries
  return fatal_;
}

WorkerDaemon::WorkerDaemon(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
WorkerDaemon::~WorkerDaemon() = default;

absl::StatusOr<std::unique_ptr<WorkerDaemon>> WorkerDaemon::Create(WorkerDaemonOptions options) {
  if (options.connection == nullptr) {
    return absl::InvalidArgumentError("worker daemon: no coordinator connection");
  }
  if (options.work_dir.empty()) return absl::InvalidArgumentError("worker daemon: no work dir");
  if (options.max_concurrent_trials < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "worker daemon: max_concurrent_trials must be >= 1, got ", options.max_concurrent_trials));
  }
  if (!(options.backoff_base_seconds > 0) ||
      !(options.backoff_max_seconds >= options.backoff_base_seconds)) {
    return absl::InvalidArgumentError(
        "worker daemon: need 0 < backoff_base_seconds <= backoff_max_seconds");
  }
  std::error_code ec;
  std::filesystem::create_directories(options.work_dir, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("worker daemon: cannot create work dir ",
                                            options.work_dir, ": ", ec.message()));
  }
  if (options.spool_dir.empty()) options.spool_dir = options.work_dir + "/spool";
  KVSCOPE_ASSIGN_OR_RETURN(std::unique_ptr<ResultSpool> spool,
                           ResultSpool::Open(options.spool_dir));
  return std::unique_ptr<WorkerDaemon>(
      new WorkerDaemon(std::make_unique<Impl>(std::move(options), std::move(spool))));
}

absl::Status WorkerDaemon::Run() { return impl_->Run(); }
void WorkerDaemon::Shutdown() { impl_->Shutdown(); }
std::string WorkerDaemon::worker_id() const { return impl_->worker_id(); }
std::vector<int64_t> WorkerDaemon::RunningAttempts() const { return impl_->RunningAttempts(); }

}  // namespace kvscope::worker

// File: tests/worker/fake_connection.h
//
// A scripted CoordinatorConnection for the daemon tests: it hands out queued assignments,
// can answer Unavailable / NotFound / FailedPrecondition / Unauthenticated where told, and
// records every call.
#ifndef KVSCOPE_TESTS_WORKER_FAKE_CONNECTION_H_
#define KVSCOPE_TESTS_WORKER_FAKE_CONNECTION_H_

#include <chrono>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "worker/coordinator_connection.h"

namespace kvscope::worker {

class FakeConnection : public CoordinatorConnection {
 public:
  struct Progress {
    int64_t attempt_id, done, total;
  };

  // --- Script (any thread). ---
  void FailRegistrations(int n) {
    Lock l(mu_);
    register_failures_ = n;
  }
  void RefuseRegistrations(absl::Status s) {
    Lock l(mu_);
    register_refusal_ = s;
  }
  void ForgetWorkerOnce() {
    Lock l(mu_);
    forget_once_ = true;
  }
  void SetDown(bool down) {
    Lock l(mu_);
    down_ = down;
  }
  void AddAssignment(coordinator::TrialAssignment a) {
    Lock l(mu_);
    queue_.push_back(a);
  }
  void StopAttempt(int64_t attempt) {
    Lock l(mu_);
    stop_.insert(attempt);
  }
  void SetResultStatus(int64_t attempt, absl::Status s) {
    Lock l(mu_);
    result_status_[attempt] = s;
  }
  void SetAllResultsUnavailable(bool v) {
    Lock l(mu_);
    results_unavailable_ = v;
  }
  void SetHeartbeatInterval(double s) {
    Lock l(mu_);
    interval_ = s;
  }
  // ReportResultAndAcquire hands out queued assignments (as a coordinator that knows
  // max_next_trials); off, it answers with none (as an older coordinator).
  void SetPiggyback(bool on) {
    Lock l(mu_);
    piggyback_ = on;
  }

  // --- Records (any thread). ---
  std::vector<std::string> register_ids() const {
    Lock l(mu_);
    return register_ids_;
  }
  std::vector<double> register_times() const {
    Lock l(mu_);
    return register_times_;
  }
  int heartbeats() const {
    Lock l(mu_);
    return heartbeats_;
  }
  std::vector<int64_t> last_heartbeat_attempts() const {
    Lock l(mu_);
    return last_hb_;
  }
  std::map<int64_t, coordinator::ResultReport> results() const {
    Lock l(mu_);
    return results_;
  }
  int result_calls(int64_t attempt) const {
    Lock l(mu_);
    auto it = result_calls_.find(attempt);
    return it == result_calls_.end() ? 0 : it->second;
  }
  std::vector<std::string> result_worker_ids() const {
    Lock l(mu_);
    return result_worker_ids_;
  }
  std::vector<Progress> progress() const {
    Lock l(mu_);
    return progress_;
  }
  // max_next_trials of each ReportResultAndAcquire, by attempt, in call order.
  std::map<int64_t, std::vector<int32_t>> next_asks() const {
    Lock l(mu_);
    return next_asks_;
  }
  int acquired_by_acquire() const {
    Lock l(mu_);
    return acquired_by_acquire_;
  }
  int acquired_by_report() const {
    Lock l(mu_);
    return acquired_by_report_;
  }

  // --- CoordinatorConnection. ---
  absl::StatusOr<Registration> Register(const coordinator::WorkerCapabilities& caps,
                                        const std::string& worker_id) override {
    Lock l(mu_);
    register_ids_.push_back(worker_id);
    register_times_.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count());
    if (!register_refusal_.ok()) return register_refusal_;
    if (down_) return absl::UnavailableError("fake: down");
    if (register_failures_ > 0) {
      --register_failures_;
      return absl::UnavailableError("fake: not yet");
    }
    Registration r;
    r.worker_id = worker_id.empty() ? "w-" + std::to_string(++next_id_) : worker_id;
    r.heartbeat_interval_seconds = interval_;
    r.lease_seconds = 30;
    known_.insert(r.worker_id);
    return r;
  }
  absl::StatusOr<coordinator::HeartbeatReply> Heartbeat(
      const std::string& worker_id, const std::vector<int64_t>& running) override {
    Lock l(mu_);
    ++heartbeats_;
    if (down_) return absl::UnavailableError("fake: down");
    if (forget_once_ || known_.count(worker_id) == 0) {
      forget_once_ = false;
      known_.erase(worker_id);
      return absl::NotFoundError("fake: unknown worker " + worker_id);
    }
    last_hb_ = running;
    coordinator::HeartbeatReply reply;
    for (int64_t a : running) {
      if (stop_.count(a) != 0) reply.stop_attempts.push_back(a);
    }
    return reply;
  }
  absl::StatusOr<std::vector<coordinator::TrialAssignment>> AcquireTrials(
      const std::string& worker_id, int32_t max_trials) override {
    Lock l(mu_);
    if (down_) return absl::UnavailableError("fake: down");
    std::vector<coordinator::TrialAssignment> out;
    while (!queue_.empty() && static_cast<int32_t>(out.size()) < max_trials) {
      out.push_back(queue_.front());
      queue_.pop_front();
    }
    acquired_by_acquire_ += static_cast<int>(out.size());
    return out;
  }
  absl::Status ReportProgress(const std::string& worker_id, int64_t attempt_id, int64_t done,
                              int64_t total, double elapsed_s) override {
    Lock l(mu_);
    if (down_) return absl::UnavailableError("fake: down");
    progress_.push_back({attempt_id, done, total});
    return absl::OkStatus();
  }
  absl::Status ReportResult(const std::string& worker_id, int64_t attempt_id,
                            const coordinator::ResultReport& report) override {
    Lock l(mu_);
    ++result_calls_[attempt_id];
    if (down_ || results_unavailable_) return absl::UnavailableError("fake: down");
    result_worker_ids_.push_back(worker_id);
    auto it = result_status_.find(attempt_id);
    if (it != result_status_.end() && !it->second.ok()) return it->second;
    results_[attempt_id] = report;
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<coordinator::TrialAssignment>> ReportResultAndAcquire(
      const std::string& worker_id, int64_t attempt_id, const coordinator::ResultReport& report,
      int32_t max_next_trials) override {
    {
      Lock l(mu_);
      next_asks_[attempt_id].push_back(max_next_trials);
    }
    if (absl::Status s = ReportResult(worker_id, attempt_id, report); !s.ok()) return s;
    Lock l(mu_);
    std::vector<coordinator::TrialAssignment> out;
    while (piggyback_ && !queue_.empty() && static_cast<int32_t>(out.size()) < max_next_trials) {
      out.push_back(queue_.front());
      queue_.pop_front();
    }
    acquired_by_report_ += static_cast<int>(out.size());
    return out;
  }

 private:
  using Lock = std::lock_guard<std::mutex>;
  mutable std::mutex mu_;
  int register_failures_ = 0;
  absl::Status register_refusal_;
  bool forget_once_ = false, down_ = false, results_unavailable_ = false, piggyback_ = false;
  std::map<int64_t, std::vector<int32_t>> next_asks_;
  int acquired_by_acquire_ = 0, acquired_by_report_ = 0;
  double interval_ = 0.02;
  int next_id_ = 0;
  std::set<std::string> known_;
  std::deque<coordinator::TrialAssignment> queue_;
  std::set<int64_t> stop_;
  std::map<int64_t, absl::Status> result_status_;
  std::vector<std::string> register_ids_;
  std::vector<double> register_times_;
  int heartbeats_ = 0;
  std::vector<int64_t> last_hb_;
  std::map<int64_t, coordinator::ResultReport> results_;
  std::map<int64_t, int> result_calls_;
  std::vector<std::string> result_worker_ids_;
  std::vector<Progress> progress_;
};

}  // namespace kvscope::worker

#endif  // KVSCOPE_TESTS_WORKER_FAKE_CONNECTION_H_

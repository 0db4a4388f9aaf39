// The worker daemon against the real Coordinator (coordinator/coordinator.h) in this
// process, through a CoordinatorConnection that calls it directly, running the real kvscope
// binary: a small sweep runs to completion, and a cancel stops a running trial.
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"

#include "common/clock.h"
#include "coordinator/coordinator.h"
#include "coordinator/store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"
#include "tests/worker/worker_test_util.h"
#include "worker/capabilities.h"
#include "worker/worker_daemon.h"

namespace kvscope::worker {
namespace {

using ::kvscope::testing::FreshWorkerTestDir;
using ::kvscope::testing::KvscopeBinary;
using ::kvscope::testing::SpooledFiles;
using ::kvscope::testing::WaitFor;

constexpr double kHeartbeatSeconds = 0.05;

class DirectConnection : public CoordinatorConnection {
 public:
  explicit DirectConnection(coordinator::Coordinator* c) : c_(c) {}
  absl::StatusOr<Registration> Register(const coordinator::WorkerCapabilities& caps,
                                        const std::string& worker_id) override {
    absl::StatusOr<std::string> id = c_->RegisterWorker(caps, worker_id);
    if (!id.ok()) return id.status();
    Registration r;
    r.worker_id = *id;
    r.heartbeat_interval_seconds = kHeartbeatSeconds;
    r.lease_seconds = 30;
    return r;
  }
  absl::StatusOr<coordinator::HeartbeatReply> Heartbeat(
      const std::string& worker_id, const std::vector<int64_t>& running) override {
    return c_->Heartbeat(worker_id, running);
  }
  absl::StatusOr<std::vector<coordinator::TrialAssignment>> AcquireTrials(
      const std::string& worker_id, int32_t max_trials) override {
    absl::StatusOr<std::vector<coordinator::TrialAssignment>> got =
        c_->AcquireTrials(worker_id, max_trials);
    if (got.ok()) acquired_by_acquire += static_cast<int>(got->size());
    return got;
  }
  absl::Status ReportProgress(const std::string& worker_id, int64_t attempt_id, int64_t done,
                              int64_t total, double elapsed_s) override {
    return c_->ReportProgress(worker_id, attempt_id, done, total, elapsed_s);
  }
  absl::Status ReportResult(const std::string& worker_id, int64_t attempt_id,
                            const coordinator::ResultReport& report) override {
    return c_->ReportResult(worker_id, attempt_id, report);
  }
  absl::StatusOr<std::vector<coordinator::TrialAssignment>> ReportResultAndAcquire(
      const std::string& worker_id, int64_t attempt_id, const coordinator::ResultReport& report,
      int32_t max_next_trials) override {
    absl::StatusOr<std::vector<coordinator::TrialAssignment>> next =
        c_->ReportResultAndAcquire(worker_id, attempt_id, report, max_next_trials);
    if (next.ok()) acquired_by_report += static_cast<int>(next->size());
    return next;
  }

  absl::Status PublishRendezvous(const std::string& worker_id, int64_t attempt_id,
                                 const std::string& gang_id, const std::string& blob) override {
    return c_->PublishRendezvous(worker_id, attempt_id, gang_id, blob);
  }
  absl::StatusOr<coordinator::Rendezvous> AwaitRendezvous(const std::string& worker_id,
                                                          int64_t attempt_id,
                                                          const std::string& gang_id,
                                                          int32_t rank) override {
    return c_->AwaitRendezvous(worker_id, attempt_id, gang_id, rank, /*timeout_seconds=*/1);
  }

  // Trials leased through AcquireTrials, and through result reports (one call per trial).
  std::atomic<int> acquired_by_acquire{0}, acquired_by_report{0};

 private:
  coordinator::Coordinator* c_;
};

class CoordinatorInProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = FreshWorkerTestDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    absl::StatusOr<std::unique_ptr<coordinator::Store>> store =
        coordinator::Store::Open(dir_ + "/coordinator.db");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    coordinator::CoordinatorOptions options;
    options.heartbeat_interval_seconds = kHeartbeatSeconds;
    absl::StatusOr<std::unique_ptr<coordinator::Coordinator>> c =
        coordinator::Coordinator::Create(store_.get(), &RealClock::Get(), options);
    ASSERT_TRUE(c.ok()) << c.status();
    coordinator_ = std::move(*c);
    connection_ = std::make_unique<DirectConnection>(coordinator_.get());
  }
  void TearDown() override {
    if (thread_.joinable()) {
      daemon_->Shutdown();
      thread_.join();
    }
    EXPECT_TRUE(run_status_.ok()) << run_status_;
    if (second_thread_.joinable()) {
      second_daemon_->Shutdown();
      second_thread_.join();
    }
    EXPECT_TRUE(second_run_status_.ok()) << second_run_status_;
  }
  // A second worker on the same coordinator (gangs need distinct workers).
  void StartSecondDaemon(int32_t max_trials) {
    std::unique_ptr<WorkerDaemon> first = std::move(daemon_);
    std::thread first_thread = std::move(thread_);
    StartDaemon(max_trials, "/work2");
    second_daemon_ = std::move(daemon_);
    second_thread_ = std::move(thread_);
    daemon_ = std::move(first);
    thread_ = std::move(first_thread);
  }
  void StartDaemon(int32_t max_trials, const std::string& work = "/work") {
    CapabilityOptions capability_options;
    capability_options.max_cpu_trials = max_trials;
    absl::StatusOr<coordinator::WorkerCapabilities> caps = DetectCapabilities(capability_options);
    ASSERT_TRUE(caps.ok()) << caps.status();
    WorkerDaemonOptions options;
    options.connection = connection_.get();
    options.capabilities = *caps;
    options.work_dir = dir_ + work;
    options.kvscope_binary = KvscopeBinary();
    options.max_concurrent_trials = max_trials;
    options.backoff_base_seconds = 0.01;
    options.backoff_max_seconds = 0.1;
    options.acquire_interval_seconds = 0.02;
    options.progress_interval_seconds = 0.05;
    options.stop_grace_seconds = 1;
    absl::StatusOr<std::unique_ptr<WorkerDaemon>> daemon = WorkerDaemon::Create(options);
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    daemon_ = std::move(*daemon);
    absl::Status* status = work == "/work" ? &run_status_ : &second_run_status_;
    thread_ = std::thread([d = daemon_.get(), status] { *status = d->Run(); });
  }
  coordinator::ExperimentInfo Info(const std::string& id) {
    absl::StatusOr<coordinator::ExperimentInfo> info = coordinator_->GetExperiment(id);
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? *info : coordinator::ExperimentInfo{};
  }

  std::string dir_;
  std::unique_ptr<coordinator::Store> store_;
  std::unique_ptr<coordinator::Coordinator> coordinator_;
  std::unique_ptr<DirectConnection> connection_;
  std::unique_ptr<WorkerDaemon> daemon_;
  std::thread thread_;
  absl::Status run_status_;
  std::unique_ptr<WorkerDaemon> second_daemon_;
  std::thread second_thread_;
  absl::Status second_run_status_;
};

TEST_F(CoordinatorInProcessTest, RunsASweepToCompletion) {
  const std::string sweep =
      "name: in-process\n"
      "model: {preset: llama-tiny}\n"
      "memory: {kv_bytes: 4MiB}\n"
      "workload: {num_requests: 3, input_len: 16, output_len: 4}\n"
      "threads: 1\n"
      "matrix:\n"
      "  strategy: [{name: paged}, {name: h2o, kv_budget: 0.5}]\n"
      "repeats: 2\n"
      "seed: 5\n";
  absl::StatusOr<std::string> id = coordinator_->Submit(sweep, "in-process.yaml");
  ASSERT_TRUE(id.ok()) << id.status();
  StartDaemon(2);
  ASSERT_TRUE(
      WaitFor([&] { return Info(*id).state != coordinator::ExperimentState::kRunning; }, 40));
  const coordinator::ExperimentInfo info = Info(*id);
  EXPECT_EQ(info.state, coordinator::ExperimentState::kSucceeded);
  EXPECT_EQ(info.succeeded, 4);
  EXPECT_EQ(info.failed, 0);
  absl::StatusOr<std::vector<coordinator::TrialResult>> results = coordinator_->Results(*id);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), 4u);
  for (const coordinator::TrialResult& r : *results) {
    EXPECT_TRUE(r.result.contains("summary")) << r.trial_id;
    EXPECT_FALSE(r.requests_jsonl.empty()) << r.trial_id;
  }
  absl::StatusOr<std::vector<coordinator::TrialInfo>> trials = coordinator_->ListTrials(*id);
  ASSERT_TRUE(trials.ok());
  for (const coordinator::TrialInfo& t : *trials) {
    EXPECT_EQ(t.attempts.size(), 1u) << t.trial_id;  // nothing ran twice
    // The last progress went out ahead of the result.
    EXPECT_EQ(t.requests_total, 3) << t.trial_id;
    EXPECT_EQ(t.requests_done, 3) << t.trial_id;
  }
  // Every acknowledged result left the spool.
  EXPECT_TRUE(WaitFor([&] { return SpooledFiles(dir_ + "/work/spool") == 0; }));
}

// A busy worker makes one call per trial: each result report brings the next trial, so
// only the first trial comes from AcquireTrials.
TEST_F(CoordinatorInProcessTest, ResultReportsBringTheNextTrial) {
  const std::string sweep =
      "name: one-call\n"
      "model: {preset: llama-tiny}\n"
      "memory: {kv_bytes: 4MiB}\n"
      "workload: {num_requests: 2, input_len: 16, output_len: 4}\n"
      "threads: 1\n"
      "matrix:\n"
      "  request_rate: [1, 2, 3]\n"
      "seed: 5\n";
  absl::StatusOr<std::string> id = coordinator_->Submit(sweep, "one-call.yaml");
  ASSERT_TRUE(id.ok()) << id.status();
  StartDaemon(1);
  ASSERT_TRUE(
      WaitFor([&] { return Info(*id).state != coordinator::ExperimentState::kRunning; }, 40));
  EXPECT_EQ(Info(*id).succeeded, 3);
  EXPECT_EQ(connection_->acquired_by_acquire.load(), 1);
  EXPECT_EQ(connection_->acquired_by_report.load(), 2);
  absl::StatusOr<std::vector<coordinator::TrialInfo>> trials = coordinator_->ListTrials(*id);
  ASSERT_TRUE(trials.ok());
  for (const coordinator::TrialInfo& t : *trials) {
    EXPECT_EQ(t.attempts.size(), 1u) << t.trial_id;
  }
}

// A trial whose tensor-parallel group spans two workers: rank 0 on one daemon publishes its
// child's address, rank 1 on the other waits for it, and the two `kvscope bench` processes
// serve the requests together. Same tokens as the same tp in one process.
TEST_F(CoordinatorInProcessTest, GangTrialSpansTwoWorkers) {
  const std::string sweep =
      "name: gang\n"
      "model: {preset: llama-tiny}\n"
      "memory: {kv_bytes: 4MiB}\n"
      "workload: {num_requests: 3, input_len: 16, output_len: 4}\n"
      "threads: 1\n"
      "tp: 2\n"
      "matrix:\n"
      "  nodes: [1, 2]\n"
      "seed: 5\n";
  absl::StatusOr<std::string> id = coordinator_->Submit(sweep, "gang.yaml");
  ASSERT_TRUE(id.ok()) << id.status();
  StartDaemon(1);
  StartSecondDaemon(1);
  ASSERT_TRUE(
      WaitFor([&] { return Info(*id).state != coordinator::ExperimentState::kRunning; }, 60));
  const coordinator::ExperimentInfo info = Info(*id);
  EXPECT_EQ(info.state, coordinator::ExperimentState::kSucceeded);
  EXPECT_EQ(info.succeeded, 2);
  absl::StatusOr<std::vector<coordinator::TrialResult>> results = coordinator_->Results(*id);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), 2u);
  // Trial order follows the axis: nodes 1, then nodes 2.
  EXPECT_FALSE((*results)[0].result["config"].contains("nodes"));
  EXPECT_EQ((*results)[1].result["config"]["nodes"], 2);
  auto output_ids = [](const std::string& jsonl) {
    std::vector<std::string> ids;
    for (absl::string_view line : absl::StrSplit(jsonl, '\n', absl::SkipEmpty())) {
      const nlohmann::json r = nlohmann::json::parse(line, nullptr, false);
      ids.push_back(r.is_object() && r.contains("output_ids") ? r["output_ids"].dump() : "?");
    }
    return ids;
  };
  const std::vector<std::string> one = output_ids((*results)[0].requests_jsonl);
  ASSERT_EQ(one.size(), 3u);
  EXPECT_EQ(output_ids((*results)[1].requests_jsonl), one);
  absl::StatusOr<std::vector<coordinator::TrialInfo>> trials = coordinator_->ListTrials(*id);
  ASSERT_TRUE(trials.ok());
  for (const coordinator::TrialInfo& t : *trials) {
    EXPECT_EQ(t.attempts.size(), 1u) << t.trial_id;  // nothing ran twice
  }
  // Both workers end idle: rank 1's report released its hold.
  EXPECT_TRUE(WaitFor([&] {
    return daemon_->RunningAttempts().empty() && second_daemon_->RunningAttempts().empty();
  }));
}

TEST_F(CoordinatorInProcessTest, CancelStopsTheRunningTrial) {
  // A trial that would take minutes: requests arrive at 2/s.
  const std::string sweep =
      "name: long\n"
      "model: {preset: llama-tiny}\n"
      "memory: {kv_bytes: 4MiB}\n"
      "workload: {num_requests: 1000, arrival: constant, input_len: 16, output_len: 4}\n"
      "threads: 1\n"
      "matrix:\n"
      "  request_rate: [2]\n";
  absl::StatusOr<std::string> id = coordinator_->Submit(sweep, "long.yaml");
  ASSERT_TRUE(id.ok()) << id.status();
  StartDaemon(1);
  // Running: the daemon has it and the coordinator saw its progress.
  ASSERT_TRUE(WaitFor(
      [&] { return daemon_->RunningAttempts().size() == 1 && Info(*id).running == 1; }, 30));
  ASSERT_TRUE(coordinator_->Cancel(*id).ok());
  EXPECT_TRUE(WaitFor([&] { return daemon_->RunningAttempts().empty(); }, 30));
  EXPECT_EQ(Info(*id).state, coordinator::ExperimentState::kCancelled);
  EXPECT_EQ(Info(*id).cancelled, 1);
}

}  // namespace
}  // namespace kvscope::worker

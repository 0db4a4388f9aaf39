// The transport-free Coordinator over a real SQLite file and a FakeClock: the trial state
// machine, leases and fencing, idempotent results, cancellation, restart, placement and
// concurrent workers.
#include "coordinator/coordinator.h"

#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>


#include "common/clock.h"
#include "coordinator/store.h"
#include "gtest/gtest.h"
#include "tests/coordinator/coordinator_test_util.h"

namespace kvscope::coordinator {
namespace {

using testing::CpuWorker;
using testing::Failure;
using testing::GpuWorker;
using testing::StoreWriteLock;
using testing::Success;

constexpr double kLease = 30;

TrialRequirements Cpu() { return TrialRequirements(); }

TrialRequirements Cuda(int32_t gpus, int64_t gpu_memory_bytes = 0, std::string model = "") {
  TrialRequirements r;
  r.backend = "cuda";
  r.gpus = gpus;
  r.gpu_memory_bytes = gpu_memory_bytes;
  r.model_path = std::move(model);
  return r;
}

Sweep MakeSweep(int n, const TrialRequirements& requirements, int32_t max_attempts = 3) {
  Sweep sweep;
  sweep.name = "test";
  sweep.max_attempts = max_attempts;
  sweep.axis_names = {"request_rate"};
  for (int i = 0; i < n; ++i) {
    TrialSpec t;
    t.index = i;
    t.axes = {{"request_rate", i}};
    t.label = "request_rate=" + std::to_string(i) + " repeat=0";
    t.config_yaml = "seed: " + std::to_string(i) + "\n";
    t.requirements = requirements;
    sweep.trials.push_back(t);
  }
  return sweep;
}

class CoordinatorTest : public testing::CoordinatorFixture {
 protected:
  CoordinatorTest() { options_.lease_seconds = kLease; }
  std::vector<std::string> EventKinds(const std::string& experiment) {
    std::vector<std::string> kinds;
    auto events = store_->ListEvents(experiment);
    EXPECT_TRUE(events.ok()) << events.status();
    if (!events.ok()) return kinds;
    for (const EventRow& e : *events) kinds.push_back(e.kind);
    return kinds;
  }

};

TEST(StateNamesTest, RoundTrip) {
  for (TrialState s : {TrialState::kPending, TrialState::kLeased, TrialState::kRunning,
                       TrialState::kSucceeded, TrialState::kFailed, TrialState::kCancelled}) {
    EXPECT_EQ(TrialStateFromName(TrialStateName(s)), s);
  }
  EXPECT_EQ(ExperimentStateFromName("cancelled"), ExperimentState::kCancelled);
  EXPECT_FALSE(TrialStateFromName("bogus").has_value());
}

TEST_F(CoordinatorTest, FullStateMachine) {
  const std::string e = Submit(MakeSweep(2, Cpu()));
  EXPECT_EQ(e, "e1");
  ExperimentInfo info = Info(e);
  EXPECT_EQ(info.state, ExperimentState::kRunning);
  EXPECT_EQ(info.num_trials, 2);
  EXPECT_EQ(info.pending, 2);
  int64_t version = info.version;

  const std::string w = Register(CpuWorker());
  auto a = Acquire(w, 4);
  ASSERT_EQ(a.size(), 1u);  // max_cpu_trials = 1
  EXPECT_EQ(a[0].trial_id, "e1.t0");
  EXPECT_EQ(a[0].experiment_id, e);
  EXPECT_EQ(a[0].attempt_number, 1);
  EXPECT_EQ(a[0].config_yaml, "seed: 0\n");
  EXPECT_EQ(a[0].lease_seconds, kLease);
  EXPECT_TRUE(a[0].gpu_indices.empty());
  info = Info(e);
  EXPECT_EQ(info.leased, 1);
  EXPECT_EQ(info.pending, 1);
  EXPECT_GT(info.version, version);
  version = info.version;
  EXPECT_EQ(Trial(e, 0).state, TrialState::kLeased);

  ASSERT_TRUE(coordinator_->ReportProgress(w, a[0].attempt_id, 3, 10, 1.5).ok());
  info = Info(e);
  EXPECT_EQ(info.running, 1);
  EXPECT_GT(info.version, version);
  TrialInfo t = Trial(e, 0);
  EXPECT_EQ(t.state, TrialState::kRunning);
  EXPECT_EQ(t.requests_done, 3);
  EXPECT_EQ(t.requests_total, 10);
  ASSERT_TRUE(coordinator_->ReportProgress(w, a[0].attempt_id, 7, 10, 2.5).ok());
  EXPECT_EQ(Trial(e, 0).requests_done, 7);

  ASSERT_TRUE(coordinator_->ReportResult(w, a[0].attempt_id, Success(11)).ok());
  t = Trial(e, 0);
  EXPECT_EQ(t.state, TrialState::kSucceeded);
  ASSERT_EQ(t.attempts.size(), 1u);
  EXPECT_EQ(t.attempts[0].state, "succeeded");
  EXPECT_EQ(t.attempts[0].worker_id, w);
  EXPECT_EQ(t.axes["request_rate"], 0);
  // Progress that crossed its result changes nothing and is not refused; from another
  // worker it is stale.
  ASSERT_TRUE(coordinator_->ReportProgress(w, a[0].attempt_id, 10, 10, 3).ok());
  EXPECT_EQ(Trial(e, 0).requests_done, 7);
  EXPECT_EQ(Trial(e, 0).state, TrialState::kSucceeded);

  auto b = Acquire(w, 4);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b[0].trial_id, "e1.t1");
  EXPECT_NE(b[0].attempt_id, a[0].attempt_id);
  ASSERT_TRUE(coordinator_->ReportResult(w, b[0].attempt_id, Success(22)).ok());
  info = Info(e);
  EXPECT_EQ(info.state, ExperimentState::kSucceeded);
  EXPECT_EQ(info.succeeded, 2);
  EXPECT_TRUE(Acquire(w, 4).empty());

  auto results = coordinator_->Results(e);
  ASSERT_TRUE(results.ok());
  ASSERT_EQ(results->size(), 2u);
  EXPECT_EQ((*results)[0].trial_id, "e1.t0");
  EXPECT_EQ((*results)[0].result["summary"]["throughput"], 11);
  EXPECT_EQ((*results)[1].attempt_id, b[0].attempt_id);
  EXPECT_EQ((*results)[1].requests_jsonl, "{\"id\":0}\n");

  const std::vector<std::string> kinds = EventKinds(e);
  for (const char* kind : {"submit", "lease", "running", "result", "finish"}) {
    EXPECT_NE(std::find(kinds.begin(), kinds.end(), kind), kinds.end()) << kind;
  }
  auto list = coordinator_->ListExperiments();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].experiment_id, e);
}

TEST_F(CoordinatorTest, UnknownIdsAreNotFound) {
  EXPECT_EQ(coordinator_->GetExperiment("e42").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(coordinator_->Cancel("e42").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(coordinator_->Heartbeat("w9", {}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(coordinator_->AcquireTrials("w9", 1).status().code(), absl::StatusCode::kNotFound);
  const std::string w = Register(CpuWorker());
  EXPECT_EQ(coordinator_->ReportResult(w, 12345, Success()).code(), absl::StatusCode::kNotFound);
}

TEST_F(CoordinatorTest, HeartbeatsRenewLeasesAndExpiryGivesANewAttempt) {
  const std::string e = Submit(MakeSweep(1, Cpu()));
  const std::string w1 = Register(CpuWorker());
  const std::string w2 = Register(CpuWorker());
  auto a = Acquire(w1, 1);
  ASSERT_EQ(a.size(), 1u);
  // Renewed by heartbeats: 2 x 20 s without expiry.
  clock_.AdvanceSeconds(20);
  auto hb = coordinator_->Heartbeat(w1, {a[0].attempt_id});
  ASSERT_TRUE(hb.ok());
  EXPECT_TRUE(hb->stop_attempts.empty());
  clock_.AdvanceSeconds(20);
  ASSERT_TRUE(coordinator_->ExpireLeases().ok());
  EXPECT_EQ(Trial(e, 0).state, TrialState::kLeased);
  // Renewed by progress.
  clock_.AdvanceSeconds(20);
  ASSERT_TRUE(coordinator_->ReportProgress(w1, a[0].attempt_id, 1, 5, 1).ok());
  clock_.AdvanceSeconds(20);
  ASSERT_TRUE(coordinator_->ExpireLeases().ok());
  EXPECT_EQ(Trial(e, 0).state, TrialState::kRunning);
  // Not renewed for a full period: expired, pending again.
  clock_.AdvanceSeconds(kLease - 20);
  ASSERT_TRUE(coordinator_->ExpireLeases().ok());
  TrialInfo t = Trial(e, 0);
  EXPECT_EQ(t.state, TrialState::kPending);
  ASSERT_EQ(t.attempts.size(), 1u);
  EXPECT_EQ(t.attempts[0].state, "expired");
  EXPECT_NE(t.attempts[0].error.find("lease expired"), std::string::npos) << t.attempts[0].error;
  const std::vector<std::string> kinds = EventKinds(e);
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "expiry"), kinds.end());

  auto b = Acquire(w2, 1);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b[0].trial_id, a[0].trial_id);
  EXPECT_EQ(b[0].attempt_number, 2);
  EXPECT_GT(b[0].attempt_id, a[0].attempt_id);
  // The old holder is told to stop.
  hb = coordinator_->Heartbeat(w1, {a[0].attempt_id});
  ASSERT_TRUE(hb.ok());
  EXPECT_EQ(hb->stop_attempts, std::vector<int64_t>{a[0].attempt_id});
}

TEST_F(CoordinatorTest, StaleAttemptsAreFenced) {
  const std::string e = Submit(MakeSweep(1, Cpu()));
  const std::string w1 = Register(CpuWorker());
  const std::string w2 = Register(CpuWorker());
  auto a = Acquire(w1, 1);
  ASSERT_EQ(a.size(), 1u);
  clock_.AdvanceSeconds(kLease + 1);
  ASSERT_TRUE(coordinator_->ExpireLeases().ok());
  auto b = Acquire(w2, 1);
  ASSERT_EQ(b.size(), 1u);

  absl::Status progress = coordinator_->ReportProgress(w1, a[0].attempt_id, 5, 5, 9);
  EXPECT_EQ(progress.code(), absl::StatusCode::kFailedPrecondition) << progress;
  EXPECT_NE(progress.message().find("stale attempt"), std::string::npos) << progress;
  absl::Status late = coordinator_->ReportResult(w1, a[0].attempt_id, Success(1));
  EXPECT_EQ(late.code(), absl::StatusCode::kFailedPrecondition) << late;
  EXPECT_NE(late.message().find("stale attempt"), std::string::npos) << late;
  // Another worker naming the current attempt is refused as well.
  EXPECT_EQ(coordinator_->ReportResult(w1, b[0].attempt_id, Success(1)).code(),
            absl::StatusCode::kFailedPrecondition);

  ASSERT_TRUE(coordinator_->ReportResult(w2, b[0].attempt_id, Success(2)).ok());
  // Late again, after the re-run succeeded.
  EXPECT_EQ(coordinator_->ReportResult(w1, a[0].attempt_id, Success(1)).code(),
            absl::StatusCode::kFailedPrecondition);
  auto results = coordinator_->Results(e);
  ASSERT_TRUE(results.ok());
  ASSERT_EQ(results->size(), 1u);
  EXPECT_EQ((*results)[0].attempt_id, b[0].attempt_id);
  EXPECT_EQ((*results)[0].result["summary"]["throughput"], 2);
}

TEST_F(CoordinatorTest, DuplicateResultIsAcknowledgedAndStoredOnce) {
  const std::string e = Submit(MakeSweep(1, Cpu()));
  const std::string w = Register(CpuWorker());
  auto a = Acquire(w, 1);
  ASSERT_EQ(a.size(), 1u);
  ASSERT_TRUE(coordinator_->ReportResult(w, a[0].attempt_id, Success(5)).ok());
  const int64_t version = Info(e).version;
  ASSERT_TRUE(coordinator_->ReportResult(w, a[0].attempt_id, Success(5)).ok());
  EXPECT_EQ(*store_->CountResults(a[0].trial_id), 1);
  EXPECT_EQ(Info(e).version, version);
  // A failure report for the succeeded attempt is not a duplicate.
  EXPECT_EQ(coordinator_->ReportResult(w, a[0].attempt_id, Failure("x")).code(),
            absl::StatusCode::kFailedPrecondition);
  // Still idempotent after a restart.
  Open();
  ASSERT_TRUE(coordinator_->ReportResult(w, a[0].attempt_id, Success(5)).ok());
  EXPECT_EQ(*store_->CountResults(a[0].trial_id), 1);
  EXPECT_EQ(coordinator_->Results(e)->size(), 1u);
}

TEST_F(CoordinatorTest, FailsAfterMaxAttemptsWithEachReason) {
  const std::string e = Submit(MakeSweep(2, Cpu(), /*max_attempts=*/3));
  const std::string w = Register(CpuWorker());
  auto a1 = Acquire(w, 1);
  ASSERT_EQ(a1.size(), 1u);
  ASSERT_TRUE(coordinator_->ReportResult(w, a1[0].attempt_id, Failure("exit status 3")).ok());
  EXPECT_EQ(Trial(e, 0).state, TrialState::kPending);
  auto a2 = Acquire(w, 1);
  ASSERT_EQ(a2.size(), 1u);
  EXPECT_EQ(a2[0].trial_id, a1[0].trial_id);  // the retried trial comes first again
  EXPECT_EQ(a2[0].attempt_number, 2);
  clock_.AdvanceSeconds(kLease);
  ASSERT_TRUE(coordinator_->ExpireLeases().ok());
  auto a3 = Acquire(w, 1);
  ASSERT_EQ(a3.size(), 1u);
  EXPECT_EQ(a3[0].attempt_number, 3);
  ASSERT_TRUE(coordinator_->ReportResult(w, a3[0].attempt_id, Failure("killed by signal 9")).ok());

  TrialInfo t = Trial(e, 0);
  EXPECT_EQ(t.state, TrialState::kFailed);
  ASSERT_EQ(t.attempts.size(), 3u);
  EXPECT_EQ(t.attempts[0].state, "failed");
  EXPECT_EQ(t.attempts[1].state, "expired");
  EXPECT_EQ(t.attempts[2].state, "failed");
  for (const char* reason : {"exit status 3", "lease expired", "killed by signal 9",
                             "attempt 1", "attempt 2", "attempt 3"}) {
    EXPECT_NE(t.error.find(reason), std::string::npos) << reason << " in " << t.error;
  }
  // The other trial is unaffected; once it succeeds the experiment is failed.
  EXPECT_EQ(Trial(e, 1).state, TrialState::kPending);
  auto b = Acquire(w, 1);
  ASSERT_EQ(b.size(), 1u);
  ASSERT_TRUE(coordinator_->ReportResult(w, b[0].attempt_id, Success()).ok());
  ExperimentInfo info = Info(e);
  EXPECT_EQ(info.state, ExperimentState::kFailed);
  EXPECT_EQ(info.failed, 1);
  EXPECT_EQ(info.succeeded, 1);
}

TEST_F(CoordinatorTest, CancelStopsPendingAtOnceAndRunningAtTheNextHeartbeat) {
  const std::string e = Submit(MakeSweep(3, Cpu()));
  const std::string w = Register(CpuWorker(2));
  auto a = Acquire(w, 2);
  ASSERT_EQ(a.size(), 2u);
  ASSERT_TRUE(coordinator_->ReportProgress(w, a[0].attempt_id, 1, 10, 1).ok());
  ASSERT_TRUE(coordinator_->Cancel(e).ok());
  ExperimentInfo info = Info(e);
  EXPECT_EQ(info.state, ExperimentState::kCancelled);
  EXPECT_EQ(info.cancelled, 3);
  auto hb = coordinator_->Heartbeat(w, {a[0].attempt_id, a[1].attempt_id});
  ASSERT_TRUE(hb.ok());
  std::vector<int64_t> stop = hb->stop_attempts;
  std::sort(stop.begin(), stop.end());
  EXPECT_EQ(stop, (std::vector<int64_t>{a[0].attempt_id, a[1].attempt_id}));
  EXPECT_EQ(coordinator_->ReportResult(w, a[0].attempt_id, Success()).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Trial(e, 0).attempts[0].state, "cancelled");
  EXPECT_TRUE(Acquire(w, 2).empty());
  EXPECT_TRUE(coordinator_->Cancel(e).ok());  // idempotent
  const std::vector<std::string> kinds = EventKinds(e);
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "cancel"), kinds.end());
  // The worker's slots are free for other experiments.
  const std::string e2 = Submit(MakeSweep(2, Cpu()));
  EXPECT_EQ(Acquire(w, 5).size(), 2u);
  EXPECT_EQ(Info(e2).leased, 2);
}

TEST_F(CoordinatorTest, RestartResumesWhereItStopped) {
  const std::string e = Submit(MakeSweep(4, Cpu()));
  const std::string w = Register(CpuWorker(4));
  auto a = Acquire(w, 3);
  ASSERT_EQ(a.size(), 3u);
  ASSERT_TRUE(coordinator_->ReportResult(w, a[0].attempt_id, Success(7)).ok());
  ASSERT_TRUE(coordinator_->ReportProgress(w, a[1].attempt_id, 2, 4, 1).ok());
  clock_.AdvanceSeconds(kLease - 1);  // the leases are about to expire

  Open();  // coordinator and store destroyed and reopened on the same file
  ExperimentInfo info = Info(e);
  EXPECT_EQ(info.succeeded, 1);
  EXPECT_EQ(info.running, 1);
  EXPECT_EQ(info.leased, 1);
  EXPECT_EQ(info.pending, 1);
  ASSERT_EQ(coordinator_->Results(e)->size(), 1u);
  EXPECT_EQ(Trial(e, 1).requests_done, 2);
  auto workers = coordinator_->ListWorkers();
  ASSERT_TRUE(workers.ok());
  ASSERT_EQ(workers->size(), 1u);
  EXPECT_EQ((*workers)[0].worker_id, w);
  EXPECT_EQ((*workers)[0].running_trials.size(), 2u);

  // Leases found at start get a fresh full period.
  clock_.AdvanceSeconds(kLease - 1);
  ASSERT_TRUE(coordinator_->ExpireLeases().ok());
  EXPECT_EQ(Info(e).running + Info(e).leased, 2);
  // The worker carries on without registering again.
  auto hb = coordinator_->Heartbeat(w, {a[1].attempt_id, a[2].attempt_id});
  ASSERT_TRUE(hb.ok()) << hb.status();
  EXPECT_TRUE(hb->stop_attempts.empty());
  // The worker's two slots in use are remembered: 4 - 2 = 2 free, 1 pending trial.
  auto b = Acquire(w, 4);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_GT(b[0].attempt_id, a[2].attempt_id);  // attempt ids are never reused
  for (int64_t id : {a[1].attempt_id, a[2].attempt_id, b[0].attempt_id}) {
    ASSERT_TRUE(coordinator_->ReportResult(w, id, Success()).ok());
  }
  EXPECT_EQ(Info(e).state, ExperimentState::kSucceeded);
  EXPECT_EQ(coordinator_->Results(e)->size(), 4u);
  // New experiments get fresh ids after a restart.
  Open();
  EXPECT_EQ(Submit(MakeSweep(1, Cpu())), "e2");
  EXPECT_EQ(Info(e).state, ExperimentState::kSucceeded);
}

TEST_F(CoordinatorTest, EightGpuWorkerTakesTwoTp4Trials) {
  const std::string e = Submit(MakeSweep(3, Cuda(4)));
  const std::string w = Register(GpuWorker(8));
  auto a = Acquire(w, 5);
  ASSERT_EQ(a.size(), 2u);
  std::set<int32_t> gpus;
  for (const auto& x : a) {
    EXPECT_EQ(x.gpu_indices.size(), 4u);
    gpus.insert(x.gpu_indices.begin(), x.gpu_indices.end());
  }
  EXPECT_EQ(gpus, (std::set<int32_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_TRUE(Acquire(w, 5).empty());  // no third
  ASSERT_TRUE(coordinator_->ReportResult(w, a[1].attempt_id, Success()).ok());
  auto b = Acquire(w, 5);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b[0].gpu_indices, a[1].gpu_indices);
  EXPECT_EQ(Info(e).leased, 2);
}

TEST_F(CoordinatorTest, PlacementChecksBackendModelAndGpuMemory) {
  const int64_t gib = int64_t{1} << 30;
  Sweep sweep = MakeSweep(3, Cpu());
  sweep.trials[0].requirements = Cuda(1);
  sweep.trials[1].requirements = Cuda(1, 0, "/models/llama-8b");
  sweep.trials[2].requirements = Cuda(2, 40 * gib);
  const std::string e = Submit(sweep);

  // A CPU-only worker gets none of the CUDA trials.
  const std::string cpu = Register(CpuWorker(4));
  EXPECT_TRUE(Acquire(cpu, 5).empty());
  // 24 GiB GPUs without the model: only trial 0.
  const std::string small = Register(GpuWorker(4, 24 * gib));
  auto a = Acquire(small, 5);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].trial_id, "e1.t0");
  // A worker that has the model (written with a trailing slash) and two 80 GiB GPUs among
  // two 24 GiB ones.
  WorkerCapabilities mixed = GpuWorker(4, 24 * gib);
  mixed.gpus[1].memory_bytes = 80 * gib;
  mixed.gpus[3].memory_bytes = 80 * gib;
  mixed.models = {"/models/llama-8b/"};
  const std::string big = Register(mixed);
  auto b = Acquire(big, 5);
  ASSERT_EQ(b.size(), 2u);
  EXPECT_EQ(b[0].trial_id, "e1.t1");
  EXPECT_EQ(b[0].gpu_indices, std::vector<int32_t>{0});
  EXPECT_EQ(b[1].trial_id, "e1.t2");
  EXPECT_EQ(b[1].gpu_indices, (std::vector<int32_t>{1, 3}));
  EXPECT_EQ(Info(e).pending, 0);
}

TEST_F(CoordinatorTest, MaxCpuTrialsLimitsCpuLeases) {
  const std::string e = Submit(MakeSweep(5, Cpu()));
  const std::string w = Register(CpuWorker(2));
  auto a = Acquire(w, 10);
  ASSERT_EQ(a.size(), 2u);
  EXPECT_TRUE(Acquire(w, 10).empty());
  ASSERT_TRUE(coordinator_->ReportResult(w, a[0].attempt_id, Failure("boom")).ok());
  EXPECT_EQ(Acquire(w, 10).size(), 1u);
  EXPECT_EQ(Info(e).leased, 2);
}

TEST_F(CoordinatorTest, WorkersAreListedWithLiveness) {
  const std::string w1 = Register(CpuWorker());
  const std::string w2 = Register(GpuWorker(2));
  EXPECT_EQ(w1, "w1");
  EXPECT_EQ(w2, "w2");
  // Registering again with a known id keeps it; an unknown id gets a new one.
  auto again = coordinator_->RegisterWorker(CpuWorker(3), w1);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, w1);
  clock_.AdvanceSeconds(kLease / 2);
  ASSERT_TRUE(coordinator_->Heartbeat(w2, {}).ok());
  clock_.AdvanceSeconds(kLease / 2 + 1);
  auto workers = coordinator_->ListWorkers();
  ASSERT_TRUE(workers.ok());
  ASSERT_EQ(workers->size(), 2u);
  EXPECT_EQ((*workers)[0].worker_id, w1);
  EXPECT_FALSE((*workers)[0].alive);
  EXPECT_EQ((*workers)[0].capabilities.max_cpu_trials, 3);
  EXPECT_TRUE((*workers)[1].alive);
  EXPECT_EQ((*workers)[1].capabilities.gpus.size(), 2u);
  // Capabilities survive a restart.
  ASSERT_TRUE(coordinator_->ExpireLeases().ok());  // writes heartbeat times
  Open();
  workers = coordinator_->ListWorkers();
  ASSERT_EQ(workers->size(), 2u);
  EXPECT_EQ((*workers)[1].capabilities.gpus[1].name, "H100");
  EXPECT_EQ((*workers)[0].capabilities.backends, std::vector<std::string>{"cpu"});
}

TEST_F(CoordinatorTest, WaitForChangeWakesOnChange) {
  const std::string e = Submit(MakeSweep(1, Cpu()));
  const std::string w = Register(CpuWorker());
  const int64_t version = Info(e).version;
  // Returns at once when the version is already newer.
  auto now = coordinator_->WaitForChange(e, version - 1, 60);
  ASSERT_TRUE(now.ok());
  EXPECT_EQ(now->version, version);
  // Times out with the same version when nothing changes.
  auto same = coordinator_->WaitForChange(e, version, 0.01);
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(same->version, version);
  // Wakes on a change made by another thread (a long timeout: no timing assumption).
  absl::StatusOr<ExperimentInfo> woken;
  std::thread waiter([&] { woken = coordinator_->WaitForChange(e, version, 60); });
  auto a = Acquire(w, 1);
  waiter.join();
  ASSERT_TRUE(woken.ok());
  EXPECT_GT(woken->version, version);
  EXPECT_EQ(coordinator_->WaitForChange("e99", 0, 0).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(CoordinatorTest, InvalidSweepStoresNothing) {
  auto id = coordinator_->Submit("name: [unclosed\nmatrix: {", "bad.yaml");
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(id.status().message().find("bad.yaml"), std::string::npos) << id.status();
  id = coordinator_->Submit("name: x\nmodel: {preset: llama-tiny}\nmatrix: {nope: [1]}\n",
                            "bad2.yaml");
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(coordinator_->ListExperiments()->empty());
  EXPECT_TRUE(store_->LoadExperiments()->empty());
  EXPECT_TRUE(store_->ListEvents("")->empty());
}

TEST_F(CoordinatorTest, SubmitsAParsedSweepFile) {
  const std::string yaml =
      "name: quickstart\n"
      "model: {preset: llama-tiny}\n"
      "memory: {kv_bytes: 4MiB}\n"
      "workload: {num_requests: 4, arrival: poisson, input_len: 16, output_len: 4}\n"
      "matrix:\n"
      "  strategy: [{name: paged}, {name: h2o, kv_budget: 0.2}]\n"
      "  request_rate: [2, 8]\n"
      "repeats: 2\n"
      "seed: 7\n";
  auto id = coordinator_->Submit(yaml, "quickstart.yaml");
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(Info(*id).num_trials, 8);
  auto trials = coordinator_->ListTrials(*id);
  ASSERT_TRUE(trials.ok());
  ASSERT_EQ(trials->size(), 8u);
  EXPECT_TRUE((*trials)[0].axes.contains("strategy"));
  EXPECT_FALSE((*trials)[0].label.empty());
  EXPECT_EQ(*store_->GetSweepYaml(*id), yaml);
  const std::string w = Register(CpuWorker());
  auto a = Acquire(w, 1);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_NE(a[0].config_yaml.find("seed"), std::string::npos) << a[0].config_yaml;
}

// A commit that fails is not acknowledged, and the coordinator stops taking changes until a
// restart rebuilds it from the file (here: another connection holds the write lock).
TEST_F(CoordinatorTest, FailedCommitIsNotAcknowledgedAndStopsChanges) {
  StoreOptions options;
  options.busy_timeout_seconds = 0.05;
  Open(options);
  const std::string e = Submit(MakeSweep(2, Cpu()));
  const std::string w = Register(CpuWorker());
  auto a = Acquire(w, 1);
  ASSERT_EQ(a.size(), 1u);

  StoreWriteLock other(path_);
  absl::Status report = coordinator_->ReportResult(w, a[0].attempt_id, Success());
  EXPECT_FALSE(report.ok());
  absl::Status next = coordinator_->ExpireLeases();
  EXPECT_EQ(next.code(), absl::StatusCode::kUnavailable) << next;
  EXPECT_NE(next.message().find("restart"), std::string::npos) << next;
  EXPECT_EQ(coordinator_->AcquireTrials(w, 1).status().code(), absl::StatusCode::kUnavailable);
  other.Release();

  Open();  // the unacknowledged result is not there; the worker's retry is
  EXPECT_EQ(Trial(e, 0).state, TrialState::kLeased);
  EXPECT_TRUE(coordinator_->Results(e)->empty());
  ASSERT_TRUE(coordinator_->ReportResult(w, a[0].attempt_id, Success()).ok());
  EXPECT_EQ(coordinator_->Results(e)->size(), 1u);
}

// Several workers acquire and report at once: every trial is leased exactly once.
TEST_F(CoordinatorTest, ConcurrentWorkersLeaseEachTrialOnce) {
  constexpr int kTrials = 120;
  constexpr int kThreads = 6;
  const std::string e = Submit(MakeSweep(kTrials, Cpu()));
  std::vector<std::string> workers;
  for (int i = 0; i < kThreads; ++i) workers.push_back(Register(CpuWorker(3)));
  std::mutex mu;
  std::map<std::string, int> leased;  // trial id -> times
  std::set<int64_t> attempt_ids;
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      for (;;) {
        auto a = coordinator_->AcquireTrials(workers[i], 3);
        if (!a.ok()) {
          ++errors;
          return;
        }
        if (a->empty()) return;  // nothing pending any more (nothing can come back)
        for (const TrialAssignment& x : *a) {
          {
            std::lock_guard<std::mutex> lock(mu);
            leased[x.trial_id]++;
            attempt_ids.insert(x.attempt_id);
          }
          if (!coordinator_->Heartbeat(workers[i], {x.attempt_id}).ok()) ++errors;
          if (!coordinator_->ReportResult(workers[i], x.attempt_id, Success()).ok()) ++errors;
        }
      }
    });
  }
  std::thread expirer([&] {
    for (int i = 0; i < 20; ++i) {
      if (!coordinator_->ExpireLeases().ok()) ++errors;
    }
  });
  for (auto& t : threads) t.join();
  expirer.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(leased.size(), static_cast<size_t>(kTrials));
  for (const auto& [trial, times] : leased) EXPECT_EQ(times, 1) << trial;
  EXPECT_EQ(attempt_ids.size(), static_cast<size_t>(kTrials));
  ExperimentInfo info = Info(e);
  EXPECT_EQ(info.succeeded, kTrials);
  EXPECT_EQ(info.state, ExperimentState::kSucceeded);
  EXPECT_EQ(coordinator_->Results(e)->size(), static_cast<size_t>(kTrials));
}

// One call per trial: a report that asks for the next trial leases it, durably, with its
// config; asking for none leases nothing; an empty queue gives an empty list.
TEST_F(CoordinatorTest, ReportResultAndAcquireReturnsTheNextAssignment) {
  const std::string e = Submit(MakeSweep(3, Cpu()));
  const std::string w = Register(CpuWorker());
  auto a = Acquire(w, 1);
  ASSERT_EQ(a.size(), 1u);

  auto next = coordinator_->ReportResultAndAcquire(w, a[0].attempt_id, Success(1), 1);
  ASSERT_TRUE(next.ok()) << next.status();
  ASSERT_EQ(next->size(), 1u);
  const TrialAssignment& b = (*next)[0];
  EXPECT_EQ(b.trial_id, Trial(e, 1).trial_id);
  EXPECT_EQ(b.experiment_id, e);
  EXPECT_EQ(b.attempt_number, 1);
  EXPECT_EQ(b.config_yaml, "seed: 1\n");
  EXPECT_EQ(b.lease_seconds, kLease);
  EXPECT_NE(b.attempt_id, a[0].attempt_id);
  ExperimentInfo info = Info(e);
  EXPECT_EQ(info.succeeded, 1);
  EXPECT_EQ(info.leased, 1);
  EXPECT_EQ(info.pending, 1);

  // Both the result and the new lease are durable: a restart keeps them.
  Open();
  EXPECT_EQ(Trial(e, 0).state, TrialState::kSucceeded);
  EXPECT_EQ(Trial(e, 1).state, TrialState::kLeased);
  ASSERT_EQ(Trial(e, 1).attempts.size(), 1u);
  EXPECT_EQ(Trial(e, 1).attempts[0].attempt_id, b.attempt_id);
  EXPECT_EQ(Trial(e, 1).attempts[0].worker_id, w);

  // max_next_trials = 0 is a plain report.
  auto none = coordinator_->ReportResultAndAcquire(w, b.attempt_id, Success(2), 0);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());
  EXPECT_EQ(Trial(e, 2).state, TrialState::kPending);

  auto c = Acquire(w, 1);
  ASSERT_EQ(c.size(), 1u);
  auto last = coordinator_->ReportResultAndAcquire(w, c[0].attempt_id, Success(3), 1);
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_TRUE(last->empty());  // nothing pending any more
  EXPECT_EQ(Info(e).state, ExperimentState::kSucceeded);
  EXPECT_EQ(coordinator_->Results(e)->size(), 3u);
}

// The worker's free capacity bounds what the piggy-backed acquisition leases, and a failed
// trial's report can get the next trial (the failed one is pending again).
TEST_F(CoordinatorTest, ReportResultAndAcquireRespectsCapacity) {
  const std::string e = Submit(MakeSweep(5, Cpu()));
  const std::string w = Register(CpuWorker(/*max_cpu_trials=*/2));
  auto a = Acquire(w, 2);
  ASSERT_EQ(a.size(), 2u);
  // One slot is freed by this report; asking for 3 still leases only 1.
  auto next = coordinator_->ReportResultAndAcquire(w, a[0].attempt_id, Failure("boom"), 3);
  ASSERT_TRUE(next.ok()) << next.status();
  ASSERT_EQ(next->size(), 1u);
  EXPECT_EQ((*next)[0].trial_id, a[0].trial_id);  // the oldest pending: the failed trial
  EXPECT_EQ((*next)[0].attempt_number, 2);
  EXPECT_EQ(Info(e).leased, 2);
}

// Fencing holds on the piggy-backed path: a stale attempt's report is refused and leases
// nothing, as is a report naming another worker's attempt; an unknown worker gets NotFound.
TEST_F(CoordinatorTest, StaleReportGetsNoNewAssignment) {
  const std::string e = Submit(MakeSweep(3, Cpu()));
  const std::string w1 = Register(CpuWorker());
  const std::string w2 = Register(CpuWorker());
  auto a = Acquire(w1, 1);
  ASSERT_EQ(a.size(), 1u);
  clock_.AdvanceSeconds(kLease + 1);
  ASSERT_TRUE(coordinator_->ExpireLeases().ok());
  auto b = Acquire(w2, 1);
  ASSERT_EQ(b.size(), 1u);
  ASSERT_EQ(b[0].trial_id, a[0].trial_id);
  ASSERT_EQ(Info(e).pending, 2);

  auto late = coordinator_->ReportResultAndAcquire(w1, a[0].attempt_id, Success(1), 1);
  EXPECT_EQ(late.status().code(), absl::StatusCode::kFailedPrecondition) << late.status();
  EXPECT_NE(late.status().message().find("stale attempt"), std::string::npos);
  auto foreign = coordinator_->ReportResultAndAcquire(w1, b[0].attempt_id, Success(1), 1);
  EXPECT_EQ(foreign.status().code(), absl::StatusCode::kFailedPrecondition);
  auto unknown = coordinator_->ReportResultAndAcquire("w-none", b[0].attempt_id, Success(1), 1);
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  ExperimentInfo info = Info(e);
  EXPECT_EQ(info.pending, 2);  // nothing was leased by the refused reports
  EXPECT_EQ(info.leased, 1);
  EXPECT_EQ(info.succeeded, 0);

  // The current attempt's report still goes through and gets the next trial.
  auto next = coordinator_->ReportResultAndAcquire(w2, b[0].attempt_id, Success(2), 1);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->size(), 1u);
  auto results = coordinator_->Results(e);
  ASSERT_TRUE(results.ok());
  ASSERT_EQ(results->size(), 1u);
  EXPECT_EQ((*results)[0].attempt_id, b[0].attempt_id);
}

// A retried success (its reply was lost) is acknowledged again and stored once.
TEST_F(CoordinatorTest, RetriedReportResultAndAcquireIsIdempotent) {
  const std::string e = Submit(MakeSweep(3, Cpu()));
  const std::string w = Register(CpuWorker());
  auto a = Acquire(w, 1);
  ASSERT_EQ(a.size(), 1u);
  auto first = coordinator_->ReportResultAndAcquire(w, a[0].attempt_id, Success(1), 1);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->size(), 1u);
  // The retry is acknowledged; the lost reply's lease keeps the worker's only slot, so it
  // gets nothing new until that lease expires.
  auto retry = coordinator_->ReportResultAndAcquire(w, a[0].attempt_id, Success(1), 1);
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_TRUE(retry->empty());
  EXPECT_EQ(*store_->CountResults(a[0].trial_id), 1);
  EXPECT_EQ(Info(e).succeeded, 1);
}

// The asynchronous forms report the same outcomes through their callback: refusals at once
// on the calling thread, changes once committed; destroying the coordinator completes the
// callbacks still waiting.
TEST_F(CoordinatorTest, AsyncFormsCallBackOnceWithTheOutcome) {
  const std::string e = Submit(MakeSweep(4, Cpu()));
  const std::string w = Register(CpuWorker());

  struct Outcome {
    std::mutex mu;
    std::condition_variable cv;
    int calls = 0;
    absl::StatusOr<std::vector<TrialAssignment>> value;
    void Set(absl::StatusOr<std::vector<TrialAssignment>> v) {
      std::lock_guard<std::mutex> lock(mu);
      ++calls;
      value = std::move(v);
      cv.notify_all();
    }
    void Wait() {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait_for(lock, std::chrono::seconds(10), [&] { return calls > 0; });
    }
  };
  Outcome acquired;
  coordinator_->AcquireTrialsAsync(
      w, 1, [&](absl::StatusOr<std::vector<TrialAssignment>> v) { acquired.Set(std::move(v)); });
  acquired.Wait();
  ASSERT_EQ(acquired.calls, 1);
  ASSERT_TRUE(acquired.value.ok()) << acquired.value.status();
  ASSERT_EQ(acquired.value->size(), 1u);
  EXPECT_EQ((*acquired.value)[0].config_yaml, "seed: 0\n");
  const int64_t attempt = (*acquired.value)[0].attempt_id;

  Outcome reported;
  coordinator_->ReportResultAndAcquireAsync(
      w, attempt, Success(1), 1,
      [&](absl::StatusOr<std::vector<TrialAssignment>> v) { reported.Set(std::move(v)); });
  reported.Wait();
  ASSERT_EQ(reported.calls, 1);
  ASSERT_TRUE(reported.value.ok()) << reported.value.status();
  ASSERT_EQ(reported.value->size(), 1u);
  EXPECT_EQ(Trial(e, 0).state, TrialState::kSucceeded);

  // A stale report: refused on this thread, before the call returns.
  Outcome stale;
  coordinator_->ReportResultAndAcquireAsync(
      w, attempt, Failure("late"), 1,
      [&](absl::StatusOr<std::vector<TrialAssignment>> v) { stale.Set(std::move(v)); });
  EXPECT_EQ(stale.calls, 1);
  EXPECT_EQ(stale.value.status().code(), absl::StatusCode::kFailedPrecondition);

  absl::Status progress_status = absl::UnknownError("not called");
  int progress_calls = 0;
  coordinator_->ReportProgressAsync(w, (*reported.value)[0].attempt_id, 1, 2, 0.5,
                                    [&](absl::Status s) {
                                      ++progress_calls;
                                      progress_status = s;
                                    });
  // Destroying the coordinator commits what is queued and runs the waiting callbacks.
  absl::StatusOr<std::string> registered = absl::UnknownError("not called");
  int register_calls = 0;
  coordinator_->RegisterWorkerAsync(CpuWorker(), "", [&](absl::StatusOr<std::string> id) {
    ++register_calls;
    registered = std::move(id);
  });
  coordinator_.reset();
  EXPECT_EQ(progress_calls, 1);
  EXPECT_TRUE(progress_status.ok()) << progress_status;
  EXPECT_EQ(register_calls, 1);
  ASSERT_TRUE(registered.ok()) << registered.status();
  Open();
  EXPECT_EQ(Trial(e, 1).state, TrialState::kRunning);
  auto workers = coordinator_->ListWorkers();
  ASSERT_TRUE(workers.ok());
  EXPECT_EQ(workers->size(), 2u);
}

// A failed commit reaches the asynchronous callers as Unavailable, not as success.
TEST_F(CoordinatorTest, AsyncCallbackSeesAFailedCommit) {
  StoreOptions options;
  options.busy_timeout_seconds = 0.05;
  Open(options);
  const std::string e = Submit(MakeSweep(2, Cpu()));
  const std::string w = Register(CpuWorker());
  auto a = Acquire(w, 1);
  ASSERT_EQ(a.size(), 1u);
  StoreWriteLock other(path_);
  std::mutex mu;
  std::condition_variable cv;
  bool called = false;
  absl::Status status;
  coordinator_->ReportResultAndAcquireAsync(
      w, a[0].attempt_id, Success(), 1, [&](absl::StatusOr<std::vector<TrialAssignment>> v) {
        std::lock_guard<std::mutex> lock(mu);
        called = true;
        status = v.status();
        cv.notify_all();
      });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait_for(lock, std::chrono::seconds(10), [&] { return called; });
  }
  other.Release();
  ASSERT_TRUE(called);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  Open();
  EXPECT_EQ(Trial(e, 0).state, TrialState::kLeased);
  EXPECT_EQ(Trial(e, 1).state, TrialState::kPending);
}

// Workers that make one call per trial (report + next) lease every trial exactly once.
TEST_F(CoordinatorTest, ConcurrentOneCallWorkersLeaseEachTrialOnce) {
  constexpr int kTrials = 120;
  constexpr int kThreads = 6;
  const std::string e = Submit(MakeSweep(kTrials, Cpu()));
  std::vector<std::string> workers;
  for (int i = 0; i < kThreads; ++i) workers.push_back(Register(CpuWorker(2)));
  std::mutex mu;
  std::map<std::string, int> leased;  // trial id -> times
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      auto got = coordinator_->AcquireTrials(workers[i], 2);
      if (!got.ok()) {
        ++errors;
        return;
      }
      std::vector<TrialAssignment> held = *got;
      while (!held.empty()) {
        TrialAssignment x = held.back();
        held.pop_back();
        {
          std::lock_guard<std::mutex> lock(mu);
          leased[x.trial_id]++;
        }
        const int32_t free_slots = 2 - static_cast<int32_t>(held.size());
        auto next = coordinator_->ReportResultAndAcquire(workers[i], x.attempt_id, Success(),
                                                         free_slots);
        if (!next.ok()) {
          ++errors;
          return;
        }
        held.insert(held.end(), next->begin(), next->end());
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(leased.size(), static_cast<size_t>(kTrials));
  for (const auto& [trial, times] : leased) EXPECT_EQ(times, 1) << trial;
  EXPECT_EQ(Info(e).succeeded, kTrials);
  EXPECT_EQ(Info(e).state, ExperimentState::kSucceeded);
}

// Rough per-call cost (printed, not asserted): each call waits for one commit (an fsync),
// and concurrent calls share commits.
TEST_F(CoordinatorTest, PerCallCost) {
  constexpr int kSequential = 100;
  const std::string e = Submit(MakeSweep(kSequential, Cpu()));
  const std::string w = Register(CpuWorker(1));
  double acquire_s = 0, report_s = 0;
  for (int i = 0; i < kSequential; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    auto a = coordinator_->AcquireTrials(w, 1);
    auto t1 = std::chrono::steady_clock::now();
    ASSERT_TRUE(a.ok() && a->size() == 1u);
    ASSERT_TRUE(coordinator_->ReportResult(w, (*a)[0].attempt_id, Success()).ok());
    auto t2 = std::chrono::steady_clock::now();
    acquire_s += std::chrono::duration<double>(t1 - t0).count();
    report_s += std::chrono::duration<double>(t2 - t1).count();
  }
  std::printf("one worker: AcquireTrials %.0f us/call, ReportResult %.0f us/call\n",
              acquire_s / kSequential * 1e6, report_s / kSequential * 1e6);
  EXPECT_EQ(Info(e).state, ExperimentState::kSucceeded);

  // 32 workers taking one instant trial at a time.
  constexpr int kWorkers = 32;
  constexpr int kTrials = 1000;
  const std::string e2 = Submit(MakeSweep(kTrials, Cpu()));
  std::vector<std::string> workers;
  for (int i = 0; i < kWorkers; ++i) workers.push_back(Register(CpuWorker(1)));
  std::atomic<int> errors{0};
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < kWorkers; ++i) {
    threads.emplace_back([&, i] {
      for (;;) {
        auto a = coordinator_->AcquireTrials(workers[i], 1);
        if (!a.ok()) ++errors;
        if (!a.ok() || a->empty()) return;
        if (!coordinator_->ReportResult(workers[i], (*a)[0].attempt_id, Success()).ok()) {
          ++errors;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%d workers: %.0f assignments/s (lease + result each)\n", kWorkers,
              kTrials / seconds);
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(Info(e2).succeeded, kTrials);
}

}  // namespace
}  // namespace kvscope::coordinator

// Gangs (multi-node trials) in the transport-free Coordinator over a real SQLite file and a
// FakeClock: all-or-nothing placement on distinct workers, capacity held by every rank,
// delivery of ranks > 0, per-rank leases, the end of an attempt when any rank fails or
// expires, rank > 0 reports, the rendezvous, and what a restart does to a gang in flight.
#include <stdlib.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <sqlite3.h>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "coordinator/coordinator.h"
#include "coordinator/store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/coordinator/coordinator_test_util.h"

namespace kvscope::coordinator {
namespace {

using ::testing::HasSubstr;
using testing::CpuWorker;
using testing::Failure;
using testing::GpuWorker;
using testing::StoreWriteLock;
using testing::Success;

constexpr double kLease = 30;
constexpr double kRendezvousWait = 10;

TrialRequirements Cpu(int32_t nodes = 1) {
  TrialRequirements r;
  r.nodes = nodes;
  return r;
}

TrialRequirements Cuda(int32_t gpus_per_rank, int32_t nodes) {
  TrialRequirements r;
  r.backend = "cuda";
  r.gpus = gpus_per_rank;
  r.nodes = nodes;
  return r;
}

// One trial per entry of `requirements`, in that order.
Sweep MakeSweep(const std::vector<TrialRequirements>& requirements, int32_t max_attempts = 3) {
  Sweep sweep;
  sweep.name = "gang";
  sweep.max_attempts = max_attempts;
  sweep.axis_names = {"i"};
  for (size_t i = 0; i < requirements.size(); ++i) {
    TrialSpec t;
    t.index = static_cast<int64_t>(i);
    t.axes = {{"i", i}};
    t.label = "i=" + std::to_string(i);
    t.config_yaml = "seed: " + std::to_string(i) + "\n";
    t.requirements = requirements[i];
    sweep.trials.push_back(t);
  }
  return sweep;
}

// What a rank > 0 reports when its follower process exited 0: no result.
ResultReport FollowerDone() {
  ResultReport r;
  r.succeeded = true;
  return r;
}

class GangTest : public testing::CoordinatorFixture {
 protected:
  GangTest() {
    options_.lease_seconds = kLease;
    options_.rendezvous_wait_seconds = kRendezvousWait;
  }
  std::vector<int64_t> Beat(const std::string& worker, std::vector<int64_t> attempts) {
    auto hb = coordinator_->Heartbeat(worker, attempts);
    EXPECT_TRUE(hb.ok()) << hb.status();
    return hb.ok() ? hb->stop_attempts : std::vector<int64_t>();
  }
  // Places a two-rank CPU gang on two fresh workers (rank 0 on w1, rank 1 on w2) and
  // hands rank 1 to w2. Returns {rank 0, rank 1}.
  std::vector<TrialAssignment> PlaceGangOfTwo(std::string* e, std::string* w1, std::string* w2,
                                              std::vector<TrialRequirements> more = {}) {
    std::vector<TrialRequirements> r = {Cpu(2)};
    r.insert(r.end(), more.begin(), more.end());
    *e = Submit(MakeSweep(r));
    *w1 = Register(CpuWorker());
    *w2 = Register(CpuWorker());
    auto a = Acquire(*w1, 1);
    auto b = Acquire(*w2, 1);
    EXPECT_EQ(a.size(), 1u);
    EXPECT_EQ(b.size(), 1u);
    if (a.size() != 1 || b.size() != 1) return {};
    return {a[0], b[0]};
  }

};

TEST_F(GangTest, PlacedAllOrNothingOnDistinctWorkersAndRankOneDeliveredToItsWorker) {
  const std::string e = Submit(MakeSweep({Cpu(2), Cpu()}));
  const std::string w1 = Register(CpuWorker());
  // One worker alone never gets the gang; the ordinary trial behind it goes ahead.
  auto alone = Acquire(w1, 1);
  ASSERT_EQ(alone.size(), 1u);
  EXPECT_EQ(alone[0].trial_id, "e1.t1");
  EXPECT_FALSE(alone[0].gang.has_value());
  EXPECT_EQ(Trial(e, 0).state, TrialState::kPending);
  ASSERT_TRUE(coordinator_->ReportResult(w1, alone[0].attempt_id, Success()).ok());

  const std::string w2 = Register(CpuWorker());
  auto a = Acquire(w1, 1);
  ASSERT_EQ(a.size(), 1u);
  ASSERT_TRUE(a[0].gang.has_value());
  const GangPlacement& g = *a[0].gang;
  EXPECT_EQ(a[0].trial_id, "e1.t0");
  EXPECT_EQ(g.rank, 0);
  EXPECT_EQ(g.world_size, 2);
  EXPECT_EQ(g.worker_ids, (std::vector<std::string>{w1, w2}));
  EXPECT_EQ(g.gpus_per_rank, 0);
  EXPECT_FALSE(g.gang_id.empty());
  EXPECT_EQ(Trial(e, 0).state, TrialState::kLeased);
  ASSERT_EQ(Trial(e, 0).attempts.size(), 1u);
  EXPECT_EQ(Trial(e, 0).attempts[0].worker_id, w1);

  // Rank 1 comes in w2's next acquire: same attempt and gang, its own rank, the config.
  auto b = Acquire(w2, 4);
  ASSERT_EQ(b.size(), 1u);
  ASSERT_TRUE(b[0].gang.has_value());
  EXPECT_EQ(b[0].trial_id, a[0].trial_id);
  EXPECT_EQ(b[0].attempt_id, a[0].attempt_id);
  EXPECT_EQ(b[0].attempt_number, 1);
  EXPECT_EQ(b[0].gang->gang_id, g.gang_id);
  EXPECT_EQ(b[0].gang->rank, 1);
  EXPECT_EQ(b[0].gang->worker_ids, g.worker_ids);
  EXPECT_EQ(b[0].config_yaml, a[0].config_yaml);
  EXPECT_FALSE(b[0].config_yaml.empty());
  // Handed out once.
  EXPECT_TRUE(Acquire(w2, 4).empty());
  // Both workers list the trial.
  auto workers = coordinator_->ListWorkers();
  ASSERT_TRUE(workers.ok());
  for (const WorkerInfo& w : *workers) {
    EXPECT_EQ(w.running_trials, std::vector<std::string>{"e1.t0"}) << w.worker_id;
  }
}

TEST_F(GangTest, EachRankHoldsItsWorkersCapacity) {
  // A gang and an ordinary trial behind it; two single-slot workers.
  std::string e, w1, w2;
  auto ranks = PlaceGangOfTwo(&e, &w1, &w2, {Cpu()});
  ASSERT_EQ(ranks.size(), 2u);
  EXPECT_TRUE(Acquire(w1, 1).empty());
  EXPECT_TRUE(Acquire(w2, 1).empty());
  // A third worker takes the ordinary trial.
  const std::string w3 = Register(CpuWorker());
  EXPECT_EQ(Acquire(w3, 1).size(), 1u);
}

TEST_F(GangTest, RankIsPlacedOnlyWhereItsWorkerHasCapacityNow) {
  // w2 is busy with an ordinary trial when the gang comes up: no gang, even though w2 is
  // capable; once w2 is free it is.
  const std::string e = Submit(MakeSweep({Cpu(), Cpu(2)}));
  const std::string w1 = Register(CpuWorker());
  const std::string w2 = Register(CpuWorker());
  auto busy = Acquire(w2, 1);
  ASSERT_EQ(busy.size(), 1u);
  EXPECT_EQ(busy[0].trial_id, "e1.t0");
  EXPECT_TRUE(Acquire(w1, 1).empty());
  EXPECT_EQ(Trial(e, 1).state, TrialState::kPending);
  // w2's report with max_next_trials frees its slot; w1 then places the gang, and rank 1
  // reaches w2 in the reply of its next report-and-acquire.
  auto next = coordinator_->ReportResultAndAcquire(w2, busy[0].attempt_id, Success(), 0);
  ASSERT_TRUE(next.ok()) << next.status();
  auto a = Acquire(w1, 1);
  ASSERT_EQ(a.size(), 1u);
  ASSERT_TRUE(a[0].gang.has_value());
  EXPECT_EQ(a[0].gang->worker_ids, (std::vector<std::string>{w1, w2}));
  auto delivered = coordinator_->AcquireTrials(w2, 1);
  ASSERT_TRUE(delivered.ok());
  ASSERT_EQ(delivered->size(), 1u);
  EXPECT_EQ((*delivered)[0].gang->rank, 1);
}

TEST_F(GangTest, RankOneComesInAReportResultReplyBeforeNewPlacement) {
  // w2 has two slots: one runs an ordinary trial, the other takes rank 1. Its report of
  // the ordinary trial asks for one more and gets rank 1, not the pending trial t2.
  const std::string e = Submit(MakeSweep({Cpu(), Cpu(2), Cpu()}));
  const std::string w1 = Register(CpuWorker());
  const std::string w2 = Register(CpuWorker(2));
  auto busy = Acquire(w2, 1);
  ASSERT_EQ(busy.size(), 1u);
  auto a = Acquire(w1, 1);
  ASSERT_EQ(a.size(), 1u);
  ASSERT_TRUE(a[0].gang.has_value());
  auto next = coordinator_->ReportResultAndAcquire(w2, busy[0].attempt_id, Success(), 1);
  ASSERT_TRUE(next.ok()) << next.status();
  ASSERT_EQ(next->size(), 1u);
  EXPECT_EQ((*next)[0].trial_id, "e1.t1");
  EXPECT_EQ((*next)[0].gang->rank, 1);
  EXPECT_FALSE((*next)[0].config_yaml.empty());
  EXPECT_EQ(Trial(e, 2).state, TrialState::kPending);
}

TEST_F(GangTest, CudaRanksHoldGpusPerRank) {
  // tp 4 over 2 nodes: 2 GPUs per rank. A 1-GPU worker cannot take a rank.
  const std::string e = Submit(MakeSweep({Cuda(2, 2)}));
  const std::string small = Register(GpuWorker(1));
  const std::string w1 = Register(GpuWorker(2));
  EXPECT_TRUE(Acquire(w1, 1).empty());  // the only other worker has one GPU
  const std::string w2 = Register(GpuWorker(4));
  auto a = Acquire(w1, 1);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].gpu_indices, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(a[0].gang->gpus_per_rank, 2);
  EXPECT_EQ(a[0].gang->worker_ids, (std::vector<std::string>{w1, w2}));
  auto b = Acquire(w2, 4);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b[0].gpu_indices, (std::vector<int32_t>{0, 1}));
  EXPECT_TRUE(Acquire(small, 1).empty());
}

TEST_F(GangTest, StaysPendingWhileTooFewCapableWorkersAreAlive) {
  const std::string e = Submit(MakeSweep({Cpu(3)}));
  const std::string w1 = Register(CpuWorker());
  const std::string w2 = Register(CpuWorker());
  const std::string gpu_only = Register([] {
    WorkerCapabilities c = GpuWorker(1);
    c.backends = {"cuda"};
    return c;
  }());
  EXPECT_TRUE(Acquire(w1, 1).empty());  // two CPU workers for three ranks
  const std::string w3 = Register(CpuWorker());
  // w3 goes silent for a lease period: not alive, so not used.
  clock_.AdvanceSeconds(kLease);
  Beat(w1, {});
  Beat(w2, {});
  EXPECT_TRUE(Acquire(w1, 1).empty());
  EXPECT_EQ(Trial(e, 0).state, TrialState::kPending);
  EXPECT_TRUE(Trial(e, 0).attempts.empty());
  // Back: the gang is placed.
  Beat(w3, {});
  auto a = Acquire(w1, 1);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].gang->worker_ids, (std::vector<std::string>{w1, w2, w3}));
}

TEST_F(GangTest, PendingGangSaysWhyItWaitsUntilItIsPlaced) {
  const std::string e = Submit(MakeSweep({Cpu(3), Cpu(3)}));
  const std::string w1 = Register(CpuWorker());
  const std::string w2 = Register(CpuWorker());
  EXPECT_EQ(Trial(e, 0).waiting, "");  // placement not tried yet
  EXPECT_TRUE(Acquire(w1, 1).empty());
  // Two workers in all for three ranks: said to be impossible until more register. Every
  // pending trial of the class shows it.
  for (size_t i : {0u, 1u}) {
    const std::string waiting = Trial(e, i).waiting;
    EXPECT_THAT(waiting,
                HasSubstr("waiting for 3 workers that can each take a rank (a CPU trial slot)"));
    EXPECT_THAT(waiting, HasSubstr("only 2 workers are alive, fewer than nodes=3"));
    EXPECT_THAT(waiting, HasSubstr("until more workers register"));
  }
  // A third worker that can never take a CPU rank: named as such.
  Register([] {
    WorkerCapabilities c = GpuWorker(1);
    c.backends = {"cuda"};
    return c;
  }());
  EXPECT_TRUE(Acquire(w2, 1).empty());
  EXPECT_THAT(Trial(e, 0).waiting,
              HasSubstr("only 2 of the 3 alive workers could take a rank even when idle"));
  // A third CPU worker: the gang is placed and its trial no longer waits.
  Register(CpuWorker());
  ASSERT_EQ(Acquire(w1, 1).size(), 1u);
  EXPECT_EQ(Trial(e, 0).state, TrialState::kLeased);
  EXPECT_EQ(Trial(e, 0).waiting, "");
}

TEST_F(GangTest, PendingGangNamesTheWorkersThatCanTakeARankNow) {
  const std::string e = Submit(MakeSweep({Cpu(), Cpu(3)}));
  const std::string w1 = Register(CpuWorker());
  const std::string w2 = Register(CpuWorker());
  const std::string w3 = Register(CpuWorker());
  auto busy = Acquire(w3, 1);  // the ordinary trial fills w3's only slot
  ASSERT_EQ(busy.size(), 1u);
  EXPECT_EQ(busy[0].trial_id, "e1.t0");
  EXPECT_TRUE(Acquire(w1, 1).empty());
  EXPECT_EQ(Trial(e, 1).waiting,
            "waiting for 3 workers that can each take a rank (a CPU trial slot); 2 can now (" +
                w1 + ", " + w2 + "), 3 alive");
  EXPECT_EQ(Trial(e, 0).waiting, "");  // not pending
  ASSERT_TRUE(coordinator_->ReportResult(w3, busy[0].attempt_id, Success()).ok());
  ASSERT_EQ(Acquire(w1, 1).size(), 1u);
  EXPECT_EQ(Trial(e, 1).state, TrialState::kLeased);
  EXPECT_EQ(Trial(e, 1).waiting, "");
}

TEST_F(GangTest, CudaGangWaitingReasonNamesGpusAndMemory) {
  TrialRequirements r = Cuda(2, 2);
  r.gpu_memory_bytes = int64_t{40} << 30;
  const std::string e = Submit(MakeSweep({r}));
  const std::string w1 = Register(GpuWorker(2));
  Register(GpuWorker(1));
  EXPECT_TRUE(Acquire(w1, 1).empty());
  EXPECT_THAT(Trial(e, 0).waiting,
              HasSubstr("waiting for 2 workers that can each take a rank (2 GPUs of 40.00 GiB)"));
  EXPECT_THAT(Trial(e, 0).waiting, HasSubstr("only 1 of the 2 alive workers"));
}

TEST_F(GangTest, EachRankIsRenewedByItsOwnWorkerAndOneExpiryEndsTheAttempt) {
  std::string e, w1, w2;
  auto ranks = PlaceGangOfTwo(&e, &w1, &w2);
  ASSERT_EQ(ranks.size(), 2u);
  const int64_t attempt = ranks[0].attempt_id;
  // Both renew: no expiry over two lease periods.
  for (int i = 0; i < 3; ++i) {
    clock_.AdvanceSeconds(20);
    EXPECT_TRUE(Beat(w1, {attempt}).empty());
    EXPECT_TRUE(Beat(w2, {attempt}).empty());
    ASSERT_TRUE(coordinator_->ExpireLeases().ok());
  }
  EXPECT_EQ(Trial(e, 0).state, TrialState::kLeased);
  // Only rank 0 renews: rank 1's lease expires and ends the attempt.
  clock_.AdvanceSeconds(20);
  Beat(w1, {attempt});
  ASSERT_TRUE(coordinator_->ExpireLeases().ok());
  EXPECT_EQ(Trial(e, 0).state, TrialState::kLeased);
  clock_.AdvanceSeconds(kLease - 20);
  Beat(w1, {attempt});
  ASSERT_TRUE(coordinator_->ExpireLeases().ok());
  TrialInfo t = Trial(e, 0);
  EXPECT_EQ(t.state, TrialState::kPending);
  ASSERT_EQ(t.attempts.size(), 1u);
  EXPECT_EQ(t.attempts[0].state, "expired");
  EXPECT_THAT(t.attempts[0].error, HasSubstr("rank 1 on " + w2));
  // Rank 0 is told to stop; so is rank 1 when it comes back.
  EXPECT_EQ(Beat(w1, {attempt}), std::vector<int64_t>{attempt});
  EXPECT_EQ(Beat(w2, {attempt}), std::vector<int64_t>{attempt});
  // Retried with a new attempt and gang id.
  auto again = Acquire(w1, 1);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].attempt_number, 2);
  EXPECT_NE(again[0].attempt_id, attempt);
  EXPECT_NE(again[0].gang->gang_id, ranks[0].gang->gang_id);
}

TEST_F(GangTest, RankNeverAskedForExpiresLikeAnyLease) {
  const std::string e = Submit(MakeSweep({Cpu(2)}));
  const std::string w1 = Register(CpuWorker());
  const std::string w2 = Register(CpuWorker());
  auto a = Acquire(w1, 1);
  ASSERT_EQ(a.size(), 1u);
  clock_.AdvanceSeconds(kLease);
  Beat(w1, {a[0].attempt_id});
  ASSERT_TRUE(coordinator_->ExpireLeases().ok());
  TrialInfo t = Trial(e, 0);
  EXPECT_EQ(t.state, TrialState::kPending);
  ASSERT_EQ(t.attempts.size(), 1u);
  EXPECT_THAT(t.attempts[0].error, HasSubstr("never asked for it"));
  // The undelivered rank is gone: w2 gets nothing of the old attempt.
  for (const TrialAssignment& x : Acquire(w2, 1)) EXPECT_NE(x.attempt_id, a[0].attempt_id);
}

TEST_F(GangTest, RankFailureFailsTheAttemptAndTheRetryHasANewGangId) {
  std::string e, w1, w2;
  auto ranks = PlaceGangOfTwo(&e, &w1, &w2);
  ASSERT_EQ(ranks.size(), 2u);
  const int64_t attempt = ranks[0].attempt_id;
  ASSERT_TRUE(coordinator_->ReportResult(w2, attempt, Failure("follower exited 1")).ok());
  TrialInfo t = Trial(e, 0);
  EXPECT_EQ(t.state, TrialState::kPending);
  ASSERT_EQ(t.attempts.size(), 1u);
  EXPECT_EQ(t.attempts[0].state, "failed");
  EXPECT_THAT(t.attempts[0].error, HasSubstr("rank 1 on " + w2 + ": follower exited 1"));
  EXPECT_EQ(Beat(w1, {attempt}), std::vector<int64_t>{attempt});
  // Rank 0's own failure report afterwards is stale, as for any ended attempt.
  EXPECT_EQ(coordinator_->ReportResult(w1, attempt, Failure("driver lost rank 1")).code(),
            absl::StatusCode::kFailedPrecondition);
  // Rank 1's repeated report is acknowledged.
  EXPECT_TRUE(coordinator_->ReportResult(w2, attempt, Failure("follower exited 1")).ok());
  auto again = Acquire(w2, 1);  // w2 now drives: the workers swap ranks
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].attempt_number, 2);
  EXPECT_EQ(again[0].gang->rank, 0);
  EXPECT_EQ(again[0].gang->worker_ids, (std::vector<std::string>{w2, w1}));
  EXPECT_NE(again[0].gang->gang_id, ranks[0].gang->gang_id);
}

TEST_F(GangTest, RankOneSuccessReleasesOnlyItsRankAndRankZeroStoresTheResult) {
  std::string e, w1, w2;
  auto ranks = PlaceGangOfTwo(&e, &w1, &w2, {Cpu()});
  ASSERT_EQ(ranks.size(), 2u);
  const int64_t attempt = ranks[0].attempt_id;
  ASSERT_TRUE(coordinator_->ReportResult(w2, attempt, FollowerDone()).ok());
  EXPECT_TRUE(coordinator_->ReportResult(w2, attempt, FollowerDone()).ok());  // a retry
  EXPECT_EQ(Trial(e, 0).state, TrialState::kLeased);
  EXPECT_TRUE(coordinator_->Results(e)->empty());
  // w2's slot is free again (the ordinary trial), w1's is not.
  EXPECT_TRUE(Acquire(w1, 1).empty());
  auto other = Acquire(w2, 1);
  ASSERT_EQ(other.size(), 1u);
  EXPECT_EQ(other[0].trial_id, "e1.t1");
  // w2 no longer renews the gang's lease, and it is not told to stop (it already ended).
  clock_.AdvanceSeconds(kLease - 1);
  Beat(w1, {attempt});
  clock_.AdvanceSeconds(2);
  ASSERT_TRUE(coordinator_->ExpireLeases().ok());
  EXPECT_EQ(Trial(e, 0).state, TrialState::kLeased);
  // Rank 0 needs a result to store.
  EXPECT_EQ(coordinator_->ReportResult(w1, attempt, FollowerDone()).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(coordinator_->ReportResult(w1, attempt, Success()).ok());
  EXPECT_EQ(Trial(e, 0).state, TrialState::kSucceeded);
  auto results = coordinator_->Results(e);
  ASSERT_TRUE(results.ok());
  ASSERT_EQ(results->size(), 1u);
  EXPECT_EQ((*results)[0].attempt_id, attempt);
  // Late reports of rank 1 for the finished attempt are acknowledged, stored nothing.
  EXPECT_TRUE(coordinator_->ReportResult(w2, attempt, FollowerDone()).ok());
  EXPECT_TRUE(coordinator_->ReportResult(w2, attempt, Failure("driver went away")).ok());
  EXPECT_TRUE(coordinator_->ReportProgress(w2, attempt, 1, 1, 1).ok());
  EXPECT_EQ(*store_->CountResults("e1.t0"), 1);
}

TEST_F(GangTest, RankZeroSuccessEndsTheGangAndStopsRanksStillRunning) {
  std::string e, w1, w2;
  auto ranks = PlaceGangOfTwo(&e, &w1, &w2);
  ASSERT_EQ(ranks.size(), 2u);
  const int64_t attempt = ranks[0].attempt_id;
  ASSERT_TRUE(coordinator_->ReportResult(w1, attempt, Success()).ok());
  EXPECT_EQ(Trial(e, 0).state, TrialState::kSucceeded);
  EXPECT_EQ(Beat(w2, {attempt}), std::vector<int64_t>{attempt});
  EXPECT_TRUE(coordinator_->ReportResult(w2, attempt, FollowerDone()).ok());
}

TEST_F(GangTest, ProgressOfRankOneRenewsItsRankOnly) {
  std::string e, w1, w2;
  auto ranks = PlaceGangOfTwo(&e, &w1, &w2);
  ASSERT_EQ(ranks.size(), 2u);
  const int64_t attempt = ranks[0].attempt_id;
  ASSERT_TRUE(coordinator_->ReportProgress(w2, attempt, 7, 9, 1).ok());
  TrialInfo t = Trial(e, 0);
  EXPECT_EQ(t.state, TrialState::kLeased);
  EXPECT_EQ(t.requests_done, 0);
  ASSERT_TRUE(coordinator_->ReportProgress(w1, attempt, 3, 9, 1).ok());
  t = Trial(e, 0);
  EXPECT_EQ(t.state, TrialState::kRunning);
  EXPECT_EQ(t.requests_done, 3);
  const std::string w3 = Register(CpuWorker());
  EXPECT_EQ(coordinator_->ReportProgress(w3, attempt, 1, 9, 1).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(GangTest, CancelStopsEveryRank) {
  std::string e, w1, w2;
  auto ranks = PlaceGangOfTwo(&e, &w1, &w2);
  ASSERT_EQ(ranks.size(), 2u);
  const int64_t attempt = ranks[0].attempt_id;
  ASSERT_TRUE(coordinator_->Cancel(e).ok());
  EXPECT_EQ(Beat(w1, {attempt}), std::vector<int64_t>{attempt});
  EXPECT_EQ(Beat(w2, {attempt}), std::vector<int64_t>{attempt});
  auto rv = coordinator_->AwaitRendezvous(w2, attempt, ranks[1].gang->gang_id, 1, 5);
  EXPECT_EQ(rv.status().code(), absl::StatusCode::kAborted) << rv.status();
}

TEST_F(GangTest, AwaitBeforePublishReturnsOncePublished) {
  std::string e, w1, w2;
  auto ranks = PlaceGangOfTwo(&e, &w1, &w2);
  ASSERT_EQ(ranks.size(), 2u);
  const int64_t attempt = ranks[0].attempt_id;
  const std::string gang = ranks[0].gang->gang_id;
  absl::StatusOr<Rendezvous> got = absl::UnknownError("not yet");
  const auto start = std::chrono::steady_clock::now();
  std::thread waiter([&] { got = coordinator_->AwaitRendezvous(w2, attempt, gang, 1, 60); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(coordinator_->PublishRendezvous(w1, attempt, gang, "tcp://127.0.0.1:5000/abc").ok());
  waiter.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->blob, "tcp://127.0.0.1:5000/abc");
  EXPECT_EQ(got->world_size, 2);
  // Once published, at once; publishing the same blob again is acknowledged.
  EXPECT_TRUE(coordinator_->AwaitRendezvous(w2, attempt, gang, 1, 0).ok());
  EXPECT_TRUE(coordinator_->PublishRendezvous(w1, attempt, gang, "tcp://127.0.0.1:5000/abc").ok());
}

TEST_F(GangTest, RendezvousIsFencedAndChecked) {
  std::string e, w1, w2;
  auto ranks = PlaceGangOfTwo(&e, &w1, &w2, {Cpu()});
  ASSERT_EQ(ranks.size(), 2u);
  const int64_t attempt = ranks[0].attempt_id;
  const std::string gang = ranks[0].gang->gang_id;
  auto code = [](const absl::Status& s) { return s.code(); };
  // Blob size.
  EXPECT_EQ(code(coordinator_->PublishRendezvous(w1, attempt, gang, "")),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(coordinator_->PublishRendezvous(w1, attempt, gang,
                                                 std::string(kMaxRendezvousBlobBytes + 1, 'x'))),
            absl::StatusCode::kInvalidArgument);
  // Only rank 0's worker publishes; the gang id must be this attempt's.
  EXPECT_EQ(code(coordinator_->PublishRendezvous(w2, attempt, gang, "blob")),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(code(coordinator_->PublishRendezvous(w1, attempt, gang + "x", "blob")),
            absl::StatusCode::kFailedPrecondition);
  // Await: wrong gang, a rank that is not this worker's, an unknown attempt.
  EXPECT_EQ(coordinator_->AwaitRendezvous(w2, attempt, gang + "x", 1, 0).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(coordinator_->AwaitRendezvous(w1, attempt, gang, 1, 0).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(coordinator_->AwaitRendezvous(w2, attempt, gang, 5, 0).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(coordinator_->AwaitRendezvous(w2, 9999, gang, 1, 0).status().code(),
            absl::StatusCode::kNotFound);
  // Not published yet: a bounded wait, then DeadlineExceeded.
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(coordinator_->AwaitRendezvous(w2, attempt, gang, 1, 0.05).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  // A second, different blob is refused.
  ASSERT_TRUE(coordinator_->PublishRendezvous(w1, attempt, gang, "first").ok());
  EXPECT_EQ(code(coordinator_->PublishRendezvous(w1, attempt, gang, "second")),
            absl::StatusCode::kFailedPrecondition);
  // An ordinary attempt has no rendezvous.
  const std::string w3 = Register(CpuWorker());
  auto plain = Acquire(w3, 1);
  ASSERT_EQ(plain.size(), 1u);
  EXPECT_EQ(code(coordinator_->PublishRendezvous(w3, plain[0].attempt_id, gang, "blob")),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(GangTest, AwaitIsAbortedWhenTheAttemptEnds) {
  std::string e, w1, w2;
  auto ranks = PlaceGangOfTwo(&e, &w1, &w2);
  ASSERT_EQ(ranks.size(), 2u);
  const int64_t attempt = ranks[0].attempt_id;
  const std::string gang = ranks[0].gang->gang_id;
  absl::StatusOr<Rendezvous> got = absl::UnknownError("not yet");
  std::thread waiter([&] { got = coordinator_->AwaitRendezvous(w2, attempt, gang, 1, 60); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  // Rank 0's driver fails before it publishes.
  ASSERT_TRUE(coordinator_->ReportResult(w1, attempt, Failure("bind failed")).ok());
  waiter.join();
  EXPECT_EQ(got.status().code(), absl::StatusCode::kAborted) << got.status();
  // Asked again after the end: Aborted at once; publishing is stale.
  auto again = coordinator_->AwaitRendezvous(w2, attempt, gang, 1, 60);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAborted);
  EXPECT_THAT(std::string(again.status().message()), HasSubstr("failed"));
  EXPECT_EQ(coordinator_->PublishRendezvous(w1, attempt, gang, "late").code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(GangTest, AsyncAwaitCanBeCancelled) {
  std::string e, w1, w2;
  auto ranks = PlaceGangOfTwo(&e, &w1, &w2);
  ASSERT_EQ(ranks.size(), 2u);
  std::mutex m;
  std::condition_variable cv;
  std::optional<absl::StatusOr<Rendezvous>> got;
  const int64_t handle = coordinator_->AwaitRendezvousAsync(
      w2, ranks[1].attempt_id, ranks[1].gang->gang_id, 1, 60,
      [&](absl::StatusOr<Rendezvous> r) {
        std::lock_guard<std::mutex> lock(m);
        got = std::move(r);
        cv.notify_all();
      });
  ASSERT_NE(handle, 0);
  coordinator_->CancelAwait(handle);
  std::unique_lock<std::mutex> lock(m);
  ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(5), [&] { return got.has_value(); }));
  EXPECT_EQ(got->status().code(), absl::StatusCode::kCancelled);
}

TEST_F(GangTest, RestartKeepsAPlacedGangAndDeliversItsRankOnce) {
  const std::string e = Submit(MakeSweep({Cpu(2), Cpu()}));
  const std::string w1 = Register(CpuWorker());
  const std::string w2 = Register(CpuWorker());
  auto a = Acquire(w1, 1);
  ASSERT_EQ(a.size(), 1u);
  Open();  // rank 1 placed but not yet handed to w2
  Beat(w1, {a[0].attempt_id});
  Beat(w2, {});
  auto b = Acquire(w2, 1);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b[0].attempt_id, a[0].attempt_id);
  EXPECT_EQ(b[0].gang->rank, 1);
  EXPECT_EQ(b[0].gang->gang_id, a[0].gang->gang_id);
  auto rows = store_->ListAttemptRanks(a[0].attempt_id);
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_EQ((*rows)[0].state, "delivered");

  Open();  // delivered: not handed out again, capacity still held on both workers
  EXPECT_TRUE(Acquire(w2, 1).empty());
  EXPECT_TRUE(Acquire(w1, 1).empty());
  EXPECT_EQ(Trial(e, 1).state, TrialState::kPending);
  // Both ranks' leases survive with a fresh period, renewed by their workers.
  clock_.AdvanceSeconds(kLease - 1);
  EXPECT_TRUE(Beat(w1, {a[0].attempt_id}).empty());
  EXPECT_TRUE(Beat(w2, {a[0].attempt_id}).empty());
  clock_.AdvanceSeconds(2);
  ASSERT_TRUE(coordinator_->ExpireLeases().ok());
  EXPECT_EQ(Trial(e, 0).state, TrialState::kLeased);
  // A gang that rendezvoused before the restart runs on and finishes once.
  ASSERT_TRUE(coordinator_->ReportResult(w2, a[0].attempt_id, FollowerDone()).ok());
  Open();  // the released rank stays released
  EXPECT_EQ(Acquire(w2, 1).size(), 1u);  // the ordinary trial
  ASSERT_TRUE(coordinator_->ReportResult(w1, a[0].attempt_id, Success()).ok());
  EXPECT_EQ(Trial(e, 0).state, TrialState::kSucceeded);
  EXPECT_EQ(*store_->CountResults("e1.t0"), 1);
  auto attempts = store_->ListTrialAttempts("e1.t0");
  ASSERT_TRUE(attempts.ok());
  EXPECT_EQ(attempts->size(), 1u);  // never run twice
}

TEST_F(GangTest, AfterARestartRankZeroMayPublishAgain) {
  std::string e, w1, w2;
  auto ranks = PlaceGangOfTwo(&e, &w1, &w2);
  ASSERT_EQ(ranks.size(), 2u);
  const int64_t attempt = ranks[0].attempt_id;
  const std::string gang = ranks[0].gang->gang_id;
  ASSERT_TRUE(coordinator_->PublishRendezvous(w1, attempt, gang, "blob-1").ok());
  Open();  // the blob was in memory only
  // Within rendezvous_wait_seconds of the restart: wait, and take a new publish.
  EXPECT_EQ(coordinator_->AwaitRendezvous(w2, attempt, gang, 1, 0.05).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  ASSERT_TRUE(coordinator_->PublishRendezvous(w1, attempt, gang, "blob-1").ok());
  auto got = coordinator_->AwaitRendezvous(w2, attempt, gang, 1, 0.05);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->blob, "blob-1");
  // Published since the restart: later calls are answered, whatever the clock says.
  clock_.AdvanceSeconds(kRendezvousWait + 1);
  EXPECT_TRUE(coordinator_->AwaitRendezvous(w2, attempt, gang, 1, 0).ok());
}

TEST_F(GangTest, AfterARestartALostRendezvousEndsTheAttemptAndItIsRetried) {
  std::string e, w1, w2;
  auto ranks = PlaceGangOfTwo(&e, &w1, &w2);
  ASSERT_EQ(ranks.size(), 2u);
  const int64_t attempt = ranks[0].attempt_id;
  const std::string gang = ranks[0].gang->gang_id;
  ASSERT_TRUE(coordinator_->PublishRendezvous(w1, attempt, gang, "blob-1").ok());
  Open();
  clock_.AdvanceSeconds(kRendezvousWait);  // nothing published again meanwhile
  Beat(w1, {attempt});
  Beat(w2, {attempt});
  auto got = coordinator_->AwaitRendezvous(w2, attempt, gang, 1, 5);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kAborted) << got.status();
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("coordinator restarted"));
  TrialInfo t = Trial(e, 0);
  EXPECT_EQ(t.state, TrialState::kPending);
  ASSERT_EQ(t.attempts.size(), 1u);
  EXPECT_EQ(t.attempts[0].state, "failed");
  EXPECT_THAT(t.attempts[0].error, HasSubstr("lost when the coordinator restarted"));
  EXPECT_EQ(Beat(w1, {attempt}), std::vector<int64_t>{attempt});
  // Durable: another restart still has it ended, and the retry gets a new gang.
  Open();
  Beat(w1, {});
  Beat(w2, {});
  auto again = Acquire(w1, 1);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].attempt_number, 2);
  EXPECT_NE(again[0].gang->gang_id, gang);
}

TEST_F(GangTest, AfterARestartAWaitingRankIsAbortedAtItsDeadlineOnceTheBlobIsLost) {
  std::string e, w1, w2;
  auto ranks = PlaceGangOfTwo(&e, &w1, &w2);
  ASSERT_EQ(ranks.size(), 2u);
  const int64_t attempt = ranks[0].attempt_id;
  const std::string gang = ranks[0].gang->gang_id;
  Open();
  // The wait starts inside the window; by its deadline the window has passed.
  absl::StatusOr<Rendezvous> got = absl::UnknownError("not yet");
  std::thread waiter([&] { got = coordinator_->AwaitRendezvous(w2, attempt, gang, 1, 0.3); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  clock_.AdvanceSeconds(kRendezvousWait);
  waiter.join();
  EXPECT_EQ(got.status().code(), absl::StatusCode::kAborted) << got.status();
  EXPECT_EQ(Trial(e, 0).state, TrialState::kPending);
}

// Review fix: a waiting rank is told that its attempt ended (Aborted: stop the rank) only
// once that end is durable, like every other asynchronous answer (group commit). Here the
// commit of rank 0's failure fails, so the attempt is still open in the store: the waiter
// must get the commit's error, not Aborted.
TEST_F(GangTest, WaiterIsToldTheAttemptEndedOnlyOnceThatIsDurable) {
  StoreOptions store_options;
  store_options.busy_timeout_seconds = 0.05;
  Open(store_options);
  std::string e, w1, w2;
  auto ranks = PlaceGangOfTwo(&e, &w1, &w2);
  ASSERT_EQ(ranks.size(), 2u);
  const int64_t attempt = ranks[0].attempt_id;
  const std::string gang = ranks[0].gang->gang_id;
  absl::StatusOr<Rendezvous> got = absl::UnknownError("not yet");
  std::thread waiter([&] { got = coordinator_->AwaitRendezvous(w2, attempt, gang, 1, 5); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  StoreWriteLock other(path_);
  EXPECT_FALSE(coordinator_->ReportResult(w1, attempt, Failure("bind failed")).ok());
  waiter.join();
  other.Release();
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable) << got.status();
  Open();  // the failure was never durable: the gang is still in flight
  EXPECT_EQ(Trial(e, 0).state, TrialState::kLeased);
}

// Review fix: the same for a rank that asks after the attempt ended in memory but before
// that end is durable (here it never becomes durable).
TEST_F(GangTest, AwaitAfterAnEndThatIsNotDurableIsNotAborted) {
  StoreOptions store_options;
  store_options.busy_timeout_seconds = 0.3;
  Open(store_options);
  std::string e, w1, w2;
  auto ranks = PlaceGangOfTwo(&e, &w1, &w2);
  ASSERT_EQ(ranks.size(), 2u);
  const int64_t attempt = ranks[0].attempt_id;
  const std::string gang = ranks[0].gang->gang_id;
  StoreWriteLock other(path_);
  std::mutex m;
  std::condition_variable cv;
  std::optional<absl::Status> reported;
  coordinator_->ReportResultAndAcquireAsync(w1, attempt, Failure("bind failed"), 0,
                                            [&](absl::StatusOr<std::vector<TrialAssignment>> r) {
                                              std::lock_guard<std::mutex> lock(m);
                                              reported = r.status();
                                              cv.notify_all();
                                            });
  auto got = coordinator_->AwaitRendezvous(w2, attempt, gang, 1, 5);
  {
    std::unique_lock<std::mutex> lock(m);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return reported.has_value(); }));
  }
  other.Release();
  EXPECT_FALSE(reported->ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable) << got.status();
  Open();
  EXPECT_EQ(Trial(e, 0).state, TrialState::kLeased);
}


// Runs `sql` on a second connection to the store at `path` (as another process would).
int SqlOnOtherConnection(const std::string& path, const char* sql) {
  sqlite3* other = nullptr;
  int rc = sqlite3_open(path.c_str(), &other);
  if (rc == SQLITE_OK) rc = sqlite3_exec(other, sql, nullptr, nullptr, nullptr);
  sqlite3_close(other);
  return rc;
}

// Review fix: a store read that fails part-way through an expiry pass (here: the earlier
// attempts of a trial on its last attempt, read to list its failure reasons) must not drop
// what the pass changes. The leases it ends, before and after the failing one, are
// committed, and their rendezvous waiters told, before ExpireLeases returns the error; the
// lease the read failed for stays open and untouched, and the next pass expires it.
TEST_F(GangTest, ExpiryThatFailsPartWayCommitsWhatItAlreadyEnded) {
  std::string e, w1, w2;
  auto ranks = PlaceGangOfTwo(&e, &w1, &w2);  // max_attempts 3: retried on expiry
  ASSERT_EQ(ranks.size(), 2u);
  const int64_t gang_attempt = ranks[0].attempt_id;
  const std::string gang = ranks[0].gang->gang_id;
  const std::string last = Submit(MakeSweep({Cpu()}, /*max_attempts=*/1));
  const std::string w3 = Register(CpuWorker());
  auto plain = Acquire(w3, 1);  // its trial's last attempt: its expiry reads the store
  ASSERT_EQ(plain.size(), 1u);
  ASSERT_GT(plain[0].attempt_id, gang_attempt);  // so the pass ends the gang first
  const std::string later = Submit(MakeSweep({Cpu()}, /*max_attempts=*/3));
  const std::string w4 = Register(CpuWorker());
  auto after = Acquire(w4, 1);  // after the failing one: it must not be held back
  ASSERT_EQ(after.size(), 1u);
  ASSERT_GT(after[0].attempt_id, plain[0].attempt_id);

  std::mutex m;
  std::condition_variable cv;
  std::optional<absl::StatusOr<Rendezvous>> got;
  ASSERT_NE(coordinator_->AwaitRendezvousAsync(w2, gang_attempt, gang, 1, 60,
                                               [&](absl::StatusOr<Rendezvous> r) {
                                                 std::lock_guard<std::mutex> lock(m);
                                                 got = std::move(r);
                                                 cv.notify_all();
                                               }),
            0);
  // Calls are taken up in order: once this one is answered, the wait above is registered.
  EXPECT_EQ(coordinator_->AwaitRendezvous(w2, gang_attempt, gang, 1, 0).status().code(),
            absl::StatusCode::kDeadlineExceeded);

  clock_.AdvanceSeconds(kLease + 1);
  // Reading a trial's attempts needs the column `number`; the commit does not.
  ASSERT_EQ(SqlOnOtherConnection(path_, "ALTER TABLE attempts RENAME COLUMN number TO n2"),
            SQLITE_OK);
  const absl::Status expired = coordinator_->ExpireLeases();
  {
    std::unique_lock<std::mutex> lock(m);
    EXPECT_TRUE(cv.wait_for(lock, std::chrono::seconds(5), [&] { return got.has_value(); }));
  }
  ASSERT_EQ(SqlOnOtherConnection(path_, "ALTER TABLE attempts RENAME COLUMN n2 TO number"),
            SQLITE_OK);
  EXPECT_FALSE(expired.ok());
  EXPECT_THAT(std::string(expired.message()),
              HasSubstr(absl::StrCat("attempt ", plain[0].attempt_id)));
  EXPECT_EQ(got.has_value() ? got->status().code() : absl::StatusCode::kUnknown,
            absl::StatusCode::kAborted);

  // Durable when ExpireLeases returned: the gang's end...
  auto gang_row = store_->GetAttempt(gang_attempt);
  ASSERT_TRUE(gang_row.ok() && gang_row->has_value()) << gang_row.status();
  EXPECT_EQ((*gang_row)->state, "expired");
  auto trial_rows = store_->ListTrials(e);
  ASSERT_TRUE(trial_rows.ok()) << trial_rows.status();
  EXPECT_EQ((*trial_rows)[0].state, "pending");
  // ...the end of the lease after the failing one...
  auto after_row = store_->GetAttempt(after[0].attempt_id);
  ASSERT_TRUE(after_row.ok() && after_row->has_value()) << after_row.status();
  EXPECT_EQ((*after_row)->state, "expired");
  EXPECT_EQ(Trial(later, 0).state, TrialState::kPending);
  // ...and nothing of the attempt whose read failed, in the store or in memory.
  auto plain_row = store_->GetAttempt(plain[0].attempt_id);
  ASSERT_TRUE(plain_row.ok() && plain_row->has_value()) << plain_row.status();
  EXPECT_EQ((*plain_row)->state, "leased");
  EXPECT_EQ(Trial(e, 0).state, TrialState::kPending);
  EXPECT_EQ(Trial(last, 0).state, TrialState::kLeased);

  // The next pass expires it; a restart finds both ends.
  ASSERT_TRUE(coordinator_->ExpireLeases().ok());
  EXPECT_EQ(Trial(last, 0).state, TrialState::kFailed);
  Open();
  TrialInfo retried = Trial(e, 0);
  EXPECT_EQ(retried.state, TrialState::kPending);
  ASSERT_EQ(retried.attempts.size(), 1u);
  EXPECT_EQ(retried.attempts[0].state, "expired");
  EXPECT_EQ(Trial(last, 0).state, TrialState::kFailed);
}

// A wait still pending when the coordinator goes away (a restart here) is answered once,
// Unavailable: the worker asks the next coordinator.
TEST_F(GangTest, PendingAwaitIsAnsweredOnceWhenTheCoordinatorCloses) {
  std::string e, w1, w2;
  auto ranks = PlaceGangOfTwo(&e, &w1, &w2);
  ASSERT_EQ(ranks.size(), 2u);
  const int64_t attempt = ranks[0].attempt_id;
  const std::string gang = ranks[0].gang->gang_id;
  std::mutex m;
  std::vector<absl::Status> answers;
  ASSERT_NE(coordinator_->AwaitRendezvousAsync(w2, attempt, gang, 1, 60,
                                               [&](absl::StatusOr<Rendezvous> r) {
                                                 std::lock_guard<std::mutex> lock(m);
                                                 answers.push_back(r.status());
                                               }),
            0);
  // Calls are taken up in order: once this one is answered, the wait above is registered.
  EXPECT_EQ(coordinator_->AwaitRendezvous(w2, attempt, gang, 1, 0).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  Open();  // destroys the coordinator, then opens a new one on the same store
  std::lock_guard<std::mutex> lock(m);
  ASSERT_EQ(answers.size(), 1u);
  EXPECT_EQ(answers[0].code(), absl::StatusCode::kUnavailable) << answers[0];
}

// Review fix: how an attempt ended is told only to its own ranks. An AwaitRendezvous for an
// ended attempt is checked like one for an open attempt (gang id, rank number, the worker
// that held that rank), from the store, so also after a restart.
TEST_F(GangTest, AwaitForAnEndedAttemptAnswersOnlyItsOwnRanks) {
  std::string e, w1, w2;
  auto ranks = PlaceGangOfTwo(&e, &w1, &w2, {Cpu()});
  ASSERT_EQ(ranks.size(), 2u);
  const int64_t attempt = ranks[0].attempt_id;
  const std::string gang = ranks[0].gang->gang_id;
  const std::string w3 = Register(CpuWorker());
  auto plain = Acquire(w3, 1);
  ASSERT_EQ(plain.size(), 1u);
  ASSERT_TRUE(coordinator_->ReportResult(w1, attempt, Failure("bind failed")).ok());
  ASSERT_TRUE(coordinator_->ReportResult(w3, plain[0].attempt_id, Success()).ok());

  auto check = [&](const std::string& when) {
    SCOPED_TRACE(when);
    // Its ranks (rank 0 included) hear that it ended, and how.
    for (const auto& [worker, rank] : {std::pair(w2, 1), std::pair(w1, 0)}) {
      auto own = coordinator_->AwaitRendezvous(worker, attempt, gang, rank, 0);
      EXPECT_EQ(own.status().code(), absl::StatusCode::kAborted) << own.status();
      EXPECT_THAT(std::string(own.status().message()), HasSubstr("bind failed"));
    }
    // Anyone else is refused as for an open attempt, and learns nothing of the outcome.
    struct Ask {
      std::string worker;
      int64_t attempt;
      std::string gang;
      int32_t rank;
    };
    const std::vector<Ask> refused = {
        {w3, attempt, gang, 1},         // a worker that held no rank of it
        {w1, attempt, gang, 1},         // a rank of it, but not this one
        {w2, attempt, gang, 0},
        {w2, attempt, gang, 2},         // no such rank
        {w2, attempt, gang, -1},
        {w2, attempt, gang + "x", 1},   // another gang id
        {w3, plain[0].attempt_id, gang, 0},  // an ordinary attempt has no rendezvous
    };
    for (const Ask& ask : refused) {
      auto other = coordinator_->AwaitRendezvous(ask.worker, ask.attempt, ask.gang, ask.rank, 0);
      EXPECT_EQ(other.status().code(), absl::StatusCode::kFailedPrecondition)
          << ask.worker << " rank " << ask.rank << ": " << other.status();
      EXPECT_THAT(std::string(other.status().message()), ::testing::Not(HasSubstr("bind")));
    }
    EXPECT_EQ(coordinator_->AwaitRendezvous(w2, 9999, gang, 1, 0).status().code(),
              absl::StatusCode::kNotFound);
  };
  check("before a restart");
  Open();
  check("after a restart");
}

// Review fix: AwaitRendezvousAsync and CancelAwait are called on gRPC's callback threads, so
// they must return at once even while the coordinator's lock is held for long. Here a call
// holds it while it reads the store, which waits behind a commit that waits for another
// connection's lock.
TEST_F(GangTest, AsyncAwaitAndCancelDoNotWaitForTheCoordinatorLock) {
  StoreOptions store_options;
  // Long enough that the old code (calls waiting for the coordinator's lock behind the
  // blocked commit) would take seconds, far above the bound asserted below.
  store_options.busy_timeout_seconds = 10;
  Open(store_options);
  std::string e, w1, w2;
  auto ranks = PlaceGangOfTwo(&e, &w1, &w2);
  ASSERT_EQ(ranks.size(), 2u);
  const int64_t attempt = ranks[0].attempt_id;
  const std::string gang = ranks[0].gang->gang_id;
  StoreWriteLock other(path_);
  // A commit that holds the store while it waits for `other`...
  std::thread committer(
      [&] { EXPECT_TRUE(coordinator_->ReportProgress(w1, attempt, 1, 10, 0.5).ok()); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  // ...and a stale report that holds the coordinator's lock while it reads the store.
  std::thread reader([&] {
    EXPECT_EQ(coordinator_->ReportResult(w2, 9999, Success()).code(), absl::StatusCode::kNotFound);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));

  std::mutex m;
  std::condition_variable cv;
  std::optional<absl::StatusOr<Rendezvous>> published, cancelled;
  const auto start = std::chrono::steady_clock::now();
  const int64_t waiting = coordinator_->AwaitRendezvousAsync(
      w2, attempt, gang, 1, 60, [&](absl::StatusOr<Rendezvous> r) {
        std::lock_guard<std::mutex> lock(m);
        published = std::move(r);
        cv.notify_all();
      });
  const int64_t to_cancel = coordinator_->AwaitRendezvousAsync(
      w2, attempt, gang, 1, 60, [&](absl::StatusOr<Rendezvous> r) {
        std::lock_guard<std::mutex> lock(m);
        cancelled = std::move(r);
        cv.notify_all();
      });
  coordinator_->CancelAwait(to_cancel);
  const auto took = std::chrono::steady_clock::now() - start;
  other.Release();
  committer.join();
  reader.join();
  EXPECT_LT(took, std::chrono::milliseconds(3000));
  EXPECT_NE(waiting, 0);
  EXPECT_NE(to_cancel, 0);

  // Calls are taken up in order: once this one is answered, the wait and the cancel above
  // have been (so the publish below cannot overtake the cancel).
  EXPECT_EQ(coordinator_->AwaitRendezvous(w2, attempt, gang, 1, 0).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  ASSERT_TRUE(coordinator_->PublishRendezvous(w1, attempt, gang, "blob").ok());
  std::unique_lock<std::mutex> lock(m);
  ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(5),
                          [&] { return published.has_value() && cancelled.has_value(); }));
  ASSERT_TRUE(published->ok()) << published->status();
  EXPECT_EQ((*published)->blob, "blob");
  EXPECT_EQ(cancelled->status().code(), absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace kvscope::coordinator

// Client reads (Results, ListTrials) agree with GetExperiment: once memory says a trial
// succeeded, its result is readable, even while the commit of that report is still queued
// behind an asynchronous callback that holds the commit thread.
#include <stdlib.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/clock.h"
#include "coordinator/coordinator.h"
#include "coordinator/store.h"
#include "gtest/gtest.h"

namespace kvscope::coordinator {
namespace {

// A one-shot gate: Open() wakes every Wait().
class Gate {
 public:
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  bool Wait(double seconds = 10) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return open_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

Sweep TwoCpuTrials() {
  Sweep sweep;
  sweep.name = "reads";
  sweep.max_attempts = 1;
  sweep.axis_names = {"request_rate"};
  for (int i = 0; i < 2; ++i) {
    TrialSpec t;
    t.index = i;
    t.axes = {{"request_rate", i}};
    t.label = "request_rate=" + std::to_string(i);
    t.config_yaml = "seed: " + std::to_string(i) + "\n";
    sweep.trials.push_back(t);
  }
  return sweep;
}

ResultReport Success() {
  ResultReport r;
  r.succeeded = true;
  r.result = {{"summary", {{"throughput", 1}}}};
  r.requests_jsonl = "{\"id\":0}\n";
  return r;
}

TEST(ReadConsistencyTest, ResultsSeeAReportWhoseCommitIsStillQueued) {
  std::string templ = ::testing::TempDir() + "/kvscope_reads_XXXXXX";
  const std::string dir = mkdtemp(templ.data());
  FakeClock clock{1'000'000'000};
  auto store = Store::Open(dir + "/coordinator.db", StoreOptions());
  ASSERT_TRUE(store.ok()) << store.status();
  CoordinatorOptions options;
  options.lease_seconds = 30;
  auto coordinator = Coordinator::Create(store->get(), &clock, options);
  ASSERT_TRUE(coordinator.ok()) << coordinator.status();
  Coordinator& c = **coordinator;

  auto experiment = c.SubmitParsed(TwoCpuTrials(), "name: reads\n", "reads.yaml");
  ASSERT_TRUE(experiment.ok()) << experiment.status();
  WorkerCapabilities caps;
  caps.hostname = "h";
  caps.cpu_cores = 4;
  caps.backends = {"cpu"};
  caps.max_cpu_trials = 2;
  auto worker = c.RegisterWorker(caps, "");
  ASSERT_TRUE(worker.ok()) << worker.status();
  auto leased = c.AcquireTrials(*worker, 2);
  ASSERT_TRUE(leased.ok()) << leased.status();
  ASSERT_EQ(leased->size(), 2u);

  // The first report's callback runs on the commit thread and holds it there.
  Gate entered, release;
  c.ReportResultAndAcquireAsync(*worker, (*leased)[0].attempt_id, Success(), 0,
                                [&](absl::StatusOr<std::vector<TrialAssignment>> v) {
                                  EXPECT_TRUE(v.ok()) << v.status();
                                  entered.Open();
                                  release.Wait();
                                });
  ASSERT_TRUE(entered.Wait());
  // The second report changes memory and queues its rows; nobody commits them yet.
  Gate second_done;
  c.ReportResultAndAcquireAsync(*worker, (*leased)[1].attempt_id, Success(), 0,
                                [&](absl::StatusOr<std::vector<TrialAssignment>> v) {
                                  EXPECT_TRUE(v.ok()) << v.status();
                                  second_done.Open();
                                });
  auto info = c.GetExperiment(*experiment);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->state, ExperimentState::kSucceeded);
  EXPECT_EQ(info->succeeded, 2);

  auto results = c.Results(*experiment);
  ASSERT_TRUE(results.ok()) << results.status();
  EXPECT_EQ(results->size(), 2u);
  auto trials = c.ListTrials(*experiment);
  ASSERT_TRUE(trials.ok()) << trials.status();
  ASSERT_EQ(trials->size(), 2u);
  for (const TrialInfo& t : *trials) {
    EXPECT_EQ(t.state, TrialState::kSucceeded) << t.trial_id;
    ASSERT_EQ(t.attempts.size(), 1u) << t.trial_id;
    EXPECT_EQ(t.attempts[0].state, "succeeded") << t.trial_id;
  }

  release.Open();
  EXPECT_TRUE(second_done.Wait());
  coordinator->reset();
  store->reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kvscope::coordinator

// WorkerDaemon against a scripted fake coordinator connection, running fake kvscope scripts
// (instant, or waiting for a file) so that each scenario is quick and deterministic.
#include "worker/worker_daemon.h"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/worker/fake_connection.h"
#include "tests/worker/worker_test_util.h"

namespace kvscope::worker {
namespace {

using ::kvscope::testing::FreshWorkerTestDir;
using ::kvscope::testing::kFakeSuccess;
using ::kvscope::testing::ProcessAlive;
using ::kvscope::testing::SpooledFiles;
using ::kvscope::testing::WaitFor;
using ::kvscope::testing::WriteFakeKvscope;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

coordinator::TrialAssignment Assignment(int64_t attempt_id) {
  coordinator::TrialAssignment a;
  a.experiment_id = "e1";
  a.trial_id = "e1-t" + std::to_string(attempt_id);
  a.attempt_id = attempt_id;
  a.config_yaml = "# trial " + std::to_string(attempt_id) + "\n";
  return a;
}

// A daemon running on its own thread; Shutdown() and join on destruction.
class DaemonHarness {
 public:
  DaemonHarness(FakeConnection* conn, const std::string& dir, const std::string& binary,
                int32_t max_trials = 1) {
    WorkerDaemonOptions options;
    options.connection = conn;
    options.capabilities.hostname = "test-host";
    options.capabilities.backends = {"cpu"};
    options.work_dir = dir + "/work";
    options.spool_dir = dir + "/spool";
    options.kvscope_binary = binary;
    options.max_concurrent_trials = max_trials;
    options.backoff_base_seconds = 0.01;
    options.backoff_max_seconds = 0.05;
    options.backoff_seed = 1;
    options.acquire_interval_seconds = 0.02;
    options.progress_interval_seconds = 0.01;
    options.stop_grace_seconds = 0.5;
    absl::StatusOr<std::unique_ptr<WorkerDaemon>> daemon = WorkerDaemon::Create(options);
    EXPECT_TRUE(daemon.ok()) << daemon.status();
    daemon_ = std::move(*daemon);
    thread_ = std::thread([this] {
      status_ = daemon_->Run();
      returned_.store(true);
    });
  }
  ~DaemonHarness() { Stop().IgnoreError(); }
  absl::Status Stop() {
    if (thread_.joinable()) {
      daemon_->Shutdown();
      thread_.join();
    }
    return status_;
  }
  WorkerDaemon& daemon() { return *daemon_; }
  bool returned() const { return returned_.load(); }

 private:
  std::unique_ptr<WorkerDaemon> daemon_;
  std::thread thread_;
  absl::Status status_;
  std::atomic<bool> returned_{false};
};

TEST(BackoffTest, GrowsExponentiallyWithJitterUpToTheCap) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 100; ++trial) {
    EXPECT_GE(BackoffSeconds(1, 0.5, 30, &rng), 0.25);
    EXPECT_LE(BackoffSeconds(1, 0.5, 30, &rng), 0.5);
    const double third = BackoffSeconds(3, 0.5, 30, &rng);
    EXPECT_GE(third, 1.0);
    EXPECT_LE(third, 2.0);
    const double capped = BackoffSeconds(40, 0.5, 30, &rng);
    EXPECT_GE(capped, 15.0);
    EXPECT_LE(capped, 30.0);
  }
  std::mt19937_64 a(3), b(3);
  EXPECT_EQ(BackoffSeconds(2, 1, 10, &a), BackoffSeconds(2, 1, 10, &b));  // seeded
}

TEST(WorkerDaemonTest, BacksOffWhileUnavailableThenRegisters) {
  const std::string dir = FreshWorkerTestDir("daemon_backoff");
  FakeConnection conn;
  conn.FailRegistrations(3);
  DaemonHarness h(&conn, dir, WriteFakeKvscope(dir, kFakeSuccess));
  ASSERT_TRUE(WaitFor([&] { return h.daemon().worker_id() == "w-1"; }));
  const std::vector<double> times = conn.register_times();
  ASSERT_EQ(times.size(), 4u);
  // Waits of at least half of 0.01, 0.02, 0.04 s (jitter keeps [d/2, d]).
  EXPECT_GE(times[1] - times[0], 0.005);
  EXPECT_GE(times[2] - times[1], 0.010);
  EXPECT_GE(times[3] - times[2], 0.020);
  EXPECT_TRUE(h.Stop().ok());
  EXPECT_EQ(std::ifstream(dir + "/spool/worker_id").good(), true);
}

TEST(WorkerDaemonTest, RunsATrialAndReportsItsResult) {
  const std::string dir = FreshWorkerTestDir("daemon_result");
  FakeConnection conn;
  conn.AddAssignment(Assignment(11));
  DaemonHarness h(&conn, dir, WriteFakeKvscope(dir, kFakeSuccess));
  ASSERT_TRUE(WaitFor([&] { return conn.results().count(11) == 1; }));
  const coordinator::ResultReport report = conn.results().at(11);
  EXPECT_TRUE(report.succeeded) << report.error;
  EXPECT_EQ(report.result["summary"]["ok"], true);
  EXPECT_EQ(report.result["config_line"], "# trial 11");
  EXPECT_EQ(report.requests_jsonl, "{\"id\":0}\n");
  EXPECT_THAT(conn.result_worker_ids(), ElementsAre("w-1"));
  // Acknowledged: gone from the spool; the attempt's directory is cleaned up.
  EXPECT_TRUE(WaitFor([&] { return SpooledFiles(dir + "/spool") == 0; }));
  EXPECT_TRUE(WaitFor([&] { return !std::filesystem::exists(dir + "/work/e1-t11-a11"); }));
  EXPECT_TRUE(h.Stop().ok());
  EXPECT_EQ(conn.result_calls(11), 1);
  // Progress was reported from the progress file.
  bool saw_progress = false;
  for (const FakeConnection::Progress& p : conn.progress()) {
    saw_progress = saw_progress || (p.attempt_id == 11 && p.total == 2);
  }
  EXPECT_TRUE(saw_progress);
}

TEST(WorkerDaemonTest, RegistersAgainWithTheSameIdWhenForgotten) {
  const std::string dir = FreshWorkerTestDir("daemon_notfound");
  FakeConnection conn;
  conn.ForgetWorkerOnce();
  DaemonHarness h(&conn, dir, WriteFakeKvscope(dir, kFakeSuccess));
  ASSERT_TRUE(WaitFor([&] { return conn.register_ids().size() >= 2; }));
  EXPECT_EQ(conn.register_ids()[0], "");
  EXPECT_EQ(conn.register_ids()[1], "w-1");
  // It keeps heartbeating under that id afterwards.
  const int before = conn.heartbeats();
  EXPECT_TRUE(WaitFor([&] { return conn.heartbeats() > before + 2; }));
  EXPECT_EQ(h.daemon().worker_id(), "w-1");
}

TEST(WorkerDaemonTest, StopAttemptsKillsTheTrialAndDropsItsResult) {
  const std::string dir = FreshWorkerTestDir("daemon_stop");
  const std::string pid_file = dir + "/child.pid";
  FakeConnection conn;
  conn.AddAssignment(Assignment(21));
  DaemonHarness h(&conn, dir, WriteFakeKvscope(dir, "echo $$ > " + pid_file + "\nexec sleep 60\n"));
  ASSERT_TRUE(WaitFor([&] {
    std::ifstream in(pid_file);
    pid_t pid = 0;
    return (in >> pid) && pid > 0;
  }));
  pid_t pid = 0;
  std::ifstream(pid_file) >> pid;
  // The heartbeat lists the running attempt.
  ASSERT_TRUE(WaitFor([&] {
    const std::vector<int64_t> hb = conn.last_heartbeat_attempts();
    return hb.size() == 1 && hb[0] == 21;
  }));
  conn.StopAttempt(21);
  EXPECT_TRUE(WaitFor([&] { return !ProcessAlive(pid); }));
  EXPECT_TRUE(WaitFor([&] { return h.daemon().RunningAttempts().empty(); }));
  EXPECT_TRUE(h.Stop().ok());
  EXPECT_EQ(conn.result_calls(21), 0);
  EXPECT_EQ(SpooledFiles(dir + "/spool"), 0);
}

// One call per trial: a result report asks for the free slot and the daemon runs what
// comes back, without an AcquireTrials call in between.
TEST(WorkerDaemonTest, ResultReportBringsTheNextTrial) {
  const std::string dir = FreshWorkerTestDir("daemon_piggyback");
  FakeConnection conn;
  conn.SetPiggyback(true);
  conn.AddAssignment(Assignment(41));
  conn.AddAssignment(Assignment(42));
  DaemonHarness h(&conn, dir, WriteFakeKvscope(dir, kFakeSuccess));
  ASSERT_TRUE(WaitFor([&] { return conn.results().count(42) == 1; }));
  EXPECT_TRUE(h.Stop().ok());
  EXPECT_EQ(conn.acquired_by_acquire(), 1);
  EXPECT_EQ(conn.acquired_by_report(), 1);
  EXPECT_THAT(conn.next_asks()[41], ElementsAre(1));
  EXPECT_TRUE(conn.results().at(41).succeeded);
  EXPECT_TRUE(conn.results().at(42).succeeded);
}

// The last pass after Shutdown() reports what finished but asks for nothing new.
TEST(WorkerDaemonTest, ShutdownReportsWithoutAskingForMoreTrials) {
  const std::string dir = FreshWorkerTestDir("daemon_shutdown_ask");
  const std::string pid_file = dir + "/child.pid";
  FakeConnection conn;
  conn.SetPiggyback(true);
  conn.AddAssignment(Assignment(51));
  DaemonHarness h(&conn, dir,
                  WriteFakeKvscope(dir, "echo $$ > " + pid_file + "\nexec sleep 60\n"));
  ASSERT_TRUE(WaitFor([&] { return h.daemon().RunningAttempts().size() == 1; }));
  ASSERT_TRUE(WaitFor([&] { return std::filesystem::exists(pid_file); }));
  conn.AddAssignment(Assignment(52));  // would be handed out by a report asking for one
  EXPECT_TRUE(h.Stop().ok());
  EXPECT_EQ(conn.result_calls(51), 1);  // the stopped trial's failure
  EXPECT_THAT(conn.next_asks()[51], ElementsAre(0));
  EXPECT_EQ(conn.acquired_by_report(), 0);
  EXPECT_EQ(conn.result_calls(52), 0);
}

TEST(WorkerDaemonTest, DropsAStaleResult) {
  const std::string dir = FreshWorkerTestDir("daemon_stale");
  FakeConnection conn;
  conn.SetResultStatus(31, absl::FailedPreconditionError("stale attempt 31"));
  conn.AddAssignment(Assignment(31));
  conn.AddAssignment(Assignment(32));
  DaemonHarness h(&conn, dir, WriteFakeKvscope(dir, kFakeSuccess));
  // The next result still goes through: the stale one does not block the queue.
  ASSERT_TRUE(WaitFor([&] { return conn.results().count(32) == 1; }));
  EXPECT_TRUE(WaitFor([&] { return SpooledFiles(dir + "/spool") == 0; }));
  EXPECT_TRUE(h.Stop().ok());
  EXPECT_EQ(conn.result_calls(31), 1);  // refused once, not retried
  EXPECT_EQ(conn.results().count(31), 0u);
}

TEST(WorkerDaemonTest, ResendsSpooledResultsAfterARestart) {
  const std::string dir = FreshWorkerTestDir("daemon_restart");
  {
    FakeConnection conn;
    conn.SetAllResultsUnavailable(true);
    conn.AddAssignment(Assignment(41));
    DaemonHarness h(&conn, dir, WriteFakeKvscope(dir, kFakeSuccess));
    ASSERT_TRUE(WaitFor([&] { return conn.result_calls(41) >= 1; }));
    ASSERT_EQ(SpooledFiles(dir + "/spool"), 1);
    EXPECT_TRUE(h.Stop().ok());
    EXPECT_EQ(SpooledFiles(dir + "/spool"), 1);  // still waiting for an acknowledgement
  }
  // A new daemon (and a coordinator that knows the worker) on the same directories.
  FakeConnection conn;
  DaemonHarness h(&conn, dir, WriteFakeKvscope(dir, kFakeSuccess));
  ASSERT_TRUE(WaitFor([&] { return conn.results().count(41) == 1; }));
  EXPECT_TRUE(conn.results().at(41).succeeded);
  EXPECT_EQ(conn.register_ids()[0], "w-1");  // the saved id
  EXPECT_THAT(conn.result_worker_ids(), ElementsAre("w-1"));
  EXPECT_TRUE(WaitFor([&] { return SpooledFiles(dir + "/spool") == 0; }));
}

TEST(WorkerDaemonTest, KeepsRunningWhileTheCoordinatorIsAwayAndReportsOnReturn) {
  const std::string dir = FreshWorkerTestDir("daemon_away");
  const std::string go = dir + "/go";
  FakeConnection conn;
  conn.AddAssignment(Assignment(51));
  DaemonHarness h(
      &conn, dir,
      WriteFakeKvscope(dir, "while [ ! -e " + go + " ]; do sleep 0.01; done\n" + kFakeSuccess));
  ASSERT_TRUE(WaitFor([&] { return h.daemon().RunningAttempts().size() == 1; }));
  conn.SetDown(true);
  const int heartbeats = conn.heartbeats();
  ASSERT_TRUE(WaitFor([&] { return conn.heartbeats() > heartbeats; }));  // it noticed
  std::ofstream(go) << "go";
  ASSERT_TRUE(WaitFor([&] { return SpooledFiles(dir + "/spool") == 1; }));
  EXPECT_EQ(conn.results().count(51), 0u);
  conn.SetDown(false);
  ASSERT_TRUE(WaitFor([&] { return conn.results().count(51) == 1; }));
  EXPECT_TRUE(conn.results().at(51).succeeded);
  EXPECT_EQ(conn.register_ids().size(), 1u);  // reconnected without registering again
  EXPECT_TRUE(WaitFor([&] { return SpooledFiles(dir + "/spool") == 0; }));
}

TEST(WorkerDaemonTest, RunsTrialsConcurrentlyUpToItsLimit) {
  const std::string dir = FreshWorkerTestDir("daemon_concurrent");
  const std::string go = dir + "/go";
  FakeConnection conn;
  for (int64_t a = 61; a <= 63; ++a) conn.AddAssignment(Assignment(a));
  DaemonHarness h(
      &conn, dir,
      WriteFakeKvscope(dir, "while [ ! -e " + go + " ]; do sleep 0.01; done\n" + kFakeSuccess),
      /*max_trials=*/2);
  ASSERT_TRUE(WaitFor([&] { return h.daemon().RunningAttempts().size() == 2; }));
  EXPECT_EQ(h.daemon().RunningAttempts().size(), 2u);  // never three
  std::ofstream(go) << "go";
  ASSERT_TRUE(WaitFor([&] { return conn.results().size() == 3; }));
}

TEST(WorkerDaemonTest, AFailedTrialIsReportedAndTheDaemonGoesOn) {
  const std::string dir = FreshWorkerTestDir("daemon_crash");
  FakeConnection conn;
  conn.AddAssignment(Assignment(71));
  conn.AddAssignment(Assignment(72));
  // Trial 71 aborts; trial 72 succeeds.
  DaemonHarness h(&conn, dir,
                  WriteFakeKvscope(dir, "if grep -q 'trial 71' \"$3\"; then kill -ABRT $$; fi\n" +
                                            std::string(kFakeSuccess)));
  ASSERT_TRUE(WaitFor([&] { return conn.results().size() == 2; }));
  EXPECT_FALSE(conn.results().at(71).succeeded);
  EXPECT_THAT(conn.results().at(71).error, HasSubstr("SIGABRT"));
  EXPECT_TRUE(conn.results().at(72).succeeded);
}

TEST(WorkerDaemonTest, StopsOnAuthenticationErrors) {
  const std::string dir = FreshWorkerTestDir("daemon_auth");
  FakeConnection conn;
  conn.RefuseRegistrations(absl::UnauthenticatedError("bad worker token"));
  DaemonHarness h(&conn, dir, WriteFakeKvscope(dir, kFakeSuccess));
  // Run() ends by itself; Stop() then only joins.
  ASSERT_TRUE(WaitFor([&] { return h.returned(); }));
  const absl::Status s = h.Stop();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(s.message()), HasSubstr("bad worker token"));
  EXPECT_EQ(conn.register_ids().size(), 1u);
}

TEST(WorkerDaemonTest, RejectsBadOptions) {
  WorkerDaemonOptions options;
  EXPECT_EQ(WorkerDaemon::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  FakeConnection conn;
  options.connection = &conn;
  options.work_dir = FreshWorkerTestDir("daemon_options");
  options.max_concurrent_trials = 0;
  EXPECT_EQ(WorkerDaemon::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvscope::worker

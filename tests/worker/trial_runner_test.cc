// TrialRunner against the real kvscope binary (tiny llama-tiny trials) and against fake
// kvscope scripts for the process-group handling.
#include "worker/trial_runner.h"

#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"
#include "tests/worker/worker_test_util.h"

namespace kvscope::worker {
namespace {

using ::kvscope::testing::FreshWorkerTestDir;
using ::kvscope::testing::KvscopeBinary;
using ::kvscope::testing::ProcessAlive;
using ::kvscope::testing::TinyTrialYaml;
using ::kvscope::testing::WaitFor;
using ::kvscope::testing::WriteFakeKvscope;
using ::testing::HasSubstr;
using ::testing::Not;

coordinator::TrialAssignment Assignment(const std::string& yaml, int64_t attempt_id = 7) {
  coordinator::TrialAssignment a;
  a.experiment_id = "e1";
  a.trial_id = "e1/t0";
  a.attempt_id = attempt_id;
  a.config_yaml = yaml;
  return a;
}

TrialRunnerOptions RealBinary() {
  TrialRunnerOptions options;
  options.kvscope_binary = KvscopeBinary();
  options.poll_interval_seconds = 0.02;
  return options;
}

TEST(TrialRunnerTest, SucceedsWithResultAndProgress) {
  const std::string dir = FreshWorkerTestDir("success");
  TrialRunner runner(RealBinary(), Assignment(TinyTrialYaml(4)), dir + "/attempt");
  std::vector<TrialProgress> seen;
  const coordinator::ResultReport report =
      runner.Run([&](const TrialProgress& p) { seen.push_back(p); });
  ASSERT_TRUE(report.succeeded) << report.error;
  EXPECT_TRUE(report.error.empty());
  ASSERT_TRUE(report.result.contains("summary")) << report.result.dump();
  EXPECT_EQ(report.result["config"]["strategy"], "paged");
  EXPECT_TRUE(report.result.contains("environment"));
  const std::vector<std::string> lines =
      absl::StrSplit(report.requests_jsonl, '\n', absl::SkipEmpty());
  EXPECT_EQ(lines.size(), 4u);
  // The progress file is read: the last state seen is the finished run.
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back().requests_total, 4);
  EXPECT_EQ(seen.back().requests_done, 4);
  // The child's files are in the attempt's directory.
  EXPECT_TRUE(std::filesystem::exists(dir + "/attempt/config.yaml"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/attempt/stdout.log"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/attempt/progress.json"));
}

struct FaultCase {
  std::string kind;
  std::string expected;  // in the error
};

class TrialRunnerFaultTest : public ::testing::TestWithParam<FaultCase> {};

TEST_P(TrialRunnerFaultTest, ChildDeathFailsTheTrialWithTheReason) {
  const FaultCase& c = GetParam();
  const std::string dir = FreshWorkerTestDir("fault_" + c.kind);
  TrialRunner runner(RealBinary(),
                     // Two sequences at a time, so requests finish in pairs.
                     Assignment(TinyTrialYaml(12,
                                              "scheduler: {max_num_seqs: 2}\n"
                                              "fault: {exit_after_requests: 2, kind: " +
                                                  c.kind + "}\n")),
                     dir + "/attempt");
  int64_t last_done = -1;
  const coordinator::ResultReport report =
      runner.Run([&](const TrialProgress& p) { last_done = p.requests_done; });
  EXPECT_FALSE(report.succeeded);
  EXPECT_THAT(report.error, HasSubstr(c.expected));
  // The last lines of stderr come with it: the bench says which fault fired.
  EXPECT_THAT(report.error, HasSubstr("test fault '" + c.kind + "'"));
  EXPECT_TRUE(report.result.is_null() || report.result.empty());
  EXPECT_LT(last_done, 12);  // it died mid-run
}

INSTANTIATE_TEST_SUITE_P(Kinds, TrialRunnerFaultTest,
                         ::testing::Values(FaultCase{"abort", "killed by SIGABRT"},
                                           FaultCase{"kill", "killed by SIGKILL"},
                                           FaultCase{"exit", "exited with code 3"}),
                         [](const auto& info) { return info.param.kind; });

TEST(TrialRunnerTest, BadConfigFailsCleanly) {
  const std::string dir = FreshWorkerTestDir("bad_config");
  TrialRunner runner(RealBinary(), Assignment("model: {preset: llama-tiny}\nbogus_key: 1\n"),
                     dir + "/a");
  const coordinator::ResultReport report = runner.Run(nullptr);
  EXPECT_FALSE(report.succeeded);
  EXPECT_THAT(report.error, HasSubstr("exited with code 2"));
  EXPECT_THAT(report.error, HasSubstr("bogus_key"));
}

TEST(TrialRunnerTest, MissingBinaryFailsBeforeStarting) {
  const std::string dir = FreshWorkerTestDir("missing_binary");
  TrialRunnerOptions options;
  options.kvscope_binary = dir + "/no_such_kvscope";
  TrialRunner runner(options, Assignment(TinyTrialYaml(1)), dir + "/a");
  const coordinator::ResultReport report = runner.Run(nullptr);
  EXPECT_FALSE(report.succeeded);
  EXPECT_THAT(report.error, HasSubstr("could not start the trial"));
  EXPECT_THAT(report.error, HasSubstr("no_such_kvscope"));
}

// The child ignores SIGTERM and starts a grandchild (which inherits the ignored SIGTERM):
// Stop() must reach the whole group, escalating to SIGKILL after the grace period.
TEST(TrialRunnerTest, StopKillsTheWholeProcessGroup) {
  const std::string dir = FreshWorkerTestDir("stop");
  TrialRunnerOptions options;
  options.kvscope_binary = WriteFakeKvscope(
      dir, "trap '' TERM\nsleep 60 &\necho $! > \"$7.grandchild\"\necho $$ > \"$7.child\"\nwait\n");
  options.stop_grace_seconds = 0.2;
  options.poll_interval_seconds = 0.02;
  TrialRunner runner(options, Assignment("x: 1\n"), dir + "/a");
  coordinator::ResultReport report;
  std::thread thread([&] { report = runner.Run(nullptr); });
  const std::string child_file = dir + "/a/progress.json.child";
  const std::string grandchild_file = dir + "/a/progress.json.grandchild";
  ASSERT_TRUE(WaitFor([&] {
    std::ifstream in(child_file);
    std::string line;
    return static_cast<bool>(std::getline(in, line)) && !line.empty();
  }));
  pid_t child = 0, grandchild = 0;
  std::ifstream(child_file) >> child;
  std::ifstream(grandchild_file) >> grandchild;
  ASSERT_GT(child, 0);
  ASSERT_GT(grandchild, 0);
  EXPECT_TRUE(ProcessAlive(grandchild));
  runner.Stop();
  thread.join();
  EXPECT_FALSE(report.succeeded);
  EXPECT_THAT(report.error, HasSubstr("stopped on request"));
  EXPECT_TRUE(WaitFor([&] { return !ProcessAlive(grandchild); }));
  EXPECT_FALSE(ProcessAlive(child));
}

TEST(TrialRunnerTest, StopBeforeRunDoesNotStartTheChild) {
  const std::string dir = FreshWorkerTestDir("stop_first");
  TrialRunner runner(RealBinary(), Assignment(TinyTrialYaml(1)), dir + "/a");
  runner.Stop();
  const coordinator::ResultReport report = runner.Run(nullptr);
  EXPECT_FALSE(report.succeeded);
  EXPECT_FALSE(std::filesystem::exists(dir + "/a/stdout.log"));
}

TEST(TrialRunnerTest, GpuTrialSeesOnlyItsGpus) {
  const std::string dir = FreshWorkerTestDir("gpus");
  TrialRunnerOptions options;
  options.kvscope_binary =
      WriteFakeKvscope(dir,
                       "mkdir -p \"$5\"\necho \"{\\\"cvd\\\": \\\"$CUDA_VISIBLE_DEVICES\\\"}\" > "
                       "\"$5/result.json\"\n"
                       ": > \"$5/requests.jsonl\"\n");
  coordinator::TrialAssignment a = Assignment("x: 1\n");
  a.gpu_indices = {2, 3};
  TrialRunner runner(options, a, dir + "/a");
  const coordinator::ResultReport report = runner.Run(nullptr);
  ASSERT_TRUE(report.succeeded) << report.error;
  EXPECT_EQ(report.result["cvd"], "2,3");
}

TEST(TrialRunnerTest, ExitZeroWithoutResultFails) {
  const std::string dir = FreshWorkerTestDir("no_result");
  TrialRunnerOptions options;
  options.kvscope_binary = WriteFakeKvscope(dir, "echo oops >&2\nexit 0\n");
  TrialRunner runner(options, Assignment("x: 1\n"), dir + "/a");
  const coordinator::ResultReport report = runner.Run(nullptr);
  EXPECT_FALSE(report.succeeded);
  EXPECT_THAT(report.error, HasSubstr("result.json"));
  EXPECT_THAT(report.error, HasSubstr("oops"));
}

// Gang rank 0: the child gets the gang flags, writes its rendezvous blob, and the runner
// publishes it (once) while the child runs.
TEST(TrialRunnerTest, GangRankZeroPublishesWhatTheChildListensOn) {
  const std::string dir = FreshWorkerTestDir("gang0");
  TrialRunnerOptions options;
  options.poll_interval_seconds = 0.02;
  // $8.. = --gang-rank 0 --gang-size 2 --gang-rendezvous-file F --gang-listen-host H
  options.kvscope_binary = WriteFakeKvscope(
      dir,
      "echo \"$8 $9 ${10} ${11} ${12} ${14}\" > \"$7.args\"\n"
      "echo \"tcp://${15}:4242/feed\" > \"${13}.tmp\" && mv \"${13}.tmp\" \"${13}\"\n"
      "while [ ! -f \"$5.published\" ]; do sleep 0.01; done\n" +
          std::string(testing::kFakeSuccess));
  options.gang = {0, 2};
  options.gang_listen_host = "10.1.2.3";
  std::vector<std::string> published;
  options.rendezvous.publish = [&](const std::string& blob) {
    published.push_back(blob);
    std::ofstream(dir + "/a/out.published") << "1";
    return absl::OkStatus();
  };
  TrialRunner runner(options, Assignment("x: 1\n"), dir + "/a");
  const coordinator::ResultReport report = runner.Run(nullptr);
  ASSERT_TRUE(report.succeeded) << report.error;
  EXPECT_TRUE(report.result.contains("summary"));
  ASSERT_EQ(published.size(), 1u);
  EXPECT_EQ(published[0], "tcp://10.1.2.3:4242/feed\n");
  std::string args;
  std::getline(std::ifstream(dir + "/a/progress.json.args"), args);
  EXPECT_EQ(args, "--gang-rank 0 --gang-size 2 --gang-rendezvous-file --gang-listen-host");
}

// A refused publish (a stale attempt) stops rank 0's child and fails the attempt with why.
TEST(TrialRunnerTest, GangRefusedPublishStopsTheChild) {
  const std::string dir = FreshWorkerTestDir("gang0_refused");
  TrialRunnerOptions options;
  options.poll_interval_seconds = 0.02;
  options.stop_grace_seconds = 0.2;
  options.kvscope_binary = WriteFakeKvscope(
      dir, "echo blob > \"${13}.tmp\" && mv \"${13}.tmp\" \"${13}\"\nsleep 60\n");
  options.gang = {0, 3};
  options.rendezvous.publish = [](const std::string&) {
    return absl::FailedPreconditionError("stale attempt 7");
  };
  TrialRunner runner(options, Assignment("x: 1\n"), dir + "/a");
  const auto start = std::chrono::steady_clock::now();
  const coordinator::ResultReport report = runner.Run(nullptr);
  EXPECT_FALSE(report.succeeded);
  EXPECT_THAT(report.error, HasSubstr("could not publish"));
  EXPECT_THAT(report.error, HasSubstr("stale attempt 7"));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
}

// Gang rank > 0: the runner waits for rank 0's blob, hands it to the child in the
// rendezvous file, and reports a clean exit as success without a result of its own.
TEST(TrialRunnerTest, GangFollowerGetsTheBlobAndReportsNoResult) {
  const std::string dir = FreshWorkerTestDir("gang1");
  TrialRunnerOptions options;
  options.poll_interval_seconds = 0.02;
  options.kvscope_binary = WriteFakeKvscope(
      dir, "[ \"$9\" = 1 ] && [ \"${11}\" = 2 ] && [ $# -eq 13 ] && "
           "[ \"$(cat \"${13}\")\" = \"tcp://h:1/ab\" ] || exit 3\nexit 0\n");
  options.gang = {1, 2};
  int awaited = 0;
  options.rendezvous.await = [&](const std::function<bool()>& stopped) {
    ++awaited;
    EXPECT_FALSE(stopped());
    return absl::StatusOr<std::string>("tcp://h:1/ab");
  };
  TrialRunner runner(options, Assignment("x: 1\n"), dir + "/a");
  const coordinator::ResultReport report = runner.Run(nullptr);
  ASSERT_TRUE(report.succeeded) << report.error;
  EXPECT_EQ(awaited, 1);
  EXPECT_TRUE(report.result.is_null()) << report.result.dump();
  EXPECT_TRUE(report.requests_jsonl.empty());
}

// A follower whose rendezvous fails, or that is stopped while waiting, never starts.
TEST(TrialRunnerTest, GangFollowerThatCannotMeetRankZeroNeverStarts) {
  const std::string dir = FreshWorkerTestDir("gang1_fail");
  TrialRunnerOptions options;
  options.poll_interval_seconds = 0.02;
  options.kvscope_binary = WriteFakeKvscope(dir, "exit 0\n");
  options.gang = {2, 3};
  options.rendezvous.await = [](const std::function<bool()>&) {
    return absl::StatusOr<std::string>(absl::AbortedError("attempt 7 ended"));
  };
  TrialRunner failed(options, Assignment("x: 1\n"), dir + "/a");
  const coordinator::ResultReport report = failed.Run(nullptr);
  EXPECT_FALSE(report.succeeded);
  EXPECT_THAT(report.error, HasSubstr("rank 2 of 3 could not meet rank 0: attempt 7 ended"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/a/stdout.log"));

  options.rendezvous.await = [](const std::function<bool()>& stopped) {
    while (!stopped()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return absl::StatusOr<std::string>(absl::CancelledError("stopped while waiting"));
  };
  TrialRunner waiting(options, Assignment("x: 1\n"), dir + "/b");
  coordinator::ResultReport stopped_report;
  std::thread thread([&] { stopped_report = waiting.Run(nullptr); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  waiting.Stop();
  thread.join();
  EXPECT_FALSE(stopped_report.succeeded);
  EXPECT_THAT(stopped_report.error, HasSubstr("stopped while waiting"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/b/stdout.log"));
}

TEST(TrialRunnerTest, ParsesProgress) {
  absl::StatusOr<TrialProgress> p =
      ParseProgress(R"({"requests_done":3,"requests_total":10,"elapsed_s":1.5})");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->requests_done, 3);
  EXPECT_EQ(p->requests_total, 10);
  EXPECT_DOUBLE_EQ(p->elapsed_s, 1.5);
  EXPECT_FALSE(ParseProgress("{\"requests_done\":3").ok());
  EXPECT_FALSE(ParseProgress("[]").ok());
  EXPECT_EQ(SignalName(SIGABRT), "SIGABRT");
  EXPECT_EQ(SignalName(64), "signal 64");
}

TEST(TrialRunnerTest, AttemptDirNameIsSafe) {
  coordinator::TrialAssignment a = Assignment("", 42);
  a.trial_id = "exp 1/../t#3";
  EXPECT_EQ(AttemptDirName(a), "exp_1_.._t_3-a42");
  EXPECT_THAT(AttemptDirName(a), Not(HasSubstr("/")));
}

}  // namespace
}  // namespace kvscope::worker

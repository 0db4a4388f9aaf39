#include "worker/result_spool.h"

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/worker/worker_test_util.h"

namespace kvscope::worker {
namespace {

using ::kvscope::testing::FreshWorkerTestDir;

SpooledResult Result(int64_t attempt_id, bool succeeded) {
  SpooledResult r;
  r.worker_id = "w-1";
  r.experiment_id = "e1";
  r.trial_id = "e1/t" + std::to_string(attempt_id);
  r.attempt_id = attempt_id;
  r.report.succeeded = succeeded;
  r.report.error = succeeded ? "" : "kvscope bench was killed by SIGABRT";
  if (succeeded) r.report.result = {{"summary", {{"throughput", 1.5}}}};
  r.report.requests_jsonl = "{\"id\":0}\n{\"id\":1}\n";
  return r;
}

std::unique_ptr<ResultSpool> OpenOrDie(const std::string& dir) {
  absl::StatusOr<std::unique_ptr<ResultSpool>> spool = ResultSpool::Open(dir);
  EXPECT_TRUE(spool.ok()) << spool.status();
  return spool.ok() ? std::move(*spool) : nullptr;
}

TEST(ResultSpoolTest, PersistsAcrossInstances) {
  const std::string dir = FreshWorkerTestDir("spool_persist") + "/spool";
  {
    std::unique_ptr<ResultSpool> spool = OpenOrDie(dir);
    ASSERT_NE(spool, nullptr);
    ASSERT_TRUE(spool->Put(Result(12, true)).ok());
    ASSERT_TRUE(spool->Put(Result(5, false)).ok());
  }
  std::unique_ptr<ResultSpool> reopened = OpenOrDie(dir);
  ASSERT_NE(reopened, nullptr);
  absl::StatusOr<std::vector<SpooledResult>> listed = reopened->List();
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 2u);
  // By attempt id.
  const SpooledResult& failed = (*listed)[0];
  const SpooledResult& ok = (*listed)[1];
  EXPECT_EQ(failed.attempt_id, 5);
  EXPECT_FALSE(failed.report.succeeded);
  EXPECT_EQ(failed.report.error, "kvscope bench was killed by SIGABRT");
  EXPECT_EQ(ok.attempt_id, 12);
  EXPECT_EQ(ok.worker_id, "w-1");
  EXPECT_EQ(ok.experiment_id, "e1");
  EXPECT_EQ(ok.trial_id, "e1/t12");
  EXPECT_TRUE(ok.report.succeeded);
  EXPECT_DOUBLE_EQ(ok.report.result["summary"]["throughput"].get<double>(), 1.5);
  EXPECT_EQ(ok.report.requests_jsonl, "{\"id\":0}\n{\"id\":1}\n");
}

TEST(ResultSpoolTest, RemoveDeletesDurably) {
  const std::string dir = FreshWorkerTestDir("spool_remove") + "/spool";
  std::unique_ptr<ResultSpool> spool = OpenOrDie(dir);
  ASSERT_NE(spool, nullptr);
  ASSERT_TRUE(spool->Put(Result(1, true)).ok());
  ASSERT_TRUE(spool->Put(Result(2, true)).ok());
  ASSERT_TRUE(spool->Remove(1).ok());
  ASSERT_TRUE(spool->Remove(1).ok());  // again: nothing to do
  std::unique_ptr<ResultSpool> reopened = OpenOrDie(dir);
  absl::StatusOr<std::vector<SpooledResult>> listed = reopened->List();
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].attempt_id, 2);
}

TEST(ResultSpoolTest, PutReplacesTheSameAttempt) {
  const std::string dir = FreshWorkerTestDir("spool_replace") + "/spool";
  std::unique_ptr<ResultSpool> spool = OpenOrDie(dir);
  ASSERT_TRUE(spool->Put(Result(3, false)).ok());
  ASSERT_TRUE(spool->Put(Result(3, true)).ok());
  absl::StatusOr<std::vector<SpooledResult>> listed = spool->List();
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_TRUE((*listed)[0].report.succeeded);
}

TEST(ResultSpoolTest, IgnoresInterruptedWritesAndSetsAsideDamage) {
  const std::string dir = FreshWorkerTestDir("spool_damage") + "/spool";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/result-9.json.tmp") << "{\"attempt_id\": 9, \"succ";  // crash mid-write
  std::ofstream(dir + "/result-8.json") << "not json";
  std::ofstream(dir + "/notes.txt") << "unrelated";
  std::unique_ptr<ResultSpool> spool = OpenOrDie(dir);
  ASSERT_NE(spool, nullptr);
  EXPECT_FALSE(std::filesystem::exists(dir + "/result-9.json.tmp"));
  absl::StatusOr<std::vector<SpooledResult>> listed = spool->List();
  ASSERT_TRUE(listed.ok());
  EXPECT_TRUE(listed->empty());
  EXPECT_TRUE(std::filesystem::exists(dir + "/result-8.json.corrupt"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/notes.txt"));
}

TEST(ResultSpoolTest, KeepsTheWorkerId) {
  const std::string dir = FreshWorkerTestDir("spool_id") + "/spool";
  {
    std::unique_ptr<ResultSpool> spool = OpenOrDie(dir);
    EXPECT_EQ(spool->LoadWorkerId(), "");
    ASSERT_TRUE(spool->SaveWorkerId("w-42").ok());
  }
  EXPECT_EQ(OpenOrDie(dir)->LoadWorkerId(), "w-42");
}

TEST(ResultSpoolTest, OpenFailsWithoutADirectory) {
  EXPECT_FALSE(ResultSpool::Open("").ok());
  const std::string dir = FreshWorkerTestDir("spool_file");
  std::ofstream(dir + "/file") << "x";
  EXPECT_FALSE(ResultSpool::Open(dir + "/file").ok());
}

}  // namespace
}  // namespace kvscope::worker

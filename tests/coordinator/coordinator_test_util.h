// File: tests/coordinator/coordinator_test_util.h
//
// What the Coordinator tests share: worker capabilities, result reports, a fixture holding
// a Coordinator over a real SQLite file in a fresh directory with a FakeClock, and a lock
// on that file taken as another process would.
#ifndef KVSCOPE_TESTS_COORDINATOR_COORDINATOR_TEST_UTIL_H_
#define KVSCOPE_TESTS_COORDINATOR_COORDINATOR_TEST_UTIL_H_

#include <sqlite3.h>
#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "coordinator/coordinator.h"
#include "coordinator/store.h"
#include "gtest/gtest.h"

namespace kvscope::coordinator::testing {

// The store's write lock, held from a second SQLite connection (BEGIN IMMEDIATE) from
// construction until Release() or destruction: the coordinator's commits meanwhile wait
// for busy_timeout_seconds and then fail. A test failure when it cannot be taken.
class StoreWriteLock {
 public:
  explicit StoreWriteLock(const std::string& path) {
    EXPECT_EQ(sqlite3_open(path.c_str(), &db_), SQLITE_OK) << path;
    EXPECT_EQ(sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK)
        << sqlite3_errmsg(db_);
  }
  ~StoreWriteLock() { Release(); }
  StoreWriteLock(const StoreWriteLock&) = delete;
  StoreWriteLock& operator=(const StoreWriteLock&) = delete;
  // Rolls back and closes the connection; nothing the second time.
  void Release() {
    if (db_ == nullptr) return;
    EXPECT_EQ(sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(db_);
    db_ = nullptr;
  }

 private:
  sqlite3* db_ = nullptr;
};

inline WorkerCapabilities CpuWorker(int32_t max_cpu_trials = 1) {
  WorkerCapabilities c;
  c.hostname = "cpu-host";
  c.cpu_cores = 16;
  c.backends = {"cpu"};
  c.max_cpu_trials = max_cpu_trials;
  return c;
}

// `n` GPUs of `memory_bytes` each (80 GiB H100s by default).
inline WorkerCapabilities GpuWorker(int n, int64_t memory_bytes = int64_t{80} << 30) {
  WorkerCapabilities c;
  c.hostname = "gpu-host";
  c.cpu_cores = 64;
  c.backends = {"cpu", "cuda"};
  for (int i = 0; i < n; ++i) {
    GpuInfo g;
    g.index = i;
    g.name = "H100";
    g.memory_bytes = memory_bytes;
    c.gpus.push_back(g);
  }
  return c;
}

// A succeeded report whose summary's throughput is `value`.
inline ResultReport Success(int value = 1) {
  ResultReport r;
  r.succeeded = true;
  r.result = {{"summary", {{"throughput", value}}}};
  r.requests_jsonl = "{\"id\":0}\n";
  return r;
}

inline ResultReport Failure(const std::string& why) {
  ResultReport r;
  r.succeeded = false;
  r.error = why;
  return r;
}

// A Coordinator over `dir_`/coordinator.db and `clock_`; Open() again acts as a restart.
// Subclasses set `options_` (before Open) for other lease or rendezvous periods.
class CoordinatorFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = ::testing::TempDir() + "/kvscope_coord_XXXXXX";
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    dir_ = templ;
    path_ = dir_ + "/coordinator.db";
    Open();
  }
  void TearDown() override {
    coordinator_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  // (Re)opens store and coordinator on the same file, as a restarted process does.
  void Open(const StoreOptions& store_options = {}) {
    coordinator_.reset();
    store_.reset();
    auto store = Store::Open(path_, store_options);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    auto coordinator = Coordinator::Create(store_.get(), &clock_, options_);
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = *std::move(coordinator);
  }
  std::string Submit(const Sweep& sweep) {
    auto id = coordinator_->SubmitParsed(sweep, "name: " + sweep.name + "\n", "test.yaml");
    EXPECT_TRUE(id.ok()) << id.status();
    return id.ok() ? *id : "";
  }
  std::string Register(const WorkerCapabilities& caps) {
    auto id = coordinator_->RegisterWorker(caps, "");
    EXPECT_TRUE(id.ok()) << id.status();
    return id.ok() ? *id : "";
  }
  std::vector<TrialAssignment> Acquire(const std::string& worker, int32_t n) {
    auto a = coordinator_->AcquireTrials(worker, n);
    EXPECT_TRUE(a.ok()) << a.status();
    return a.ok() ? *a : std::vector<TrialAssignment>();
  }
  ExperimentInfo Info(const std::string& id) {
    auto info = coordinator_->GetExperiment(id);
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? *info : ExperimentInfo();
  }
  TrialInfo Trial(const std::string& experiment, size_t index) {
    auto trials = coordinator_->ListTrials(experiment);
    EXPECT_TRUE(trials.ok()) << trials.status();
    if (!trials.ok() || trials->size() <= index) return TrialInfo();
    return (*trials)[index];
  }

  CoordinatorOptions options_;
  std::string dir_, path_;
  FakeClock clock_{1'000'000'000};
  std::unique_ptr<Store> store_;
  std::unique_ptr<Coordinator> coordinator_;
};

}  // namespace kvscope::coordinator::testing

#endif  // KVSCOPE_TESTS_COORDINATOR_COORDINATOR_TEST_UTIL_H_

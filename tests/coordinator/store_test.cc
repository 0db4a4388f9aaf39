// The SQLite store: schema migrations, refusal of newer/corrupt/foreign files, atomic batches.
#include "coordinator/store.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace kvscope::coordinator {
namespace {

class TempDir {
 public:
  TempDir() {
    std::string templ = ::testing::TempDir() + "/kvscope_store_XXXXXX";
    path_ = mkdtemp(templ.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Runs `sql` on the file with a separate raw connection (as another program would).
void RawExec(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* err = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
  EXPECT_EQ(rc, SQLITE_OK) << (err ? err : "") << " in " << sql;
  sqlite3_free(err);
  sqlite3_close(db);
}

std::string RawQuery(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  std::string out;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK &&
      sqlite3_step(stmt) == SQLITE_ROW) {
    const unsigned char* text = sqlite3_column_text(stmt, 0);
    out = text ? reinterpret_cast<const char*>(text) : "";
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return out;
}

TEST(StoreTest, FreshStoreIsAtLatestVersionInWalMode) {
  TempDir dir;
  auto store = Store::Open(dir.File("c.db"));
  ASSERT_TRUE(store.ok()) << store.status();
  auto version = (*store)->SchemaVersion();
  ASSERT_TRUE(version.ok());
  EXPECT_EQ(*version, LatestStoreSchemaVersion());
  EXPECT_GE(LatestStoreSchemaVersion(), 2);
  EXPECT_EQ(RawQuery(dir.File("c.db"), "PRAGMA journal_mode"), "wal");
}

TEST(StoreTest, MigrationVersionsAreContiguous) {
  int32_t expected = 1;
  for (const StoreMigration& m : StoreMigrations()) EXPECT_EQ(m.version, expected++);
}

TEST(StoreTest, OlderStoreIsUpgradedKeepingItsData) {
  TempDir dir;
  const std::string path = dir.File("old.db");
  {
    StoreOptions options;
    options.migrate_to_version = 1;
    auto store = Store::Open(path, options);
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_EQ(*(*store)->SchemaVersion(), 1);
  }
  EXPECT_EQ(RawQuery(path, "SELECT count(*) FROM sqlite_schema WHERE name = 'workers'"), "0");
  // Data as the older kvscope wrote it.
  RawExec(path,
          "INSERT INTO experiments (seq, id, name, source, sweep_yaml, axis_names, "
          "max_attempts, state, version, created_unix_s) VALUES "
          "(1, 'e1', 'old', 'old.yaml', 'name: old', '[]', 3, 'running', 1, 5.0)");
  auto store = Store::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(*(*store)->SchemaVersion(), LatestStoreSchemaVersion());
  auto experiments = (*store)->LoadExperiments();
  ASSERT_TRUE(experiments.ok());
  ASSERT_EQ(experiments->size(), 1u);
  EXPECT_EQ((*experiments)[0].name, "old");
  // The tables of the newer steps work.
  StoreBatch batch;
  WorkerRow w;
  w.id = "w1";
  w.seq = 1;
  batch.upsert_workers.push_back(w);
  EventRow e;
  e.kind = "register";
  e.message = "m";
  batch.events.push_back(e);
  ASSERT_TRUE((*store)->Apply(batch).ok());
  EXPECT_EQ((*store)->LoadWorkers()->size(), 1u);
}

TEST(StoreTest, NewerStoreIsRefusedNamingBothVersions) {
  TempDir dir;
  const std::string path = dir.File("new.db");
  ASSERT_TRUE(Store::Open(path).ok());
  const int32_t newer = LatestStoreSchemaVersion() + 1;
  RawExec(path, "UPDATE schema_version SET version = " + std::to_string(newer));
  auto store = Store::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  const std::string message(store.status().message());
  EXPECT_NE(message.find("schema version " + std::to_string(newer)), std::string::npos)
      << message;
  EXPECT_NE(message.find("up to " + std::to_string(LatestStoreSchemaVersion())),
            std::string::npos)
      << message;
  EXPECT_NE(message.find(path), std::string::npos) << message;
}

TEST(StoreTest, CorruptFileIsRefusedNamingThePath) {
  TempDir dir;
  const std::string path = dir.File("corrupt.db");
  {
    std::ofstream out(path, std::ios::binary);
    for (int i = 0; i < 4096; ++i) out << "not a database ";
  }
  auto store = Store::Open(path);
  ASSERT_FALSE(store.ok());
  const std::string message(store.status().message());
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("not a readable SQLite database"), std::string::npos) << message;
}

TEST(StoreTest, ForeignDatabaseIsRefused) {
  TempDir dir;
  const std::string path = dir.File("other.db");
  RawExec(path, "CREATE TABLE something (x INTEGER)");
  auto store = Store::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_NE(std::string(store.status().message()).find("not a kvscope store"), std::string::npos)
      << store.status();
}

TEST(StoreTest, MissingDirectoryNamesThePath) {
  TempDir dir;
  const std::string path = dir.File("no/such/dir/c.db");
  auto store = Store::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_NE(std::string(store.status().message()).find(path), std::string::npos)
      << store.status();
}

TEST(StoreTest, ExperimentIdsAndTrialIds) {
  TempDir dir;
  auto store = Store::Open(dir.File("c.db"));
  ASSERT_TRUE(store.ok());
  ExperimentRow e;
  e.name = "x";
  e.state = "running";
  std::vector<TrialRow> trials(2);
  trials[0].index = 0;
  trials[1].index = 1;
  for (auto& t : trials) t.state = "pending";
  EventRow event;
  event.kind = "submit";
  auto id1 = (*store)->InsertExperiment(e, trials, event);
  auto id2 = (*store)->InsertExperiment(e, trials, event);
  ASSERT_TRUE(id1.ok() && id2.ok()) << id1.status() << id2.status();
  EXPECT_EQ(*id1, "e1");
  EXPECT_EQ(*id2, "e2");
  auto rows = (*store)->ListTrials("e2");
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 2u);
  EXPECT_EQ((*rows)[1].id, "e2.t1");
  EXPECT_EQ((*store)->ListEvents("e1")->size(), 1u);
}

TEST(StoreTest, FailedBatchWritesNothing) {
  TempDir dir;
  auto store = Store::Open(dir.File("c.db"));
  ASSERT_TRUE(store.ok());
  StoreBatch batch;
  EventRow event;
  event.kind = "lease";
  batch.events.push_back(event);
  TrialChange missing;
  missing.id = "e9.t0";
  missing.state = "leased";
  batch.trial_changes.push_back(missing);
  absl::Status status = (*store)->Apply(batch);
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal) << status;
  EXPECT_TRUE((*store)->ListEvents("")->empty());
}

}  // namespace
}  // namespace kvscope::coordinator

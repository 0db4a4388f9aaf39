#include "coordinator/store.h"

#include <sqlite3.h>

#include <cmath>
#include <iterator>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvscope::coordinator {
namespace {

std::string GpusToJson(const std::vector<int32_t>& gpus) { return nlohmann::json(gpus).dump(); }

std::vector<int32_t> GpusFromJson(const std::string& text) {
  std::vector<int32_t> gpus;
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_array()) {
    for (const auto& g : j) {
      if (g.is_number_integer()) gpus.push_back(g.get<int32_t>());
    }
  }
  return gpus;
}

nlohmann::json ParseJsonOr(const std::string& text, nlohmann::json fallback) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  return j.is_discarded() ? fallback : j;
}

}  // namespace

bool StoreBatch::empty() const {
  return upsert_workers.empty() && worker_heartbeats.empty() && insert_attempts.empty() &&
         insert_attempt_ranks.empty() && attempt_changes.empty() &&
         attempt_rank_changes.empty() && trial_changes.empty() && results.empty() &&
         experiment_changes.empty() && events.empty();
}

void StoreBatch::Clear() { *this = StoreBatch(); }

void StoreBatch::Append(StoreBatch&& later) {
  auto move_all = [](auto& to, auto& from) {
    to.insert(to.end(), std::make_move_iterator(from.begin()),
              std::make_move_iterator(from.end()));
  };
  move_all(upsert_workers, later.upsert_workers);
  move_all(worker_heartbeats, later.worker_heartbeats);
  move_all(insert_attempts, later.insert_attempts);
  move_all(insert_attempt_ranks, later.insert_attempt_ranks);
  move_all(attempt_changes, later.attempt_changes);
  move_all(attempt_rank_changes, later.attempt_rank_changes);
  move_all(trial_changes, later.trial_changes);
  move_all(results, later.results);
  move_all(experiment_changes, later.experiment_changes);
  move_all(events, later.events);
}

// A cached statement bound and stepped through; resets itself when it goes out of scope.
class Store::Statement {
 public:
  Statement(Store* store, sqlite3_stmt* stmt) : store_(store), stmt_(stmt) {}
  ~Statement() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Statement& Bind(int64_t v) {
    Check(sqlite3_bind_int64(stmt_, ++next_, v));
    return *this;
  }
  Statement& Bind(int32_t v) { return Bind(static_cast<int64_t>(v)); }
  Statement& Bind(double v) {
    Check(sqlite3_bind_double(stmt_, ++next_, v));
    return *this;
  }
  Statement& Bind(const std::string& v) {
    Check(sqlite3_bind_text(stmt_, ++next_, v.data(), static_cast<int>(v.size()),
                            SQLITE_TRANSIENT));
    return *this;
  }
  // Steps once: true with a row, false when done.
  absl::StatusOr<bool> Step() {
    if (!bind_status_.ok()) return bind_status_;
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return store_->Error(absl::StrCat("executing \"", sqlite3_sql(stmt_), "\""));
  }
  // Steps to completion; returns the number of rows changed.
  absl::StatusOr<int64_t> Run() {
    KVSCOPE_ASSIGN_OR_RETURN(bool row, Step());
    while (row) {
      KVSCOPE_ASSIGN_OR_RETURN(row, Step());
    }
    return static_cast<int64_t>(sqlite3_changes(store_->db_));
  }
  // Runs an UPDATE that must change exactly one row.
  absl::Status RunOne(const std::string& what) {
    KVSCOPE_ASSIGN_OR_RETURN(int64_t changed, Run());
    if (changed != 1) {
      return absl::InternalError(
          absl::StrCat("store ", store_->path_, ": ", what, " matched ", changed, " rows"));
    }
    return absl::OkStatus();
  }

  int64_t Int(int col) const { return sqlite3_column_int64(stmt_, col); }
  double Real(int col) const { return sqlite3_column_double(stmt_, col); }
  std::string Text(int col) const {
    const unsigned char* p = sqlite3_column_text(stmt_, col);
    if (p == nullptr) return std::string();
    return std::string(reinterpret_cast<const char*>(p),
                       static_cast<size_t>(sqlite3_column_bytes(stmt_, col)));
  }

 private:
  void Check(int rc) {
    if (rc != SQLITE_OK && bind_status_.ok()) bind_status_ = store_->Error("binding");
  }
  Store* store_;
  sqlite3_stmt* stmt_;
  int next_ = 0;
  absl::Status bind_status_;
};

Store::Store(std::string path, sqlite3* db) : path_(std::move(path)), db_(db) {}

Store::~Store() {
  for (auto& [sql, stmt] : statements_) sqlite3_finalize(stmt);
  if (db_ != nullptr) sqlite3_close_v2(db_);
}

absl::Status Store::Error(const std::string& what) const {
  const int code = db_ != nullptr ? sqlite3_extended_errcode(db_) : SQLITE_ERROR;
  std::string message = absl::StrCat("store ", path_, ": ", what, ": ",
                                     db_ != nullptr ? sqlite3_errmsg(db_) : "no connection");
  switch (code & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::UnavailableError(message);
    case SQLITE_CONSTRAINT:
      return absl::InternalError(message);
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
      return absl::DataLossError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status Store::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string detail = err != nullptr ? err : "unknown error";
    sqlite3_free(err);
    absl::Status status = Error("executing schema statements");
    return absl::Status(status.code(), absl::StrCat("store ", path_, ": ", detail));
  }
  return absl::OkStatus();
}

absl::StatusOr<sqlite3_stmt*> Store::Prepare(const char* sql) {
  auto it = statements_.find(sql);
  if (it != statements_.end()) return it->second;
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, nullptr) != SQLITE_OK) {
    return Error(absl::StrCat("preparing \"", sql, "\""));
  }
  statements_.emplace(sql, stmt);
  return stmt;
}

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& path,
                                                   const StoreOptions& options) {
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &db,
                                 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                     SQLITE_OPEN_FULLMUTEX,
                                 nullptr);
  if (rc != SQLITE_OK) {
    std::string message = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    if (db != nullptr) sqlite3_close_v2(db);
    return absl::UnavailableError(
        absl::StrCat("cannot open the coordinator store ", path, ": ", message));
  }
  std::unique_ptr<Store> store(new Store(path, db));
  absl::Status status = store->Init(options);
  if (!status.ok()) return status;
  return store;
}

absl::Status Store::Init(const StoreOptions& options) {
  std::lock_guard<std::mutex> lock(mu_);
  sqlite3_busy_timeout(db_, static_cast<int>(std::lround(options.busy_timeout_seconds * 1000)));
  // The first read of the file: a file that is not a database fails here.
  absl::Status status = Exec("SELECT count(*) FROM sqlite_schema");
  if (!status.ok()) {
    return absl::DataLossError(absl::StrCat(
        "the coordinator store ", path_,
        " is not a readable SQLite database (corrupt, or not a kvscope store): ",
        status.message()));
  }
  {
    KVSCOPE_ASSIGN_OR_RETURN(sqlite3_stmt * raw, Prepare("PRAGMA journal_mode=WAL"));
    Statement stmt(this, raw);
    KVSCOPE_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row || stmt.Text(0) != "wal") {
      return absl::FailedPreconditionError(absl::StrCat(
          "store ", path_, ": cannot switch to WAL journal mode (got \"",
          row ? stmt.Text(0) : std::string(), "\"); is the file on a local file system?"));
    }
  }
  KVSCOPE_RETURN_IF_ERROR(Exec("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;"));
  const int32_t latest = LatestStoreSchemaVersion();
  int32_t target = options.migrate_to_version > 0 ? options.migrate_to_version : latest;
  if (target > latest) target = latest;
  return Migrate(target);
}

absl::StatusOr<int32_t> Store::SchemaVersionLocked() {
  {
    KVSCOPE_ASSIGN_OR_RETURN(
        sqlite3_stmt * raw,
        Prepare("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND "
                "name = 'schema_version'"));
    Statement stmt(this, raw);
    KVSCOPE_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row || stmt.Int(0) == 0) return 0;
  }
  // Not cached: the table may not have existed when statements were first prepared.
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db_, "SELECT max(version) FROM schema_version", -1, &raw, nullptr) !=
      SQLITE_OK) {
    return Error("reading schema_version");
  }
  int32_t version = 0;
  const int rc = sqlite3_step(raw);
  if (rc == SQLITE_ROW) version = static_cast<int32_t>(sqlite3_column_int64(raw, 0));
  sqlite3_finalize(raw);
  if (rc != SQLITE_ROW) return Error("reading schema_version");
  return version;
}

absl::StatusOr<int32_t> Store::SchemaVersion() {
  std::lock_guard<std::mutex> lock(mu_);
  return SchemaVersionLocked();
}

absl::Status Store::Migrate(int32_t target) {
  KVSCOPE_ASSIGN_OR_RETURN(int32_t current, SchemaVersionLocked());
  const int32_t latest = LatestStoreSchemaVersion();
  if (current > latest) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the coordinator store ", path_, " has schema version ", current,
        ", written by a newer kvscope; this kvscope supports schema versions up to ", latest,
        ". Upgrade kvscope, or use another --db file."));
  }
  if (current == 0) {
    // A fresh file must be empty: refuse to add tables to some other application's database.
    KVSCOPE_ASSIGN_OR_RETURN(sqlite3_stmt * raw,
                             Prepare("SELECT count(*) FROM sqlite_schema WHERE type = 'table'"));
    Statement stmt(this, raw);
    KVSCOPE_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (row && stmt.Int(0) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("store ", path_,
                       ": the file is an SQLite database but not a kvscope store (it has "
                       "tables but no schema_version)"));
    }
  }
  for (const StoreMigration& m : StoreMigrations()) {
    if (m.version <= current || m.version > target) continue;
    KVSCOPE_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
    std::string sql = m.sql;
    if (m.version == 1) sql += "CREATE TABLE schema_version (version INTEGER NOT NULL);";
    sql += absl::StrCat("DELETE FROM schema_version; INSERT INTO schema_version VALUES (",
                        m.version, ");");
    absl::Status status = Exec(sql.c_str());
    if (status.ok()) status = Exec("COMMIT");
    if (!status.ok()) {
      Exec("ROLLBACK").IgnoreError();
      return absl::Status(status.code(),
                          absl::StrCat("migrating to schema version ", m.version, " (",
                                       m.description, "): ", status.message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Store::InsertExperiment(const ExperimentRow& experiment,
                                                    const std::vector<TrialRow>& trials,
                                                    const EventRow& event) {
  std::lock_guard<std::mutex> lock(mu_);
  KVSCOPE_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  auto body = [&]() -> absl::StatusOr<std::string> {
    int64_t seq = 1;
    {
      KVSCOPE_ASSIGN_OR_RETURN(sqlite3_stmt * raw,
                               Prepare("SELECT ifnull(max(seq), 0) + 1 FROM experiments"));
      Statement stmt(this, raw);
      KVSCOPE_ASSIGN_OR_RETURN(bool row, stmt.Step());
      if (row) seq = stmt.Int(0);
    }
    const std::string id = absl::StrCat("e", seq);
    {
      KVSCOPE_ASSIGN_OR_RETURN(
          sqlite3_stmt * raw,
          Prepare("INSERT INTO experiments (seq, id, name, source, sweep_yaml, axis_names, "
                  "max_attempts, state, version, created_unix_s) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"));
      Statement stmt(this, raw);
      stmt.Bind(seq).Bind(id).Bind(experiment.name).Bind(experiment.source)
          .Bind(experiment.sweep_yaml).Bind(experiment.axis_names.dump())
          .Bind(experiment.max_attempts).Bind(experiment.state).Bind(experiment.version)
          .Bind(experiment.created_unix_s);
      KVSCOPE_RETURN_IF_ERROR(stmt.Run().status());
    }
    KVSCOPE_ASSIGN_OR_RETURN(
        sqlite3_stmt * insert_trial,
        Prepare("INSERT INTO trials (id, experiment_id, idx, repeat, seed, axes, label, "
                "config_yaml, requirements, state, current_attempt, attempt_count, "
                "max_attempts, requests_done, requests_total, elapsed_s, error) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"));
    for (const TrialRow& t : trials) {
      Statement stmt(this, insert_trial);
      stmt.Bind(MakeTrialId(id, t.index)).Bind(id).Bind(t.index).Bind(t.repeat)
          .Bind(static_cast<int64_t>(t.seed)).Bind(t.axes.dump()).Bind(t.label)
          .Bind(t.config_yaml).Bind(RequirementsToJson(t.requirements).dump()).Bind(t.state)
          .Bind(t.current_attempt).Bind(t.attempt_count).Bind(t.max_attempts)
          .Bind(t.requests_done).Bind(t.requests_total).Bind(t.elapsed_s).Bind(t.error);
      KVSCOPE_RETURN_IF_ERROR(stmt.Run().status());
    }
    EventRow e = event;
    e.experiment_id = id;
    KVSCOPE_RETURN_IF_ERROR(InsertEventLocked(e));
    return id;
  };
  absl::StatusOr<std::string> id = body();
  if (id.ok()) {
    absl::Status status = Exec("COMMIT");
    if (status.ok()) return id;
    id = status;
  }
  Exec("ROLLBACK").IgnoreError();
  return id.status();
}

absl::Status Store::InsertEventLocked(const EventRow& e) {
  KVSCOPE_ASSIGN_OR_RETURN(
      sqlite3_stmt * raw,
      Prepare("INSERT INTO events (time_unix_s, experiment_id, trial_id, attempt_id, kind, "
              "message) VALUES (?, ?, ?, ?, ?, ?)"));
  Statement stmt(this, raw);
  stmt.Bind(e.time_unix_s).Bind(e.experiment_id).Bind(e.trial_id).Bind(e.attempt_id)
      .Bind(e.kind).Bind(e.message);
  return stmt.Run().status();
}

absl::Status Store::Apply(const StoreBatch& batch) {
  if (batch.empty()) return absl::OkStatus();
  std::lock_guard<std::mutex> lock(mu_);
  KVSCOPE_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  absl::Status status = ApplyLocked(batch);
  if (status.ok()) status = Exec("COMMIT");
  if (!status.ok()) Exec("ROLLBACK").IgnoreError();
  return status;
}

absl::Status Store::ApplyLocked(const StoreBatch& batch) {
  for (const WorkerRow& w : batch.upsert_workers) {
    KVSCOPE_ASSIGN_OR_RETURN(
        sqlite3_stmt * raw,
        Prepare("INSERT INTO workers (id, seq, capabilities, registered_unix_s, "
                "last_heartbeat_unix_s) VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "capabilities = excluded.capabilities, "
                "last_heartbeat_unix_s = excluded.last_heartbeat_unix_s"));
    Statement stmt(this, raw);
    stmt.Bind(w.id).Bind(w.seq).Bind(w.capabilities.dump()).Bind(w.registered_unix_s)
        .Bind(w.last_heartbeat_unix_s);
    KVSCOPE_RETURN_IF_ERROR(stmt.Run().status());
  }
  for (const auto& [id, time] : batch.worker_heartbeats) {
    KVSCOPE_ASSIGN_OR_RETURN(
        sqlite3_stmt * raw,
        Prepare("UPDATE workers SET last_heartbeat_unix_s = max(last_heartbeat_unix_s, ?1) "
                "WHERE id = ?2"));
    Statement stmt(this, raw);
    stmt.Bind(time).Bind(id);
    KVSCOPE_RETURN_IF_ERROR(stmt.RunOne(absl::StrCat("heartbeat of worker ", id)));
  }
  for (const AttemptRow& a : batch.insert_attempts) {
    KVSCOPE_ASSIGN_OR_RETURN(
        sqlite3_stmt * raw,
        Prepare("INSERT INTO attempts (id, trial_id, number, worker_id, gpu_indices, state, "
                "error, lease_renewed_unix_s, started_unix_s, finished_unix_s, gang_id, "
                "world_size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"));
    Statement stmt(this, raw);
    stmt.Bind(a.id).Bind(a.trial_id).Bind(a.number).Bind(a.worker_id)
        .Bind(GpusToJson(a.gpu_indices)).Bind(a.state).Bind(a.error)
        .Bind(a.lease_renewed_unix_s).Bind(a.started_unix_s).Bind(a.finished_unix_s)
        .Bind(a.gang_id).Bind(a.world_size);
    KVSCOPE_RETURN_IF_ERROR(stmt.Run().status());
  }
  for (const AttemptRankRow& r : batch.insert_attempt_ranks) {
    KVSCOPE_ASSIGN_OR_RETURN(
        sqlite3_stmt * raw,
        Prepare("INSERT INTO attempt_ranks (attempt_id, rank, worker_id, gpu_indices, state) "
                "VALUES (?, ?, ?, ?, ?)"));
    Statement stmt(this, raw);
    stmt.Bind(r.attempt_id).Bind(r.rank).Bind(r.worker_id).Bind(GpusToJson(r.gpu_indices))
        .Bind(r.state);
    KVSCOPE_RETURN_IF_ERROR(stmt.Run().status());
  }
  for (const AttemptChange& a : batch.attempt_changes) {
    KVSCOPE_ASSIGN_OR_RETURN(
        sqlite3_stmt * raw,
        Prepare("UPDATE attempts SET state = ?, error = ?, lease_renewed_unix_s = ?, "
                "finished_unix_s = ? WHERE id = ?"));
    Statement stmt(this, raw);
    stmt.Bind(a.state).Bind(a.error).Bind(a.lease_renewed_unix_s).Bind(a.finished_unix_s)
        .Bind(a.id);
    KVSCOPE_RETURN_IF_ERROR(stmt.RunOne(absl::StrCat("update of attempt ", a.id)));
  }
  for (const AttemptRankChange& r : batch.attempt_rank_changes) {
    KVSCOPE_ASSIGN_OR_RETURN(
        sqlite3_stmt * raw,
        Prepare("UPDATE attempt_ranks SET state = ? WHERE attempt_id = ? AND rank = ?"));
    Statement stmt(this, raw);
    stmt.Bind(r.state).Bind(r.attempt_id).Bind(r.rank);
    KVSCOPE_RETURN_IF_ERROR(stmt.RunOne(
        absl::StrCat("update of rank ", r.rank, " of attempt ", r.attempt_id)));
  }
  for (const TrialChange& t : batch.trial_changes) {
    KVSCOPE_ASSIGN_OR_RETURN(
        sqlite3_stmt * raw,
        Prepare("UPDATE trials SET state = ?, current_attempt = ?, attempt_count = ?, "
                "requests_done = ?, requests_total = ?, elapsed_s = ?, error = ? WHERE id = ?"));
    Statement stmt(this, raw);
    stmt.Bind(t.state).Bind(t.current_attempt).Bind(t.attempt_count).Bind(t.requests_done)
        .Bind(t.requests_total).Bind(t.elapsed_s).Bind(t.error).Bind(t.id);
    KVSCOPE_RETURN_IF_ERROR(stmt.RunOne(absl::StrCat("update of trial ", t.id)));
  }
  for (const ResultRecord& r : batch.results) {
    KVSCOPE_ASSIGN_OR_RETURN(
        sqlite3_stmt * raw,
        Prepare("INSERT INTO results (trial_id, attempt_id, result_json, requests_jsonl, "
                "stored_unix_s) VALUES (?, ?, ?, ?, ?)"));
    Statement stmt(this, raw);
    stmt.Bind(r.trial_id).Bind(r.attempt_id).Bind(r.result_json).Bind(r.requests_jsonl)
        .Bind(r.stored_unix_s);
    KVSCOPE_RETURN_IF_ERROR(stmt.Run().status());
  }
  for (const ExperimentChange& e : batch.experiment_changes) {
    KVSCOPE_ASSIGN_OR_RETURN(
        sqlite3_stmt * raw, Prepare("UPDATE experiments SET state = ?, version = ? WHERE id = ?"));
    Statement stmt(this, raw);
    stmt.Bind(e.state).Bind(e.version).Bind(e.id);
    KVSCOPE_RETURN_IF_ERROR(stmt.RunOne(absl::StrCat("update of experiment ", e.id)));
  }
  for (const EventRow& e : batch.events) KVSCOPE_RETURN_IF_ERROR(InsertEventLocked(e));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ExperimentRow>> Store::LoadExperiments() {
  std::lock_guard<std::mutex> lock(mu_);
  KVSCOPE_ASSIGN_OR_RETURN(
      sqlite3_stmt * raw,
      Prepare("SELECT id, name, source, axis_names, max_attempts, state, version, "
              "created_unix_s FROM experiments ORDER BY seq"));
  Statement stmt(this, raw);
  std::vector<ExperimentRow> rows;
  for (;;) {
    KVSCOPE_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    ExperimentRow e;
    e.id = stmt.Text(0);
    e.name = stmt.Text(1);
    e.source = stmt.Text(2);
    e.axis_names = ParseJsonOr(stmt.Text(3), nlohmann::json::array());
    e.max_attempts = static_cast<int32_t>(stmt.Int(4));
    e.state = stmt.Text(5);
    e.version = stmt.Int(6);
    e.created_unix_s = stmt.Real(7);
    rows.push_back(std::move(e));
  }
  return rows;
}

namespace {
// Columns shared by the trial queries, in this order.
constexpr int kTrialStateColumns = 14;
}  // namespace

#define KVSCOPE_TRIAL_STATE_COLUMNS                                                        \
  "t.id, t.experiment_id, t.idx, t.repeat, t.seed, t.requirements, t.state, "             \
  "t.current_attempt, t.attempt_count, t.max_attempts, t.requests_done, t.requests_total, " \
  "t.elapsed_s, t.error"

template <typename S>
static void ReadTrialState(const S& stmt, TrialRow* t) {
  t->id = stmt.Text(0);
  t->experiment_id = stmt.Text(1);
  t->index = stmt.Int(2);
  t->repeat = static_cast<int32_t>(stmt.Int(3));
  t->seed = static_cast<uint64_t>(stmt.Int(4));
  t->requirements = RequirementsFromJson(ParseJsonOr(stmt.Text(5), nlohmann::json::object()));
  t->state = stmt.Text(6);
  t->current_attempt = stmt.Int(7);
  t->attempt_count = static_cast<int32_t>(stmt.Int(8));
  t->max_attempts = static_cast<int32_t>(stmt.Int(9));
  t->requests_done = stmt.Int(10);
  t->requests_total = stmt.Int(11);
  t->elapsed_s = stmt.Real(12);
  t->error = stmt.Text(13);
}

absl::StatusOr<std::vector<TrialRow>> Store::LoadTrialStates() {
  std::lock_guard<std::mutex> lock(mu_);
  KVSCOPE_ASSIGN_OR_RETURN(
      sqlite3_stmt * raw,
      Prepare("SELECT " KVSCOPE_TRIAL_STATE_COLUMNS
              " FROM trials t JOIN experiments e ON e.id = t.experiment_id "
              "ORDER BY e.seq, t.idx"));
  Statement stmt(this, raw);
  std::vector<TrialRow> rows;
  for (;;) {
    KVSCOPE_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    TrialRow t;
    ReadTrialState(stmt, &t);
    t.axes = nullptr;
    rows.push_back(std::move(t));
  }
  return rows;
}

absl::StatusOr<std::vector<TrialRow>> Store::ListTrials(const std::string& experiment_id) {
  std::lock_guard<std::mutex> lock(mu_);
  KVSCOPE_ASSIGN_OR_RETURN(
      sqlite3_stmt * raw,
      Prepare("SELECT " KVSCOPE_TRIAL_STATE_COLUMNS
              ", t.axes, t.label FROM trials t WHERE t.experiment_id = ? ORDER BY t.idx"));
  Statement stmt(this, raw);
  stmt.Bind(experiment_id);
  std::vector<TrialRow> rows;
  for (;;) {
    KVSCOPE_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    TrialRow t;
    ReadTrialState(stmt, &t);
    t.axes = ParseJsonOr(stmt.Text(kTrialStateColumns), nlohmann::json::object());
    t.label = stmt.Text(kTrialStateColumns + 1);
    rows.push_back(std::move(t));
  }
  return rows;
}

#define KVSCOPE_ATTEMPT_COLUMNS                                                        \
  "a.id, a.trial_id, a.number, a.worker_id, a.gpu_indices, a.state, a.error, "         \
  "a.lease_renewed_unix_s, a.started_unix_s, a.finished_unix_s, a.gang_id, a.world_size"

template <typename S>
static AttemptRow ReadAttempt(const S& stmt) {
  AttemptRow a;
  a.id = stmt.Int(0);
  a.trial_id = stmt.Text(1);
  a.number = static_cast<int32_t>(stmt.Int(2));
  a.worker_id = stmt.Text(3);
  a.gpu_indices = GpusFromJson(stmt.Text(4));
  a.state = stmt.Text(5);
  a.error = stmt.Text(6);
  a.lease_renewed_unix_s = stmt.Real(7);
  a.started_unix_s = stmt.Real(8);
  a.finished_unix_s = stmt.Real(9);
  a.gang_id = stmt.Text(10);
  a.world_size = static_cast<int32_t>(stmt.Int(11));
  return a;
}

template <typename S>
static AttemptRankRow ReadAttemptRank(const S& stmt) {
  AttemptRankRow r;
  r.attempt_id = stmt.Int(0);
  r.rank = static_cast<int32_t>(stmt.Int(1));
  r.worker_id = stmt.Text(2);
  r.gpu_indices = GpusFromJson(stmt.Text(3));
  r.state = stmt.Text(4);
  return r;
}

absl::StatusOr<std::vector<AttemptRankRow>> Store::LoadOpenAttemptRanks() {
  std::lock_guard<std::mutex> lock(mu_);
  KVSCOPE_ASSIGN_OR_RETURN(
      sqlite3_stmt * raw,
      Prepare("SELECT r.attempt_id, r.rank, r.worker_id, r.gpu_indices, r.state "
              "FROM attempt_ranks r JOIN attempts a ON a.id = r.attempt_id "
              "WHERE a.state IN ('leased', 'running') ORDER BY r.attempt_id, r.rank"));
  Statement stmt(this, raw);
  std::vector<AttemptRankRow> rows;
  for (;;) {
    KVSCOPE_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    rows.push_back(ReadAttemptRank(stmt));
  }
  return rows;
}

absl::StatusOr<std::vector<AttemptRankRow>> Store::ListAttemptRanks(int64_t attempt_id) {
  std::lock_guard<std::mutex> lock(mu_);
  KVSCOPE_ASSIGN_OR_RETURN(
      sqlite3_stmt * raw,
      Prepare("SELECT attempt_id, rank, worker_id, gpu_indices, state FROM attempt_ranks "
              "WHERE attempt_id = ? ORDER BY rank"));
  Statement stmt(this, raw);
  stmt.Bind(attempt_id);
  std::vector<AttemptRankRow> rows;
  for (;;) {
    KVSCOPE_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    rows.push_back(ReadAttemptRank(stmt));
  }
  return rows;
}

absl::StatusOr<std::vector<AttemptRow>> Store::LoadOpenAttempts() {
  std::lock_guard<std::mutex> lock(mu_);
  KVSCOPE_ASSIGN_OR_RETURN(sqlite3_stmt * raw,
                           Prepare("SELECT " KVSCOPE_ATTEMPT_COLUMNS
                                   " FROM attempts a WHERE a.state IN ('leased', 'running') "
                                   "ORDER BY a.id"));
  Statement stmt(this, raw);
  std::vector<AttemptRow> rows;
  for (;;) {
    KVSCOPE_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    rows.push_back(ReadAttempt(stmt));
  }
  return rows;
}

absl::StatusOr<std::vector<AttemptRow>> Store::ListAttempts(const std::string& experiment_id) {
  std::lock_guard<std::mutex> lock(mu_);
  KVSCOPE_ASSIGN_OR_RETURN(sqlite3_stmt * raw,
                           Prepare("SELECT " KVSCOPE_ATTEMPT_COLUMNS
                                   " FROM attempts a JOIN trials t ON t.id = a.trial_id "
                                   "WHERE t.experiment_id = ? ORDER BY t.idx, a.number"));
  Statement stmt(this, raw);
  stmt.Bind(experiment_id);
  std::vector<AttemptRow> rows;
  for (;;) {
    KVSCOPE_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    rows.push_back(ReadAttempt(stmt));
  }
  return rows;
}

absl::StatusOr<std::optional<AttemptRow>> Store::GetAttempt(int64_t attempt_id) {
  std::lock_guard<std::mutex> lock(mu_);
  KVSCOPE_ASSIGN_OR_RETURN(
      sqlite3_stmt * raw,
      Prepare("SELECT " KVSCOPE_ATTEMPT_COLUMNS " FROM attempts a WHERE a.id = ?"));
  Statement stmt(this, raw);
  stmt.Bind(attempt_id);
  KVSCOPE_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return std::optional<AttemptRow>();
  return std::optional<AttemptRow>(ReadAttempt(stmt));
}

absl::StatusOr<std::vector<AttemptRow>> Store::ListTrialAttempts(const std::string& trial_id) {
  std::lock_guard<std::mutex> lock(mu_);
  KVSCOPE_ASSIGN_OR_RETURN(sqlite3_stmt * raw,
                           Prepare("SELECT " KVSCOPE_ATTEMPT_COLUMNS
                                   " FROM attempts a WHERE a.trial_id = ? ORDER BY a.number"));
  Statement stmt(this, raw);
  stmt.Bind(trial_id);
  std::vector<AttemptRow> rows;
  for (;;) {
    KVSCOPE_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    rows.push_back(ReadAttempt(stmt));
  }
  return rows;
}

absl::StatusOr<int64_t> Store::MaxAttemptId() {
  std::lock_guard<std::mutex> lock(mu_);
  KVSCOPE_ASSIGN_OR_RETURN(sqlite3_stmt * raw, Prepare("SELECT ifnull(max(id), 0) FROM attempts"));
  Statement stmt(this, raw);
  KVSCOPE_ASSIGN_OR_RETURN(bool row, stmt.Step());
  return row ? stmt.Int(0) : 0;
}

absl::StatusOr<std::vector<WorkerRow>> Store::LoadWorkers() {
  std::lock_guard<std::mutex> lock(mu_);
  KVSCOPE_ASSIGN_OR_RETURN(
      sqlite3_stmt * raw,
      Prepare("SELECT id, seq, capabilities, registered_unix_s, last_heartbeat_unix_s "
              "FROM workers ORDER BY seq"));
  Statement stmt(this, raw);
  std::vector<WorkerRow> rows;
  for (;;) {
    KVSCOPE_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    WorkerRow w;
    w.id = stmt.Text(0);
    w.seq = stmt.Int(1);
    w.capabilities = ParseJsonOr(stmt.Text(2), nlohmann::json::object());
    w.registered_unix_s = stmt.Real(3);
    w.last_heartbeat_unix_s = stmt.Real(4);
    rows.push_back(std::move(w));
  }
  return rows;
}

absl::StatusOr<std::string> Store::GetSweepYaml(const std::string& experiment_id) {
  std::lock_guard<std::mutex> lock(mu_);
  KVSCOPE_ASSIGN_OR_RETURN(sqlite3_stmt * raw,
                           Prepare("SELECT sweep_yaml FROM experiments WHERE id = ?"));
  Statement stmt(this, raw);
  stmt.Bind(experiment_id);
  KVSCOPE_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("no experiment ", experiment_id));
  return stmt.Text(0);
}

absl::StatusOr<std::string> Store::GetTrialConfig(const std::string& trial_id) {
  std::lock_guard<std::mutex> lock(mu_);
  KVSCOPE_ASSIGN_OR_RETURN(sqlite3_stmt * raw,
                           Prepare("SELECT config_yaml FROM trials WHERE id = ?"));
  Statement stmt(this, raw);
  stmt.Bind(trial_id);
  KVSCOPE_ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("no trial ", trial_id));
  return stmt.Text(0);
}

absl::StatusOr<std::vector<ResultRecord>> Store::ListResults(const std::string& experiment_id) {
  std::lock_guard<std::mutex> lock(mu_);
  KVSCOPE_ASSIGN_OR_RETURN(
      sqlite3_stmt * raw,
      Prepare("SELECT r.trial_id, r.attempt_id, r.result_json, r.requests_jsonl, "
              "r.stored_unix_s FROM results r JOIN trials t ON t.id = r.trial_id "
              "WHERE t.experiment_id = ? ORDER BY t.idx"));
  Statement stmt(this, raw);
  stmt.Bind(experiment_id);
  std::vector<ResultRecord> rows;
  for (;;) {
    KVSCOPE_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    ResultRecord r;
    r.trial_id = stmt.Text(0);
    r.attempt_id = stmt.Int(1);
    r.result_json = stmt.Text(2);
    r.requests_jsonl = stmt.Text(3);
    r.stored_unix_s = stmt.Real(4);
    rows.push_back(std::move(r));
  }
  return rows;
}

absl::StatusOr<int64_t> Store::CountResults(const std::string& trial_id) {
  std::lock_guard<std::mutex> lock(mu_);
  KVSCOPE_ASSIGN_OR_RETURN(sqlite3_stmt * raw,
                           Prepare("SELECT count(*) FROM results WHERE trial_id = ?"));
  Statement stmt(this, raw);
  stmt.Bind(trial_id);
  KVSCOPE_ASSIGN_OR_RETURN(bool row, stmt.Step());
  return row ? stmt.Int(0) : 0;
}

absl::StatusOr<std::vector<EventRow>> Store::ListEvents(const std::string& experiment_id) {
  std::lock_guard<std::mutex> lock(mu_);
  KVSCOPE_ASSIGN_OR_RETURN(
      sqlite3_stmt * raw,
      Prepare("SELECT id, time_unix_s, experiment_id, trial_id, attempt_id, kind, message "
              "FROM events WHERE ?1 = '' OR experiment_id = ?1 ORDER BY id"));
  Statement stmt(this, raw);
  stmt.Bind(experiment_id);
  std::vector<EventRow> rows;
  for (;;) {
    KVSCOPE_ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    EventRow e;
    e.id = stmt.Int(0);
    e.time_unix_s = stmt.Real(1);
    e.experiment_id = stmt.Text(2);
    e.trial_id = stmt.Text(3);
    e.attempt_id = stmt.Int(4);
    e.kind = stmt.Text(5);
    e.message = stmt.Text(6);
    rows.push_back(std::move(e));
  }
  return rows;
}

}  // namespace kvscope::coordinator

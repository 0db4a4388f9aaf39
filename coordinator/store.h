// File: coordinator/store.h
//
// The coordinator's durable state in one SQLite file: experiments, trials, attempts,
// results, workers and an event log. The Coordinator (coordinator/coordinator.h) is its
// only user: it keeps the hot state (pending queues, leases) in memory and writes only the
// changes, each coordinator operation as one StoreBatch applied in one transaction.
//
// Durability: WAL journal with synchronous=FULL, so a batch is on disk when Apply returns
// and a change acknowledged after Apply survives a crash. Foreign keys are enforced.
//
// Schema: versioned migrations (store_schema.cc). Open applies the missing steps, each in
// its own transaction, and refuses a file written by a newer kvscope (naming both schema
// versions) and a file that is not a readable SQLite database (naming the path).
//
// Thread safety: every method may be called from any thread (one mutex; one connection).
#ifndef KVSCOPE_COORDINATOR_STORE_H_
#define KVSCOPE_COORDINATOR_STORE_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "coordinator/sweep.h"
#include "nlohmann/json.hpp"

struct sqlite3;
struct sqlite3_stmt;

namespace kvscope::coordinator {

// One schema migration step: `sql` takes a store at version `version` - 1 to `version`.
struct StoreMigration {
  int32_t version = 0;
  const char* description = "";
  const char* sql = "";
};
// Every step in order (store_schema.cc); versions are 1, 2, ... without gaps.
const std::vector<StoreMigration>& StoreMigrations();
// The schema version this build writes; Open migrates older files up to it.
int32_t LatestStoreSchemaVersion();

// "<experiment id>.t<index>", the id of a trial.
std::string MakeTrialId(const std::string& experiment_id, int64_t index);

// TrialRequirements <-> the JSON kept in trials.requirements.
nlohmann::json RequirementsToJson(const TrialRequirements& requirements);
TrialRequirements RequirementsFromJson(const nlohmann::json& json);

struct StoreOptions {
  double busy_timeout_seconds = 10;  // waiting for another connection's lock
  // Tests only: migrate no further than this version (0 = the latest), to build a store
  // as an older kvscope left it.
  int32_t migrate_to_version = 0;
};

struct ExperimentRow {
  std::string id;          // "e<seq>"; assigned by InsertExperiment
  std::string name;
  std::string source;      // the file name given at submission
  std::string sweep_yaml;  // empty when loaded by LoadExperiments
  nlohmann::json axis_names = nlohmann::json::array();
  int32_t max_attempts = 3;
  std::string state;       // ExperimentStateName()
  int64_t version = 0;
  double created_unix_s = 0;
};

struct TrialRow {
  std::string id;
  std::string experiment_id;
  int64_t index = 0;
  int32_t repeat = 0;
  uint64_t seed = 0;
  nlohmann::json axes = nlohmann::json::object();  // null when loaded by LoadTrialStates
  std::string label;                               // empty when loaded by LoadTrialStates
  std::string config_yaml;                         // empty unless loaded by GetTrialConfig
  TrialRequirements requirements;
  std::string state;            // TrialStateName()
  int64_t current_attempt = 0;  // 0 = none yet
  int32_t attempt_count = 0;    // attempts made so far
  int32_t max_attempts = 3;
  int64_t requests_done = 0, requests_total = 0;
  double elapsed_s = 0;
  std::string error;
};

// The mutable part of a trial (an UPDATE by id).
struct TrialChange {
  std::string id;
  std::string state;
  int64_t current_attempt = 0;
  int32_t attempt_count = 0;
  int64_t requests_done = 0, requests_total = 0;
  double elapsed_s = 0;
  std::string error;
};

struct AttemptRow {
  int64_t id = 0;  // assigned by the coordinator: unique across the store, never reused
  std::string trial_id;
  int32_t number = 1;
  std::string worker_id;             // the worker of rank 0 for a gang
  std::vector<int32_t> gpu_indices;  // rank 0's GPUs for a gang
  std::string state;  // "leased", "running", "succeeded", "failed", "expired", "cancelled"
  std::string error;
  double lease_renewed_unix_s = 0;
  double started_unix_s = 0;
  double finished_unix_s = 0;
  std::string gang_id;     // "" unless the attempt is a gang (world_size > 1)
  int32_t world_size = 1;  // ranks of the gang; 1 for an ordinary attempt
};

// The lease of rank 1..world_size-1 of a gang attempt (rank 0's is the attempt row itself).
struct AttemptRankRow {
  int64_t attempt_id = 0;
  int32_t rank = 1;
  std::string worker_id;
  std::vector<int32_t> gpu_indices;
  // "placed" (leased, not yet handed to its worker), "delivered" (in an AcquireTrials or
  // ReportResult reply), "released" (the rank reported success; it holds nothing any more).
  // Meaningful while the attempt is open; the attempt row's state says how it ended.
  std::string state;
};

// A rank's new state (an UPDATE by attempt id and rank).
struct AttemptRankChange {
  int64_t attempt_id = 0;
  int32_t rank = 1;
  std::string state;
};

// The mutable part of an attempt (an UPDATE by id).
struct AttemptChange {
  int64_t id = 0;
  std::string state;
  std::string error;
  double lease_renewed_unix_s = 0;
  double finished_unix_s = 0;
};

struct ResultRecord {
  std::string trial_id;
  int64_t attempt_id = 0;
  std::string result_json;  // serialized result.json
  std::string requests_jsonl;
  double stored_unix_s = 0;
};

struct ExperimentChange {
  std::string id;
  std::string state;
  int64_t version = 0;
};

struct WorkerRow {
  std::string id;  // "w<seq>"
  int64_t seq = 0;
  nlohmann::json capabilities = nlohmann::json::object();
  double registered_unix_s = 0;
  double last_heartbeat_unix_s = 0;
};

struct EventRow {
  int64_t id = 0;  // assigned by the store
  double time_unix_s = 0;
  std::string experiment_id;  // "" = none
  std::string trial_id;       // "" = none
  int64_t attempt_id = 0;     // 0 = none
  std::string kind;  // "submit", "lease", "running", "expiry", "result", "failure", "cancel",
                     // "finish", "register", "rank" (a gang's rank > 0 finished)
  std::string message;
};

// The writes of one coordinator operation, applied in one transaction in this order:
// worker upserts, heartbeats, attempt inserts, attempt rank inserts, attempt changes,
// attempt rank changes, trial changes, results, experiment changes, events.
struct StoreBatch {
  std::vector<WorkerRow> upsert_workers;
  std::vector<std::pair<std::string, double>> worker_heartbeats;  // id, last_heartbeat_unix_s
  std::vector<AttemptRow> insert_attempts;
  std::vector<AttemptRankRow> insert_attempt_ranks;
  std::vector<AttemptChange> attempt_changes;
  std::vector<AttemptRankChange> attempt_rank_changes;
  std::vector<TrialChange> trial_changes;
  std::vector<ResultRecord> results;
  std::vector<ExperimentChange> experiment_changes;
  std::vector<EventRow> events;

  bool empty() const;
  void Clear();
  // Adds `later`'s rows after this batch's. Applying the result equals applying the two
  // batches one after the other: within each kind rows keep their order, inserts come
  // before the changes that may refer to them, and every change sets whole values.
  void Append(StoreBatch&& later);
};

class Store {
 public:
  // Opens (creating if absent) and migrates the store at `path`.
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& path,
                                                     const StoreOptions& options = {});
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  const std::string& path() const { return path_; }
  absl::StatusOr<int32_t> SchemaVersion();

  // --- writes ---
  // Inserts an experiment (its id assigned here: "e" + the next sequence number), its
  // trials (ids from MakeTrialId; `experiment_id` ignored) and `event` (experiment id
  // filled in), in one transaction. Returns the experiment id.
  absl::StatusOr<std::string> InsertExperiment(const ExperimentRow& experiment,
                                               const std::vector<TrialRow>& trials,
                                               const EventRow& event);
  // Applies `batch` in one transaction; on error nothing of it is written. An UPDATE that
  // matches no row is an error (Internal), as is a second result for a trial.
  absl::Status Apply(const StoreBatch& batch);

  // --- reads used to rebuild the coordinator's memory ---
  absl::StatusOr<std::vector<ExperimentRow>> LoadExperiments();  // by seq; no sweep_yaml
  // Every trial without axes, label and config, in (experiment seq, index) order.
  absl::StatusOr<std::vector<TrialRow>> LoadTrialStates();
  // Attempts in state leased or running.
  absl::StatusOr<std::vector<AttemptRow>> LoadOpenAttempts();
  // The rank rows (ranks 1..n-1) of the gang attempts in state leased or running, by
  // attempt then rank.
  absl::StatusOr<std::vector<AttemptRankRow>> LoadOpenAttemptRanks();
  absl::StatusOr<int64_t> MaxAttemptId();  // 0 for none
  absl::StatusOr<std::vector<WorkerRow>> LoadWorkers();

  // --- reads for the API ---
  absl::StatusOr<std::string> GetSweepYaml(const std::string& experiment_id);
  absl::StatusOr<std::string> GetTrialConfig(const std::string& trial_id);
  // Full trial rows of an experiment in index order (no config_yaml).
  absl::StatusOr<std::vector<TrialRow>> ListTrials(const std::string& experiment_id);
  // Attempts of an experiment's trials, by trial then number.
  absl::StatusOr<std::vector<AttemptRow>> ListAttempts(const std::string& experiment_id);
  absl::StatusOr<std::optional<AttemptRow>> GetAttempt(int64_t attempt_id);
  // The rank rows (ranks 1..n-1) of one attempt by rank; empty for an ordinary attempt.
  absl::StatusOr<std::vector<AttemptRankRow>> ListAttemptRanks(int64_t attempt_id);
  // Attempts of one trial by number.
  absl::StatusOr<std::vector<AttemptRow>> ListTrialAttempts(const std::string& trial_id);
  // Results of an experiment, in trial index order.
  absl::StatusOr<std::vector<ResultRecord>> ListResults(const std::string& experiment_id);
  // Events of an experiment ("" = all events), oldest first.
  absl::StatusOr<std::vector<EventRow>> ListEvents(const std::string& experiment_id);
  absl::StatusOr<int64_t> CountResults(const std::string& trial_id);

 private:
  class Statement;
  Store(std::string path, sqlite3* db);

  absl::Status Init(const StoreOptions& options);
  absl::Status Migrate(int32_t target);
  absl::StatusOr<int32_t> SchemaVersionLocked();
  absl::Status Exec(const char* sql);
  // A cached prepared statement for `sql` (a string literal).
  absl::StatusOr<sqlite3_stmt*> Prepare(const char* sql);
  absl::Status Error(const std::string& what) const;
  absl::Status ApplyLocked(const StoreBatch& batch);
  absl::Status InsertEventLocked(const EventRow& event);

  const std::string path_;
  std::mutex mu_;                                            // guards everything below
  sqlite3* db_ = nullptr;                                    // the one connection
  std::unordered_map<const char*, sqlite3_stmt*> statements_;  // keyed by literal address
};

}  // namespace kvscope::coordinator

#endif  // KVSCOPE_COORDINATOR_STORE_H_

// The store's schema as an ordered list of migrations. A released step is never edited:
// a schema change is a new step appended at the end.
#include <string>
#include <vector>

#include "coordinator/store.h"

namespace kvscope::coordinator {

const std::vector<StoreMigration>& StoreMigrations() {
  static const std::vector<StoreMigration>* const kMigrations = new std::vector<StoreMigration>{
      {1, "experiments, trials, attempts and results",
       R"sql(
CREATE TABLE experiments (
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  name TEXT NOT NULL,
  source TEXT NOT NULL,
  sweep_yaml TEXT NOT NULL,
  axis_names TEXT NOT NULL,
  max_attempts INTEGER NOT NULL,
  state TEXT NOT NULL,
  version INTEGER NOT NULL,
  created_unix_s REAL NOT NULL);
CREATE TABLE trials (
  id TEXT PRIMARY KEY,
  experiment_id TEXT NOT NULL REFERENCES experiments(id),
  idx INTEGER NOT NULL,
  repeat INTEGER NOT NULL,
  seed INTEGER NOT NULL,
  axes TEXT NOT NULL,
  label TEXT NOT NULL,
  config_yaml TEXT NOT NULL,
  requirements TEXT NOT NULL,
  state TEXT NOT NULL,
  current_attempt INTEGER NOT NULL DEFAULT 0,
  attempt_count INTEGER NOT NULL DEFAULT 0,
  max_attempts INTEGER NOT NULL,
  requests_done INTEGER NOT NULL DEFAULT 0,
  requests_total INTEGER NOT NULL DEFAULT 0,
  elapsed_s REAL NOT NULL DEFAULT 0,
  error TEXT NOT NULL DEFAULT '',
  UNIQUE (experiment_id, idx));
CREATE TABLE attempts (
  id INTEGER PRIMARY KEY,
  trial_id TEXT NOT NULL REFERENCES trials(id),
  number INTEGER NOT NULL,
  worker_id TEXT NOT NULL,
  gpu_indices TEXT NOT NULL,
  state TEXT NOT NULL,
  error TEXT NOT NULL DEFAULT '',
  lease_renewed_unix_s REAL NOT NULL,
  started_unix_s REAL NOT NULL,
  finished_unix_s REAL NOT NULL DEFAULT 0,
  UNIQUE (trial_id, number));
CREATE INDEX attempts_open ON attempts(state) WHERE state IN ('leased', 'running');
CREATE TABLE results (
  trial_id TEXT PRIMARY KEY REFERENCES trials(id),
  attempt_id INTEGER NOT NULL UNIQUE REFERENCES attempts(id),
  result_json TEXT NOT NULL,
  requests_jsonl TEXT NOT NULL,
  stored_unix_s REAL NOT NULL);
)sql"},
      {2, "workers and the event log",
       R"sql(
CREATE TABLE workers (
  id TEXT PRIMARY KEY,
  seq INTEGER NOT NULL UNIQUE,
  capabilities TEXT NOT NULL,
  registered_unix_s REAL NOT NULL,
  last_heartbeat_unix_s REAL NOT NULL);
CREATE TABLE events (
  id INTEGER PRIMARY KEY,
  time_unix_s REAL NOT NULL,
  experiment_id TEXT NOT NULL DEFAULT '',
  trial_id TEXT NOT NULL DEFAULT '',
  attempt_id INTEGER NOT NULL DEFAULT 0,
  kind TEXT NOT NULL,
  message TEXT NOT NULL);
CREATE INDEX events_experiment ON events(experiment_id, id);
)sql"},
      {3, "gang attempts: gang id, world size and the leases of ranks 1..n-1",
       R"sql(
ALTER TABLE attempts ADD COLUMN gang_id TEXT NOT NULL DEFAULT '';
ALTER TABLE attempts ADD COLUMN world_size INTEGER NOT NULL DEFAULT 1;
CREATE TABLE attempt_ranks (
  attempt_id INTEGER NOT NULL REFERENCES attempts(id),
  rank INTEGER NOT NULL,
  worker_id TEXT NOT NULL,
  gpu_indices TEXT NOT NULL,
  state TEXT NOT NULL,
  PRIMARY KEY (attempt_id, rank));
)sql"},
  };
  return *kMigrations;
}

int32_t LatestStoreSchemaVersion() { return StoreMigrations().back().version; }

std::string MakeTrialId(const std::string& experiment_id, int64_t index) {
  return experiment_id + ".t" + std::to_string(index);
}

nlohmann::json RequirementsToJson(const TrialRequirements& r) {
  return nlohmann::json{{"gpus", r.gpus},
                        {"cpu_threads", r.cpu_threads},
                        {"backend", r.backend},
                        {"gpu_memory_bytes", r.gpu_memory_bytes},
                        {"model_path", r.model_path},
                        {"nodes", r.nodes}};
}

TrialRequirements RequirementsFromJson(const nlohmann::json& j) {
  TrialRequirements r;
  if (!j.is_object()) return r;
  r.gpus = j.value("gpus", 0);
  r.cpu_threads = j.value("cpu_threads", 0);
  r.backend = j.value("backend", std::string("cpu"));
  r.gpu_memory_bytes = j.value("gpu_memory_bytes", int64_t{0});
  r.model_path = j.value("model_path", std::string());
  r.nodes = j.value("nodes", 1);  // absent in trials stored before gangs
  return r;
}

}  // namespace kvscope::coordinator

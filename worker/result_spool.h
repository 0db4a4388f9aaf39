// File: worker/result_spool.h
//
// Finished attempts' results, kept on disk until the coordinator has them. The daemon puts
// each result here before reporting it and removes it only once the coordinator
// acknowledged it (OK) or refused it as stale (FailedPrecondition); whatever is left is
// re-sent after a restart or a reconnect, so a result is never lost to a crash of either
// side. One file per attempt, `result-<attempt id>.json`, written to a temporary name,
// fsync'ed, renamed into place, and the directory fsync'ed: a file either is complete or
// does not exist. The directory also keeps the worker's id (`worker_id`), so that a
// restarted daemon registers under the same id.
//
// Thread safety: all methods may be called from several threads at once.
#ifndef KVSCOPE_WORKER_RESULT_SPOOL_H_
#define KVSCOPE_WORKER_RESULT_SPOOL_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "coordinator/coordinator.h"

namespace kvscope::worker {

struct SpooledResult {
  std::string worker_id;  // the worker that held the lease (reports name it)
  std::string experiment_id;
  std::string trial_id;
  int64_t attempt_id = 0;  // the key: one spooled result per attempt
  coordinator::ResultReport report;
};

class ResultSpool {
 public:
  // Creates `dir` if needed and removes temporary files left by a crash mid-write.
  static absl::StatusOr<std::unique_ptr<ResultSpool>> Open(const std::string& dir);

  // Durably stores `result` (replacing an earlier one for the same attempt) before returning.
  absl::Status Put(const SpooledResult& result);
  // Every stored result, by attempt id. A file that cannot be parsed (it cannot be partial,
  // so only outside damage causes this) is renamed to `*.corrupt` and skipped with a log line.
  absl::StatusOr<std::vector<SpooledResult>> List();
  // Deletes the attempt's result (durably); OK when there is none.
  absl::Status Remove(int64_t attempt_id);

  // The id saved by SaveWorkerId, or "" when none was.
  std::string LoadWorkerId();
  absl::Status SaveWorkerId(const std::string& worker_id);

  const std::string& dir() const { return dir_; }

 private:
  explicit ResultSpool(std::string dir) : dir_(std::move(dir)) {}
  std::string PathFor(int64_t attempt_id) const;
  // Writes `text` to `path` atomically and durably.
  absl::Status WriteDurably(const std::string& path, const std::string& text);

  const std::string dir_;
  std::mutex mu_;  // serialises writes and removals
};

// SpooledResult <-> JSON (the file format).
nlohmann::json SpooledResultToJson(const SpooledResult& result);
absl::StatusOr<SpooledResult> SpooledResultFromJson(const nlohmann::json& j);

}  // namespace kvscope::worker

#endif  // KVSCOPE_WORKER_RESULT_SPOOL_H_

// File: engine/scheduler.h
//
// Continuous batching: one scheduling decision per engine step, as vLLM's V1 scheduler
// (kv-strategies.md 2.4) with V0's swap queue:
//   1. running sequences first, in admission order: each gets its next prefill chunk or its
//      decode token within the step's token budget; when the KV manager has no room, the
//      newest running sequence is preempted (recompute: its KV is freed and it returns to
//      the front of the waiting queue; swap, when the KV manager was configured to swap:
//      its blocks move to host memory), possibly the sequence itself;
//   2. swapped sequences come back, oldest first, when nothing was preempted this step;
//   3. waiting sequences are admitted first come first served while the budget,
//      `max_num_seqs` and the manager's admission allow, and nothing was preempted.
// With chunked prefill (default) a long prompt is split across steps and its chunks share
// steps with decodes. A request that can never fit (longer than the model's context, or
// needing more KV than the whole pool) is rejected with its reason, never retried forever.
//
// Not thread-safe: one thread drives Schedule/Update.
#ifndef KVSCOPE_ENGINE_SCHEDULER_H_
#define KVSCOPE_ENGINE_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "engine/model.h"
#include "kvcache/kv_manager.h"

namespace kvscope::engine {

struct SchedulerOptions {
  int32_t max_num_seqs = 256;
  int64_t max_num_batched_tokens = 2048;
  bool chunked_prefill = true;
  int64_t max_model_len = 0;  // prompt + output limit
};

// InvalidArgument naming the field (non-positive limits; without chunked prefill the token
// budget must hold a whole max_model_len prompt).
absl::Status ValidateSchedulerOptions(const SchedulerOptions& options);

struct SchedRequest {
  int64_t id = 0;
  std::vector<int32_t> prompt;
  int32_t max_new_tokens = 1;
  std::vector<int32_t> eos_ids;  // stop tokens (empty: none, i.e. ignore_eos)
};

// One sequence's work in a step.
struct ScheduledSeq {
  int64_t id = 0;
  absl::Span<const int32_t> tokens;  // the tokens to compute (valid until Update)
  int32_t start_position = 0;
  bool sample = false;  // this chunk reaches the end of the known tokens: sample next
};

struct ScheduleOutput {
  std::vector<ScheduledSeq> seqs;
  const kvcache::StepPlan* plan = nullptr;
  int32_t preemptions = 0;
  int64_t prefill_tokens = 0;
  int64_t decode_tokens = 0;
  int64_t prefix_query_tokens = 0;  // prompt tokens looked up when admitting this step
  int64_t prefix_hit_tokens = 0;
  // The engine batch for these sequences.
  std::vector<SeqInput> Batch() const;
};

// A request that left the scheduler.
struct FinishedSeq {
  int64_t id = 0;
  bool completed = false;  // false: rejected, with `error`
  std::string error;
  std::vector<int32_t> output;  // generated tokens
  int32_t preemptions = 0;
  int64_t prefix_hit_tokens = 0;
};

class Scheduler {
 public:
  Scheduler(const SchedulerOptions& options, kvcache::KvManager& kv);

  // Queues a request (FCFS). Requests that can never be served are finished at the next
  // Schedule with their reason.
  void Add(SchedRequest request);

  // Decides the next step and freezes the KV plan for it. An empty output means nothing
  // can run now (nothing queued, or waiting requests that must wait for memory).
  absl::StatusOr<ScheduleOutput> Schedule();

  // Records the step's sampled tokens (`sampled[i]` for output.seqs[i] with sample=true;
  // other entries are ignored) and returns the requests that finished or were rejected.
  std::vector<FinishedSeq> Update(const ScheduleOutput& output, absl::Span<const int32_t> sampled);

  bool HasWork() const { return !waiting_.empty() || !running_.empty() || !swapped_.empty(); }
  int32_t num_running() const { return static_cast<int32_t>(running_.size()); }
  int32_t num_waiting() const { return static_cast<int32_t>(waiting_.size()); }
  int32_t num_swapped() const { return static_cast<int32_t>(swapped_.size()); }
  // Tokens generated so far by a live request (empty if unknown).
  const std::vector<int32_t>* Generated(int64_t id) const;

 private:
  struct Seq {
    SchedRequest request;
    std::vector<int32_t> tokens;  // prompt + generated
    std::vector<int32_t> generated;
    int32_t num_computed = 0;     // tokens whose K/V is in the cache
    int32_t preemptions = 0;
    int64_t prefix_hit_tokens = 0;
  };

  // Preempts `id` (recompute or swap). Returns false when `id` could not be preempted.
  void Preempt(int64_t id, ScheduleOutput* out);
  void Reject(int64_t id, std::string reason);
  std::string NeverFits(const Seq& seq) const;

  SchedulerOptions options_;
  kvcache::KvManager& kv_;
  absl::flat_hash_map<int64_t, std::unique_ptr<Seq>> seqs_;
  std::deque<int64_t> waiting_;
  std::vector<int64_t> running_;  // admission order; the back is the newest
  std::deque<int64_t> swapped_;
  std::vector<FinishedSeq> rejected_;  // reported by the next Update
};

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_SCHEDULER_H_

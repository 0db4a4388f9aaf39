// File: engine/gang_driver.h
//
// The driver of a gang: the process of rank 0 in a tensor-parallel group spread over
// several processes (`nodes` in docs/bench.md). It runs the scheduler, sampler and metrics
// as a single process does; each engine step it sends to every follower process
// (engine/gang_follower.h) the KV manager calls made since the last step and the batch,
// runs its own ranks, and collects every follower's acknowledgement, so that all processes
// stay in lockstep and a follower's failure surfaces here with its own message.
//
// Failure contract: any failure (a follower's error or silence, a lost channel, a failed
// collective) aborts this process's collectives (the followers' ranks then fail instead of
// waiting), and the driver refuses further steps (FailedPrecondition), as Engine does.
//
// Thread-safety: one caller at a time.
#ifndef KVSCOPE_ENGINE_GANG_DRIVER_H_
#define KVSCOPE_ENGINE_GANG_DRIVER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/gang_channel.h"
#include "engine/gang_engine.h"
#include "engine/recording_kv_manager.h"

namespace kvscope::engine {

struct GangDriverOptions {
  // Longest wait for a follower's step acknowledgement after this process's ranks finished.
  double ack_timeout_s = 300;
};

class GangDriver {
 public:
  // followers[i] is the channel to process i + 1, which runs ranks
  // [(i + 1) * k, (i + 2) * k), k = engine->local_ranks(). `engine` (the CPU or the GPU
  // engine) runs ranks [0, k) with caches from `kv`'s inner manager; both must outlive the
  // driver.
  GangDriver(GangEngine* engine, RecordingKvManager* kv,
             std::vector<std::unique_ptr<GangChannel>> followers,
             const GangDriverOptions& options);

  // One step on every rank of the gang; rank 0's logits. Same contract as Engine::Forward.
  // `plan` (the step's KvManager::Plan result, or null) has its block transfers mirrored
  // on this process's ranks first (GangEngine::ApplyPlan); followers mirror the plan their
  // replica computes from the same calls.
  absl::StatusOr<ForwardOutput> Forward(absl::Span<const SeqInput> batch,
                                        const kvcache::StepPlan* plan = nullptr);
  // Engine::Release on every rank of the gang.
  absl::Status Release(int64_t seq_id);
  // Tells every follower that the run is over (they exit 0). Call once, after the last step.
  absl::Status Finish();

 private:
  // "follower process P (ranks a-b)".
  std::string Describe(size_t follower) const;
  absl::Status Fail(absl::Status status);

  GangEngine* engine_;
  RecordingKvManager* kv_;
  std::vector<std::unique_ptr<GangChannel>> followers_;
  GangDriverOptions options_;
  bool failed_ = false;
};

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_GANG_DRIVER_H_

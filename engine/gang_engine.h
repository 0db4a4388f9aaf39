// File: engine/gang_engine.h
//
// What a gang's driver and followers (engine/gang_driver.h, engine/gang_follower.h) need
// from the engine of one process: its slice of the tensor-parallel ranks, one step over
// them, the KV manager plan's block transfers, releases and aborting collectives. The CPU
// engine (engine/engine.h) and the GPU engine (engine/cuda/gpu_engine.h) implement it, so
// that both backends share the gang's control path.
//
// Thread-safety: one caller at a time, except AbortCollectives (any thread).
#ifndef KVSCOPE_ENGINE_GANG_ENGINE_H_
#define KVSCOPE_ENGINE_GANG_ENGINE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/model.h"
#include "kvcache/kv_manager.h"

namespace kvscope::engine {

class GangEngine {
 public:
  virtual ~GangEngine() = default;

  virtual const ModelConfig& config() const = 0;
  // This process's ranks: [first_rank(), first_rank() + local_ranks()).
  virtual int first_rank() const = 0;
  virtual int local_ranks() const = 0;

  // Mirrors the block transfers of `plan` (the step's KvManager::Plan) in the local ranks'
  // KV storage, before the step's Forward. Engines whose caches move their own blocks (the
  // CPU engine) do nothing. A failure stops the engine.
  virtual absl::Status ApplyPlan(const kvcache::StepPlan& plan) = 0;
  // One step on the local ranks: rank 0's logits where rank 0 is local, an empty output
  // elsewhere. Same contract as Engine::Forward.
  virtual absl::StatusOr<ForwardOutput> Forward(absl::Span<const SeqInput> batch) = 0;
  // Frees the sequence's KV on the local ranks.
  virtual void Release(int64_t seq_id) = 0;
  // Aborts the local ranks' communicators, so that ranks of other processes blocked in a
  // collective with them fail instead of waiting.
  virtual void AbortCollectives() = 0;
};

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_GANG_ENGINE_H_

// File: engine/gpu_memory_plan.h
//
// How much device memory the KV pool of one GPU rank gets, as vLLM sizes it: this process
// may use `gpu_memory_utilization` of the card's total memory; what its weights and its
// activation workspace (at the largest step) take comes off that, and the KV pool gets the
// rest, or a smaller explicit `kv_bytes` when the trial sets one. Pure arithmetic over
// numbers read from the device (cudaMemGetInfo) by the caller, so it is tested on any
// machine. All sizes are bytes.
#ifndef KVSCOPE_ENGINE_GPU_MEMORY_PLAN_H_
#define KVSCOPE_ENGINE_GPU_MEMORY_PLAN_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace kvscope::engine {

struct GpuMemoryInputs {
  int64_t total_bytes = 0;      // the card's memory (cudaMemGetInfo total)
  int64_t free_bytes = 0;       // free before this process allocated anything
  int64_t weight_bytes = 0;     // this rank's weights on the device
  int64_t workspace_bytes = 0;  // activations, logits, cuBLAS workspace, attention partials
  double gpu_memory_utilization = 0.9;  // (0, 1]
  int64_t requested_kv_bytes = 0;       // 0 = as much as fits
  int64_t min_kv_bytes = 1;             // one KV block, at least
};

struct GpuMemoryPlan {
  int64_t limit_bytes = 0;  // utilization x total: all this process may hold
  int64_t kv_bytes = 0;     // the KV pool
  int64_t headroom_bytes = 0;  // limit - weights - workspace - kv (>= 0)
  // One line for logs and the result file: "limit 72.00 GiB: KV pool 57.00 GiB, ...".
  std::string Describe() const;
};

// InvalidArgument for a utilization outside (0, 1] or negative sizes. FailedPrecondition
// when the limit exceeds the memory free at start (another process holds the card: lower
// gpu_memory_utilization or free the GPU). ResourceExhausted when weights and workspace
// leave less than min_kv_bytes, or less than requested_kv_bytes; the message gives each
// term and what to change (a smaller model, a larger tensor-parallel size, a higher
// utilization, a smaller kv_bytes or batch).
absl::StatusOr<GpuMemoryPlan> PlanGpuMemory(const GpuMemoryInputs& in);

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_GPU_MEMORY_PLAN_H_

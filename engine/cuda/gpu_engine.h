// File: engine/cuda/gpu_engine.h
//
// engine::Engine (engine/engine.h) on CUDA devices: one GpuModelShard, one KvCache (host
// bookkeeping; the K/V live in the shard's device pool) and one DeviceCommunicator per
// tensor-parallel rank. Forward() runs one step on every rank (rank 0 on the calling thread,
// the others on threads of their own) and returns rank 0's float32 logits.
//
// Communicators: host-staged over a LocalCommGroup (several ranks may share one device:
// this is how the one-GPU machine runs TP > 1) or NCCL (one device per rank; created
// concurrently by the rank threads in Create).
//
// Thread-safety: one caller at a time.
#ifndef KVSCOPE_ENGINE_CUDA_GPU_ENGINE_H_
#define KVSCOPE_ENGINE_CUDA_GPU_ENGINE_H_

#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/communicator.h"
#include "engine/cuda/device_communicator.h"
#include "engine/cuda/gpu_model_shard.h"
#include "engine/model.h"
#include "engine/weights.h"
#include "kvcache/kv_cache.h"
#include "kvcache/kv_manager.h"
#include "nlohmann/json.hpp"

namespace kvscope::engine::cuda {

enum class GpuCommKind { kHostStaged, kNccl };

struct GpuEngineOptions {
  int tp_size = 1;
  // Options of every rank's shard; the device of rank r is devices[r] when `devices` is
  // non-empty (one entry per rank), else shard.device for every rank.
  GpuShardOptions shard;
  std::vector<int> devices;
  GpuCommKind comm = GpuCommKind::kHostStaged;
  // Builds the KV cache (bookkeeping) of each rank; null = kvcache::FullKvCache with
  // shard.block_size and max_kv_tokens. It must be a strategy CheckGpuSupportsCache accepts.
  // A cache with a fixed pool (ManagedKvCache: Pool(0).num_blocks > 0 before any step)
  // gives the device pool its block size and block count unless shard.num_kv_blocks is set;
  // otherwise its block size must be shard.block_size. An infinigen cache (InfinigenKvCache)
  // is calibrated here (PrepareInfinigen, on the host model) and enabled on every shard
  // (GpuModelShard::EnableInfinigen); unless shard.num_kv_blocks is set, its device pool gets
  // room for 3 x the manager's CapacityTokens (host slots + two prefetch buffers).
  std::function<std::unique_ptr<kvcache::KvCache>(const kvcache::KvShape&, int rank)> kv_factory;
  int64_t max_kv_tokens = 0;  // 0 = unbounded (the device pool still bounds it)
};

class GpuEngine {
 public:
  // InvalidArgument for a tp size that cannot split the model or bad options; the errors of
  // GpuModelShard::Create and CreateNcclCommunicator otherwise.
  static absl::StatusOr<std::unique_ptr<GpuEngine>> Create(
      std::shared_ptr<const ModelWeights> weights, const GpuEngineOptions& options);
  ~GpuEngine();

  // One step over the batch, validated as Engine::Forward validates it. After a failure
  // inside the ranks (other than a full cache refused by PrepareStep) the engine refuses
  // further steps (FailedPrecondition).
  absl::StatusOr<ForwardOutput> Forward(absl::Span<const SeqInput> batch);

  // Mirrors a KvManager plan's block transfers (swap out, swap in, copy-on-write copies) in
  // every rank's device pool and pinned host pool; call it once per plan, before the plan's
  // Forward. A failure stops the engine (the pools no longer match the bookkeeping).
  absl::Status ApplyPlan(const kvcache::StepPlan& plan);

  // Frees the sequence's KV on every rank.
  void Release(int64_t seq_id);

  const ModelConfig& config() const { return weights_->config; }
  int tp_size() const { return options_.tp_size; }
  kvcache::KvCache& kv_cache(int rank) { return *caches_[rank]; }
  GpuModelShard& shard(int rank) { return *shards_[rank]; }
  // Each rank's device memory and traffic.
  std::vector<GpuMemoryReport> MemoryReports() const;
  // The same for the result file: {"communicator": ..., "ranks": [{rank, device, dtype,
  // weight_bytes, kv_pool_bytes, workspace_bytes, pinned_host_bytes, h2d_bytes, d2h_bytes,
  // plan?, ...}]}.
  nlohmann::json MemoryJson() const;

 private:
  GpuEngine(std::shared_ptr<const ModelWeights> weights, const GpuEngineOptions& options);

  std::shared_ptr<const ModelWeights> weights_;
  GpuEngineOptions options_;
  std::unique_ptr<LocalCommGroup> group_;
  std::vector<std::unique_ptr<DeviceCommunicator>> comms_;
  std::vector<std::unique_ptr<GpuModelShard>> shards_;
  std::vector<std::unique_ptr<kvcache::KvCache>> caches_;
  bool failed_ = false;
};

}  // namespace kvscope::engine::cuda

#endif  // KVSCOPE_ENGINE_CUDA_GPU_ENGINE_H_

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
// A gang (engine/gang_driver.h, several processes) gives each process's engine a slice of
// the ranks (GpuEngineOptions::first_rank, local_ranks) and either the host communicators
// of its ranks (comm_factory, e.g. engine/tcp_comm_group.h, wrapped host-staged) or the
// NCCL unique id the driver made (nccl_unique_id); Forward then runs only those ranks and
// returns logits only where rank 0 is local, as Engine does.
//
// Thread-safety: one caller at a time.
#ifndef KVSCOPE_ENGINE_CUDA_GPU_ENGINE_H_
#define KVSCOPE_ENGINE_CUDA_GPU_ENGINE_H_

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/communicator.h"
#include "engine/cuda/device_communicator.h"
#include "engine/cuda/gpu_model_shard.h"
#include "engine/gang_engine.h"
#include "engine/model.h"
#include "engine/quality.h"
#include "engine/weights.h"
#include "kvcache/kv_cache.h"
#include "kvcache/kv_manager.h"
#include "nlohmann/json.hpp"

namespace kvscope::engine::cuda {

enum class GpuCommKind { kHostStaged, kNccl };

struct GpuEngineOptions {
  int tp_size = 1;
  // Options of every rank's shard; the device of local rank i (global rank first_rank + i)
  // is devices[i] when `devices` is non-empty (one entry per local rank), else shard.device
  // for every rank.
  GpuShardOptions shard;
  std::vector<int> devices;
  GpuCommKind comm = GpuCommKind::kHostStaged;
  // The ranks this engine runs: [first_rank, first_rank + local_ranks) of tp_size
  // (local_ranks 0 = all from first_rank on). Running only some of them needs the way to
  // reach the others: comm_factory (kHostStaged) or nccl_unique_id (kNccl).
  int first_rank = 0;
  int local_ranks = 0;
  // kHostStaged: the host communicator of global rank `rank` (called once per local rank,
  // in rank order), wrapped by CreateHostStagedCommunicator; null = one LocalCommGroup over
  // the local ranks, which then must be all of them.
  std::function<absl::StatusOr<std::unique_ptr<Communicator>>(int rank)> comm_factory;
  // kNccl: the group's unique id (kNcclUniqueIdBytes, made by NewNcclUniqueId in one
  // process and shared with the others); empty = made here, all ranks then must be local.
  std::string nccl_unique_id;
  // Builds the KV cache (bookkeeping) of each rank; null = kvcache::FullKvCache with
  // shard.block_size and max_kv_tokens. It must be a strategy CheckGpuSupportsCache accepts.
  // A cache with a fixed pool (ManagedKvCache: Pool(0).num_blocks > 0 before any step)
  // gives the device pool its block size and block count unless shard.num_kv_blocks is set;
  // otherwise its block size must be shard.block_size. An infinigen cache (InfinigenKvCache)
  // is calibrated here (PrepareInfinigen, on the host model) and enabled on every shard
  // (GpuModelShard::EnableInfinigen); its shards get a device pool for the dense layers only
  // (shard.kv_layers = dense_layers) with, unless shard.num_kv_blocks is set, room for the
  // manager's CapacityTokens host slots; the other layers' K/V live in pinned host memory.
  std::function<std::unique_ptr<kvcache::KvCache>(const kvcache::KvShape&, int rank)> kv_factory;
  int64_t max_kv_tokens = 0;  // 0 = unbounded (the device pool still bounds it)
};

class GpuEngine final : public GangEngine {
 public:
  // InvalidArgument for a tp size that cannot split the model or bad options; the errors of
  // GpuModelShard::Create and CreateNcclCommunicator otherwise.
  static absl::StatusOr<std::unique_ptr<GpuEngine>> Create(
      std::shared_ptr<const ModelWeights> weights, const GpuEngineOptions& options);
  ~GpuEngine() override;

  // One step over the batch, validated as Engine::Forward validates it. After a failure
  // inside the ranks (other than a full cache refused by PrepareStep) the engine refuses
  // further steps (FailedPrecondition).
  absl::StatusOr<ForwardOutput> Forward(absl::Span<const SeqInput> batch) override;

  // Mirrors a KvManager plan's block transfers (swap out, swap in, copy-on-write copies) in
  // every rank's device pool and pinned host pool; call it once per plan, before the plan's
  // Forward. A failure stops the engine (the pools no longer match the bookkeeping).
  absl::Status ApplyPlan(const kvcache::StepPlan& plan) override;

  // Frees the sequence's KV on every local rank.
  void Release(int64_t seq_id) override;

  // Aborts every local rank's communicator (ranks of other processes blocked in a
  // collective with them fail instead of waiting).
  void AbortCollectives() override;

  const ModelConfig& config() const override { return weights_->config; }
  int tp_size() const { return options_.tp_size; }
  int first_rank() const override { return options_.first_rank; }
  int local_ranks() const override { return options_.local_ranks; }
  // The cache and shard of global rank `rank`, which must be local.
  kvcache::KvCache& kv_cache(int rank) { return *caches_[rank - options_.first_rank]; }
  GpuModelShard& shard(int rank) { return *shards_[rank - options_.first_rank]; }
  // "nccl" or "host-staged".
  std::string_view comm_kind() const { return comms_.empty() ? "" : comms_[0]->kind(); }
  // Each local rank's device memory and traffic.
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

// The engines of a `backend: cuda` bench's quality checks (engine/quality.h): GpuEngines
// with `base`'s options (tp_size from the call). With a manager, its rank caches (create it
// with KvManagerContext::host_kv_storage false: the K/V live on the device); without, the
// full cache (FullKvCache, bookkeeping only) bounded to `full_cache_tokens` tokens with a
// device pool of that size, so that it can stay alive next to the strategy's engine.
QualityEngineFactory GpuQualityEngineFactory(GpuEngineOptions base, int64_t full_cache_tokens);

}  // namespace kvscope::engine::cuda

#endif  // KVSCOPE_ENGINE_CUDA_GPU_ENGINE_H_

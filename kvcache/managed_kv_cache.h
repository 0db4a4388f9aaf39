// File: kvcache/managed_kv_cache.h
//
// The per-rank KvCache of every manager that places tokens in a block pool (paged,
// contiguous). It owns the rank's storage and follows the manager's plan; it makes no
// decisions of its own:
//   - device pool, per layer, K and V each [num_device_blocks][num_kv_heads][block_size]
//     [head_dim] float32 (kernels/ops.h KvPoolView), allocated and zeroed at construction:
//     this is the memory the KV budget buys;
//   - host pool, same layout with num_host_blocks blocks, for swap preemption (may be 0).
// With Options::allocate_storage false neither pool is allocated: the cache is the
// bookkeeping of a device engine whose own pools hold the K/V.
// PrepareStep(seqs) checks that `seqs` equal the steps of the manager's current plan
// (FailedPrecondition otherwise: the scheduler and the model disagree about the batch),
// applies the plan's block transfers once per plan (swap_out, then swap_in, then copies;
// every layer, K and V), then serves the plan's NewTokenSlots and SeqViews (one shared
// token list for all KV heads and all layers). Release is a no-op: the manager owns the
// bookkeeping. ReservedBytes/UsedBytes/NumTokens come from the manager.
//
// Thread-safety: one instance per rank, used by that rank's thread; during Forward it only
// reads the manager's plan (the manager is not called concurrently, see kv_manager.h).
#ifndef KVSCOPE_KVCACHE_MANAGED_KV_CACHE_H_
#define KVSCOPE_KVCACHE_MANAGED_KV_CACHE_H_

#include <cstdint>
#include <vector>

#include "kvcache/kv_cache.h"
#include "kvcache/kv_manager.h"

namespace kvscope::kvcache {

// The manager's current plan as the rank caches read it.
struct PlannedStep {
  StepPlan plan;
  uint64_t generation = 0;  // 0 before the first Plan; +1 on every successful Plan
};

// Checks that the batch a rank's PrepareStep receives is the one the manager planned
// (`generation` 0 means nothing was planned yet). FailedPrecondition naming the first
// difference otherwise: the scheduler and the model disagree about the batch.
absl::Status CheckStepsMatchPlan(uint64_t generation, const StepPlan& plan,
                                 absl::Span<const SeqStep> seqs);

class ManagedKvCache final : public KvCache {
 public:
  struct Options {
    KvShape shape;  // this rank's layers, KV heads and head_dim
    int32_t block_size = 16;
    int64_t num_device_blocks = 0;
    int64_t num_host_blocks = 0;
    // false: no K/V storage at all (KvManagerContext::host_kv_storage): Pool and HostPool
    // have null k/v, and PrepareStep applies no block transfers (the device engine mirrors
    // them in its own pools).
    bool allocate_storage = true;
  };

  // `manager` and `planned` (which the manager updates on every Plan) must outlive this.
  ManagedKvCache(const KvManager* manager, const PlannedStep* planned, const Options& options);

  const KvShape& shape() const override { return options_.shape; }
  absl::Status PrepareStep(absl::Span<const SeqStep> seqs) override;
  kernels::KvPoolView Pool(int32_t layer) override;
  absl::Span<const int32_t> NewTokenSlots() const override;
  absl::Span<const kernels::SeqKvView> SeqViews(int32_t layer) override;
  void Release(int64_t seq_id) override {}
  int32_t NumTokens(int64_t seq_id) const override { return manager_->NumTokens(seq_id); }
  int64_t ReservedBytes() const override { return manager_->Usage().reserved_bytes; }
  int64_t UsedBytes() const override { return manager_->Usage().used_bytes; }

  // The host (swap) pool of `layer`, same layout as Pool; for tests and diagnostics.
  kernels::KvPoolView HostPool(int32_t layer);

 private:
  // Copies whole blocks (all layers, K and V) from one pool to another (or the same).
  void CopyBlocks(const std::vector<std::vector<float>>& src_k,
                  const std::vector<std::vector<float>>& src_v,
                  std::vector<std::vector<float>>& dst_k, std::vector<std::vector<float>>& dst_v,
                  const std::vector<BlockCopy>& copies, int64_t src_blocks, int64_t dst_blocks);

  const KvManager* manager_;
  const PlannedStep* planned_;
  Options options_;
  int64_t block_floats_;                   // num_kv_heads * block_size * head_dim
  std::vector<std::vector<float>> k_, v_;  // per layer [num_device_blocks * block_floats_]
  std::vector<std::vector<float>> host_k_, host_v_;  // per layer [num_host_blocks * ...]
  uint64_t applied_generation_ = 0;                  // the last plan whose transfers were applied
};

}  // namespace kvscope::kvcache

#endif  // KVSCOPE_KVCACHE_MANAGED_KV_CACHE_H_

// File: kvcache/kv_manager.h
//
// The KV strategy interface. A KvManager decides where every sequence's keys and values
// live: capacity planning from a memory budget, admission, slots for new tokens, release,
// preemption (recompute or swap), forking, and the per-step plan every tensor-parallel rank
// reads. The scheduler talks only to this interface; the model talks only to the per-rank
// KvCache (kv_cache.h) that CreateRankCache returns, which stores the rank's K/V and follows
// the manager's plan.
//
// Protocol for one step (the scheduler's thread):
//   Admit / Append / Free / SwapOut / SwapIn / Fork   bookkeeping, as the scheduler decides
//   Plan(steps)                                       freezes the step: new-token slots, each
//                                                     sequence's view, block copies
//   engine.Forward(batch)                             every rank's KvCache::PrepareStep
//                                                     applies the plan's copies to its own
//                                                     storage and serves its views
// The plan is plain data, so tests compare plans directly.
//
// Thread-safety: the manager is used by one thread; during Forward the ranks only read the
// current plan (no manager call may happen until Forward returns).
#ifndef KVSCOPE_KVCACHE_KV_MANAGER_H_
#define KVSCOPE_KVCACHE_KV_MANAGER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/ops.h"
#include "kvcache/kv_cache.h"

namespace kvscope::kvcache {

// What the model stores per token, for one rank (all ranks hold the same amount).
struct KvGeometry {
  int32_t num_layers = 0;
  int32_t kv_heads_per_rank = 0;
  int32_t head_dim = 0;
  int32_t bytes_per_element = 4;  // float32 on the CPU
  int32_t tp_size = 1;
  int32_t num_heads_per_rank = 0;  // query heads (for attention statistics)
  // RoPE the model applied to the stored keys (kernels::Rope, "rotate half" layout): key
  // dims (i, i + rope_rot_dim/2) were rotated by position * rope_inv_freq[i]. Empty for
  // models without rotary embeddings (OPT's learned positions). Lets a strategy move a
  // stored key to another position (streaming positions=rolling).
  std::vector<float> rope_inv_freq;  // [rope_rot_dim / 2]
  int32_t rope_rot_dim = 0;
  // K and V bytes of one token over all layers on one rank.
  int64_t BytesPerToken() const {
    return 2LL * num_layers * kv_heads_per_rank * head_dim * bytes_per_element;
  }
  KvShape RankShape() const { return KvShape{num_layers, kv_heads_per_rank, head_dim}; }
};

// What every strategy is built from.
struct KvManagerContext {
  KvGeometry geometry;
  int64_t kv_memory_bytes = 0;  // device KV budget per rank
  int64_t max_model_len = 0;    // longest sequence (prompt + output) served
  // Token ids of a calibration text, for strategies calibrated offline (infinigen's
  // skewing); null: their seeded random prompt. Shared and never modified.
  std::shared_ptr<const std::vector<int32_t>> calibration_ids = nullptr;
  // Whether the rank caches (CreateRankCache) allocate float32 K/V storage in host memory.
  // false when a device engine keeps the K/V (backend: cuda): the paged and contiguous rank
  // caches then keep only the bookkeeping (slots, views, plans) and their Pool(l) has null
  // k/v with the real block count, so a large GPU KV budget costs no host memory. Such a
  // cache cannot serve the CPU engine (it refuses it, FailedPrecondition).
  bool host_kv_storage = true;
};

// A sequence as the scheduler knows it.
struct SeqRequest {
  int64_t seq_id = 0;
  // Every token known so far: the prompt, plus generated tokens when a preempted sequence
  // is admitted again to be recomputed.
  absl::Span<const int32_t> tokens;
  int32_t max_new_tokens = 0;  // tokens it may still generate
};

enum class AdmitStatus { kOk, kLater, kNever };

struct Admission {
  AdmitStatus status = AdmitStatus::kOk;
  std::string reason;  // for kNever: why it can never fit (shown to the user)
};

// A block copy within the device pool (copy-on-write) or between device and host pools.
struct BlockCopy {
  int32_t src = 0;
  int32_t dst = 0;
};

// The frozen plan of one step, read by every rank during Forward.
struct StepPlan {
  std::vector<SeqStep> steps;           // the step's sequences, in batch order
  std::vector<int32_t> new_slots;       // slot of each new token, concatenated in batch order
  std::vector<kernels::SeqKvView> views;  // per sequence (valid until the next manager call)
  std::vector<BlockCopy> swap_out;      // device block -> host block, applied first
  std::vector<BlockCopy> swap_in;       // host block -> device block, applied second
  std::vector<BlockCopy> copies;        // device block -> device block (CoW), applied third
};

struct KvUsage {
  int64_t reserved_bytes = 0;  // device KV reserved for sequences (free pool memory excluded)
  int64_t used_bytes = 0;      // device KV holding tokens
  int64_t host_bytes = 0;      // host KV in use (swap space, offload pools)
  int64_t swapped_bytes = 0;   // KV of swapped-out sequences
  int64_t capacity_bytes = 0;  // device pool size
};

struct KvCounters {
  int64_t prefix_query_tokens = 0;  // prompt tokens looked up in the prefix cache
  int64_t prefix_hit_tokens = 0;    // of those, found cached
  int64_t cow_copies = 0;
  int64_t swapped_out_blocks = 0;
  int64_t swapped_in_blocks = 0;
  int64_t evicted_cached_blocks = 0;
  // Offloading strategies (infinigen), summed over ranks since the manager was created.
  int64_t h2d_bytes = 0;            // K/V bytes moved host -> device (counted, CPU copies)
  int64_t selected_tokens = 0;      // Σ tokens selected over (sequence, layer) selections
  int64_t selections = 0;           // (sequence, decode step, sparse layer) selections
  double mass_captured_sum = 0;     // Σ share of the true attention mass the selection held
  int64_t mass_samples = 0;         // (sequence, step, layer) samples in mass_captured_sum
  std::vector<int64_t> selected_tokens_per_layer;  // [num_layers] (empty for other strategies)
  std::vector<int64_t> selections_per_layer;       // [num_layers]
};

class KvManager {
 public:
  virtual ~KvManager() = default;

  virtual std::string name() const = 0;
  virtual const KvGeometry& geometry() const = 0;
  // Tokens the device pool can hold at once.
  virtual int64_t CapacityTokens() const = 0;

  // Token slots the sequence needs at its peak: its tokens plus every output token for
  // strategies that keep everything, less for those that evict. The scheduler rejects a
  // request whose peak exceeds CapacityTokens() before admitting it.
  virtual int64_t PeakTokens(const SeqRequest& seq) const {
    return static_cast<int64_t>(seq.tokens.size()) + seq.max_new_tokens;
  }

  // Could the sequence start now? kNever when it cannot fit even in an empty pool.
  virtual Admission CanAdmit(const SeqRequest& seq) const = 0;
  // Starts tracking the sequence (precondition: CanAdmit is kOk). Returns how many of its
  // leading tokens are already cached (prefix caching) and need no recomputation; always
  // less than seq.tokens.size() so the last token is computed and yields logits.
  virtual absl::StatusOr<int32_t> Admit(const SeqRequest& seq) = 0;
  // Reserves slots for the sequence's next tokens (a prefill chunk or a decode token);
  // `tokens` are their ids (used to hash full blocks for prefix caching). Returns false,
  // changing nothing, when memory is short (the scheduler then preempts).
  virtual bool Append(int64_t seq_id, absl::Span<const int32_t> tokens) = 0;
  // Releases everything the sequence holds (unknown ids are ignored).
  virtual void Free(int64_t seq_id) = 0;

  // Swap preemption; strategies without a host pool return false / FailedPrecondition.
  virtual bool SupportsSwap() const { return false; }
  // Moves the sequence's blocks to host memory; false (nothing changed) without room.
  virtual bool SwapOut(int64_t seq_id) { return false; }
  virtual bool CanSwapIn(int64_t seq_id) const { return false; }
  virtual absl::Status SwapIn(int64_t seq_id) {
    return absl::FailedPreconditionError(name() + " does not swap");
  }
  // `child` shares `parent`'s tokens (copy-on-write when either appends to a shared block).
  virtual absl::Status Fork(int64_t parent, int64_t child) {
    return absl::UnimplementedError(name() + " does not fork sequences");
  }

  // Tokens the sequence holds on the device (0 if unknown or swapped out).
  virtual int32_t NumTokens(int64_t seq_id) const = 0;

  // Freezes the step: `steps` lists each sequence with the new tokens it computes (already
  // Appended) and their start position. Sequences not listed keep their state.
  virtual absl::StatusOr<const StepPlan*> Plan(absl::Span<const SeqStep> steps) = 0;

  virtual KvUsage Usage() const = 0;
  virtual KvCounters Counters() const = 0;

  // The KvCache of rank `rank`, storing that rank's K/V and serving this manager's plans.
  // The manager must outlive it.
  virtual std::unique_ptr<KvCache> CreateRankCache(int rank) = 0;
};

}  // namespace kvscope::kvcache

#endif  // KVSCOPE_KVCACHE_KV_MANAGER_H_

// File: kvcache/paged_kv_manager.h
//
// `paged`: vLLM's PagedAttention block manager (kv-strategies.md §2). Tokens live in
// blocks of `block_size` slots taken on demand from one device BlockPool sized by the
// budget: num_blocks = floor(kv_memory_bytes / (block_size * BytesPerToken)).
//
//   admission    V0 watermark: kNever if total - prompt_blocks < watermark_blocks; kOk if
//                free - required >= watermark_blocks, else kLater, where `required` counts
//                the blocks the admission takes from the free queue: prompt blocks not
//                cached, plus cached ones that sit in the free queue (ref count 0).
//                watermark_blocks = floor(watermark * num_blocks).
//   prefix cache V1 automatic prefix caching: full blocks are hashed (chained) as they fill
//                and entered in the pool's cache; Admit touches the longest cached prefix of
//                full blocks and returns its length in tokens, but never the whole prompt:
//                a full hit gives back its last block, so at least one token is computed.
//                Freed cached blocks stay reusable until evicted (LRU, tail blocks first).
//   fork / CoW   Fork shares every block (ref++); appending to a shared, partially filled
//                last block first copies it (StepPlan::copies, counters.cow_copies).
//   preemption   Free (recompute) or, with preemption_mode=swap, SwapOut/SwapIn between
//                the device pool and a host pool of floor(swap_space / block_bytes) blocks
//                (StepPlan::swap_out / swap_in; the watermark applies to swap-in). Blocks
//                shared with other sequences are copied, not moved: each swapped sequence
//                owns its host blocks.
//
// Transfers recorded between two Plan calls are applied together, in the fixed order
// swap_out, swap_in, copies, before the step's new tokens are written. Blocks a swap-out
// reads are free for reuse at once (everything that could write them is applied later), so
// swap preemption makes room within the step, as in vLLM V0. To keep the fixed order
// equivalent to the order of the calls in the remaining cases:
//   - the source and target of a pending copy (CoW) and the host source of a pending
//     swap-in are pinned (one extra ref) until the next Plan, so they are not reused as
//     the target of a transfer applied earlier (a Free right after a CoW therefore frees
//     those blocks only at the next Plan);
//   - SwapOut refuses (returns false) a sequence holding a block that a pending swap-in or
//     copy writes.
// SwapOut moves the K/V stored at the start of the step: tokens appended but not yet
// computed are moved as they are (the scheduler preempts before appending).
//
// Usage: reserved = distinct device blocks held by sequences * block bytes (free cached
// blocks and pinned-only blocks excluded); used = tokens held on the device * bytes per
// token, a shared block's tokens counted once; host = host blocks held; swapped = tokens of
// swapped-out sequences.
//
// Thread-safety: see kv_manager.h (one thread; ranks read the plan during Forward).
#ifndef KVSCOPE_KVCACHE_PAGED_KV_MANAGER_H_
#define KVSCOPE_KVCACHE_PAGED_KV_MANAGER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "kvcache/block_pool.h"
#include "kvcache/block_table.h"
#include "kvcache/kv_manager.h"
#include "kvcache/managed_kv_cache.h"

namespace kvscope::kvcache {

class PagedKvManager final : public KvManager {
 public:
  struct Options {
    int32_t block_size = 16;  // tokens per block, 1..1024
    double watermark = 0.01;  // fraction of blocks kept free at admission, [0, 0.5]
    bool enable_prefix_caching = true;
    bool swap = false;             // preemption_mode=swap: a host pool for SwapOut
    int64_t swap_space_bytes = 0;  // host pool budget; 0 = kv_memory_bytes (swap only)
  };

  // InvalidArgument for bad options or geometry, or a budget below one block (saying the
  // bytes one block needs).
  static absl::StatusOr<std::unique_ptr<PagedKvManager>> Create(const KvManagerContext& context,
                                                                const Options& options);

  std::string name() const override { return "paged"; }
  const KvGeometry& geometry() const override { return context_.geometry; }
  int64_t CapacityTokens() const override {
    return static_cast<int64_t>(device_.num_blocks()) * options_.block_size;
  }

  Admission CanAdmit(const SeqRequest& seq) const override;
  // AlreadyExists for a tracked id; InvalidArgument (kNever) / ResourceExhausted (kLater)
  // when CanAdmit is not kOk.
  absl::StatusOr<int32_t> Admit(const SeqRequest& seq) override;
  bool Append(int64_t seq_id, absl::Span<const int32_t> tokens) override;
  void Free(int64_t seq_id) override;

  bool SupportsSwap() const override { return host_.has_value(); }
  bool SwapOut(int64_t seq_id) override;
  bool CanSwapIn(int64_t seq_id) const override;
  absl::Status SwapIn(int64_t seq_id) override;
  absl::Status Fork(int64_t parent, int64_t child) override;

  int32_t NumTokens(int64_t seq_id) const override;
  absl::StatusOr<const StepPlan*> Plan(absl::Span<const SeqStep> steps) override;
  KvUsage Usage() const override;
  KvCounters Counters() const override;
  std::unique_ptr<KvCache> CreateRankCache(int rank) override;

  // Introspection for tests and reports.
  int32_t block_size() const { return options_.block_size; }
  int32_t watermark_blocks() const { return watermark_blocks_; }
  const BlockPool& device_pool() const { return device_; }
  const BlockPool* host_pool() const { return host_ ? &*host_ : nullptr; }
  // Physical blocks of the sequence: device blocks, or host blocks while swapped out.
  std::vector<int32_t> BlockIds(int64_t seq_id) const;
  bool IsSwappedOut(int64_t seq_id) const;
  // Recounts everything from the sequences, O(tokens + blocks): pool invariants, ref counts
  // equal holders (+ pins), slots match block tables, usage counters match.
  absl::Status CheckInvariants() const;

 private:
  struct Sequence {
    BlockTable table;              // device blocks, or host blocks while swapped
    std::vector<int32_t> tokens;   // token ids held (prefix caching only)
    std::vector<uint64_t> hashes;  // chained hash of each full block (prefix caching only)
    bool swapped = false;
  };
  // Blocks read or written by pending transfers that must not be reused before the next
  // Plan, held by one extra ref each.
  struct Pins {
    std::vector<uint8_t> pinned;  // [num_blocks]
    std::vector<int32_t> list;    // the pinned blocks
  };

  PagedKvManager(const KvManagerContext& context, const Options& options, int32_t num_blocks,
                 int32_t num_host_blocks);

  int64_t BlockBytes() const { return context_.geometry.BytesPerToken() * options_.block_size; }
  // Longest run of cached full blocks at the start of `tokens`, never covering all tokens.
  void LookupPrefix(absl::Span<const int32_t> tokens, std::vector<int32_t>* blocks,
                    std::vector<uint64_t>* hashes) const;
  // Sequence refs of a device block (ref count minus its pin).
  int32_t Holders(int32_t block) const {
    return device_.RefCount(block) - device_pins_.pinned[block];
  }
  int32_t AllocateDevice();  // a fresh device block held by one sequence
  // One more sequence holds `block`: a prefix hit (Touch, may take it off the free queue)
  // or a fork (IncRef).
  void ShareDevice(int32_t block, bool prefix_hit);
  void ReleaseDevice(int32_t block);                           // one sequence lets go of a block
  void ReleaseDeviceBlocks(absl::Span<const int32_t> blocks);  // in reverse order
  static void Pin(BlockPool& pool, Pins& pins, int32_t block);
  static void Unpin(BlockPool& pool, Pins& pins);
  void MarkPendingDst(int32_t block);  // a pending swap-in or copy writes `block`
  void CacheIfFull(Sequence& seq);     // hashes and caches the last block if it just filled

  KvManagerContext context_;
  Options options_;
  int32_t watermark_blocks_;
  BlockPool device_;
  std::optional<BlockPool> host_;  // present with preemption_mode=swap
  absl::flat_hash_map<int64_t, Sequence> seqs_;
  std::vector<int32_t> fill_;  // [num_blocks] tokens stored in each device block
  Pins device_pins_, host_pins_;
  std::vector<uint8_t> pending_dst_;       // [num_blocks] written by a pending swap-in or copy
  std::vector<int32_t> pending_dst_list_;  // the blocks flagged in pending_dst_
  // Transfers recorded since the last Plan.
  std::vector<BlockCopy> pending_swap_out_, pending_swap_in_, pending_copies_;
  int64_t held_blocks_ = 0;  // device blocks with >= 1 holder
  int64_t used_tokens_ = 0;  // sum of fill_ over those blocks
  int64_t host_held_blocks_ = 0;
  int64_t swapped_tokens_ = 0;
  KvCounters counters_;
  uint64_t plan_stamp_ = 0;
  PlannedStep planned_;  // read by the rank caches
};

}  // namespace kvscope::kvcache

#endif  // KVSCOPE_KVCACHE_PAGED_KV_MANAGER_H_

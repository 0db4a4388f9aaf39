// File: kvcache/contiguous_kv_manager.h
//
// `contiguous`: up-front reservation, as HF transformers / FasterTransformer allocate a
// sequence's whole KV at admission. Each admitted sequence reserves `reserve` tokens, as
// blocks of `block_size` from one device pool sized by the budget
// (floor(kv_memory_bytes / (block_size * BytesPerToken))):
//   reserve=max_model_len       every sequence reserves max_model_len tokens (default);
//   reserve=prompt_plus_output  prompt + max_new_tokens (at most max_model_len when set).
// CanAdmit: kNever when one reservation exceeds the pool (or the prompt exceeds the
// reservation), kLater when not enough blocks are free. Append never fails within the
// reservation and returns false beyond it. No prefix caching, no swap, no fork.
// Usage: reserved = reservation bytes (whole blocks), used = tokens held * bytes per token;
// their difference is the waste this strategy is measured for.
//
// Thread-safety: see kv_manager.h.
#ifndef KVSCOPE_KVCACHE_CONTIGUOUS_KV_MANAGER_H_
#define KVSCOPE_KVCACHE_CONTIGUOUS_KV_MANAGER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "kvcache/block_pool.h"
#include "kvcache/block_table.h"
#include "kvcache/kv_manager.h"
#include "kvcache/managed_kv_cache.h"

namespace kvscope::kvcache {

class ContiguousKvManager final : public KvManager {
 public:
  enum class Reserve { kMaxModelLen, kPromptPlusOutput };
  struct Options {
    int32_t block_size = 16;  // 1..1024
    Reserve reserve = Reserve::kMaxModelLen;
  };

  // InvalidArgument for bad options or geometry, a budget below one block, or (with
  // reserve=max_model_len) below one sequence's reservation, saying the bytes needed.
  static absl::StatusOr<std::unique_ptr<ContiguousKvManager>> Create(
      const KvManagerContext& context, const Options& options);

  std::string name() const override { return "contiguous"; }
  const KvGeometry& geometry() const override { return context_.geometry; }
  int64_t CapacityTokens() const override {
    return static_cast<int64_t>(pool_.num_blocks()) * options_.block_size;
  }
  Admission CanAdmit(const SeqRequest& seq) const override;
  // Reserves the blocks; returns 0 (nothing is cached). AlreadyExists for a tracked id,
  // InvalidArgument / ResourceExhausted when CanAdmit is kNever / kLater.
  absl::StatusOr<int32_t> Admit(const SeqRequest& seq) override;
  bool Append(int64_t seq_id, absl::Span<const int32_t> tokens) override;
  void Free(int64_t seq_id) override;
  int32_t NumTokens(int64_t seq_id) const override;
  absl::StatusOr<const StepPlan*> Plan(absl::Span<const SeqStep> steps) override;
  KvUsage Usage() const override;
  KvCounters Counters() const override { return KvCounters{}; }
  std::unique_ptr<KvCache> CreateRankCache(int rank) override;

  // Tokens a sequence would reserve.
  int64_t ReservationTokens(const SeqRequest& seq) const;
  const BlockPool& pool() const { return pool_; }

 private:
  ContiguousKvManager(const KvManagerContext& context, const Options& options, int32_t num_blocks);
  int64_t BlockBytes() const { return context_.geometry.BytesPerToken() * options_.block_size; }

  KvManagerContext context_;
  Options options_;
  BlockPool pool_;                                 // no prefix caching
  absl::flat_hash_map<int64_t, BlockTable> seqs_;  // blocks = the whole reservation
  int64_t reserved_blocks_ = 0;
  int64_t held_tokens_ = 0;
  uint64_t plan_stamp_ = 0;
  PlannedStep planned_;  // read by the rank caches
};

}  // namespace kvscope::kvcache

#endif  // KVSCOPE_KVCACHE_CONTIGUOUS_KV_MANAGER_H_

// File: kvcache/full_kv_cache.h
//
// The plain strategy that keeps every token: blocks of `block_size` slots are taken from
// a growing pool as sequences grow and returned when they are released. Every token of a
// sequence stays visible, with its own position. This is the reference the lossy strategies
// are compared with. Single-threaded (one instance per rank).
#ifndef KVSCOPE_KVCACHE_FULL_KV_CACHE_H_
#define KVSCOPE_KVCACHE_FULL_KV_CACHE_H_

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "kvcache/kv_cache.h"

namespace kvscope::kvcache {

class FullKvCache final : public KvCache {
 public:
  struct Options {
    int32_t block_size = 16;
    // Upper bound on tokens held at once over all sequences (0 = unbounded).
    int64_t max_tokens = 0;
    // false: bookkeeping only (a device engine holds the K/V): the pool grows in blocks
    // but allocates no memory, and Pool(l) has null k/v.
    bool allocate_storage = true;
  };

  FullKvCache(const KvShape& shape, const Options& options);

  const KvShape& shape() const override { return shape_; }
  absl::Status PrepareStep(absl::Span<const SeqStep> seqs) override;
  kernels::KvPoolView Pool(int32_t layer) override;
  absl::Span<const int32_t> NewTokenSlots() const override { return new_slots_; }
  absl::Span<const kernels::SeqKvView> SeqViews(int32_t layer) override { return views_; }
  void Release(int64_t seq_id) override;
  int32_t NumTokens(int64_t seq_id) const override;
  int64_t ReservedBytes() const override;
  int64_t UsedBytes() const override;

 private:
  struct Sequence {
    std::vector<int32_t> blocks;     // physical block of each logical block
    std::vector<int32_t> slots;      // slot of each held token
    std::vector<int32_t> positions;  // position of each held token
  };

  int32_t AllocateBlock();
  void GrowPool(int64_t num_blocks);

  KvShape shape_;
  Options options_;
  int64_t num_blocks_ = 0;
  std::vector<std::vector<float>> k_;  // per layer [num_blocks, heads, block_size, head_dim]
  std::vector<std::vector<float>> v_;
  std::vector<int32_t> free_blocks_;
  absl::flat_hash_map<int64_t, Sequence> seqs_;
  int64_t held_tokens_ = 0;
  int64_t held_blocks_ = 0;
  // Plan of the last PrepareStep.
  std::vector<int32_t> new_slots_;
  std::vector<kernels::SeqKvView> views_;
};

}  // namespace kvscope::kvcache

#endif  // KVSCOPE_KVCACHE_FULL_KV_CACHE_H_

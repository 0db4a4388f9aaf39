// File: kvcache/block_pool.h
//
// A pool of fixed-size KV blocks with reference counts and an automatic prefix cache, after
// vLLM V1's BlockPool (vllm/v1/core/block_pool.py):
//   - every block with ref count 0 sits in one free queue, a doubly linked list in eviction
//     order: the head is the least recently freed block and is reused first; freed blocks
//     are appended at the tail; removal from the middle (a prefix hit) is O(1);
//   - a full block may be cached under the chained hash of its tokens (HashBlockTokens);
//     it stays cached while free, and loses its hash lazily, only when Allocate pops it;
//   - FreeBlocks frees a sequence's blocks in reverse order, so its tail blocks are evicted
//     before its head blocks (shared prefixes live longest).
// The pool only does bookkeeping on block ids in [0, num_blocks); it owns no KV memory.
//
// Misuse (IncRef/Free/Touch of an id out of range or in the wrong state) is an internal bug
// and aborts with a message. Thread-compatible: one owner thread.
#ifndef KVSCOPE_KVCACHE_BLOCK_POOL_H_
#define KVSCOPE_KVCACHE_BLOCK_POOL_H_

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/types/span.h"

namespace kvscope::kvcache {

// Parent hash of a sequence's first block.
inline constexpr uint64_t kNoneBlockHash = 0x6b7673636f706531ULL;  // "kvscope1"

// Chained hash of one full block: H(parent_hash, token ids). A fixed 64-bit mix
// (splitmix64 finalizer over each word), identical across runs, processes and machines.
uint64_t HashBlockTokens(uint64_t parent_hash, absl::Span<const int32_t> tokens);

class BlockPool {
 public:
  struct Counters {
    int64_t allocations = 0;            // Allocate calls that returned a block
    int64_t evicted_cached_blocks = 0;  // cached blocks whose hash Allocate dropped
    int64_t touches = 0;                // Touch calls (prefix hits)
  };

  // All blocks start free, queued in id order (block 0 is reused first).
  BlockPool(int32_t num_blocks, bool enable_prefix_caching);

  int32_t num_blocks() const { return static_cast<int32_t>(ref_.size()); }
  bool prefix_caching() const { return prefix_caching_; }
  // Blocks with ref count 0 (cached ones included: they are evictable).
  int32_t num_free() const { return num_free_; }
  int32_t num_used() const { return num_blocks() - num_free_; }

  // Pops the head of the free queue, drops its cached hash if it has one (lazy eviction)
  // and returns it with ref count 1; -1 when no block is free.
  int32_t Allocate();
  // ref++ of a block in use (ref >= 1).
  void IncRef(int32_t block);
  // ref--; at 0 the block is appended to the free queue's tail (keeping its cached hash).
  void Free(int32_t block);
  // Frees `blocks` in reverse order (a sequence's tail blocks become the first evicted).
  void FreeBlocks(absl::Span<const int32_t> blocks);
  int32_t RefCount(int32_t block) const;

  // Prefix cache. Lookup returns the block cached under `hash`, or -1.
  int32_t Lookup(uint64_t hash) const;
  // A prefix hit on a cached block: removes it from the free queue if its ref count is 0,
  // then ref++.
  void Touch(int32_t block);
  // Records that the full block `block` (in use) holds the tokens hashed to `hash`. Does
  // nothing if caching is off, the block already has a hash, or another block is already
  // cached under `hash` (identical blocks are not deduplicated: block tables stay
  // append-only). Returns whether the block is now cached under `hash`.
  bool CacheBlock(int32_t block, uint64_t hash);
  bool IsCached(int32_t block) const;
  int64_t num_cached() const { return static_cast<int64_t>(cached_.size()); }

  // Block ids in the free queue, head (next reused) first. O(num_free); for tests.
  std::vector<int32_t> FreeQueue() const;

  const Counters& counters() const { return counters_; }

  // Full consistency check, O(num_blocks): free + used == total, ref counts >= 0, the free
  // queue is a well-linked list of exactly the ref-0 blocks, every cached hash maps back to
  // its block and vice versa.
  absl::Status CheckInvariants() const;

 private:
  void CheckBlock(int32_t block, const char* op) const;
  void Unlink(int32_t block);
  void PushBack(int32_t block);

  bool prefix_caching_;
  std::vector<int32_t> ref_;  // [num_blocks] reference count
  // Free queue: intrusive doubly linked list; index num_blocks is the sentinel.
  std::vector<int32_t> prev_;      // [num_blocks + 1]
  std::vector<int32_t> next_;      // [num_blocks + 1]
  std::vector<uint8_t> in_queue_;  // [num_blocks] 1 while queued
  std::vector<uint8_t> has_hash_;  // [num_blocks] 1 while cached
  std::vector<uint64_t> hash_;     // [num_blocks] valid when has_hash_
  int32_t num_free_ = 0;
  absl::flat_hash_map<uint64_t, int32_t> cached_;  // hash -> block
  Counters counters_;
};

}  // namespace kvscope::kvcache

#endif  // KVSCOPE_KVCACHE_BLOCK_POOL_H_

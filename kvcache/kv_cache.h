// File: kvcache/kv_cache.h
//
// The interface through which the forward pass writes and reads keys and values. The model
// never owns its KV memory: each tensor-parallel rank holds one KvCache for the KV heads it
// serves, and every strategy (keep-everything, paged blocks, fixed-budget slots per head,
// a host pool with prefetch) implements this interface.
//
// Protocol for one forward step, on each rank:
//   1. PrepareStep(seqs)      the only call that changes bookkeeping for new tokens: makes
//                             room for each sequence's new tokens and fixes, for the step,
//                             the slot of each new token and each sequence's attention view.
//   2. for each layer l:
//        WriteKv(Pool(l), k, v, NewTokenSlots())       (kernels/ops.h)
//        Attention(..., Pool(l), SeqViews(l), ..., AttentionMassBuffer(l))
//        OnAttention(l)        lets score-based strategies read the accumulated mass
//   3. Release(seq_id) when a sequence finishes.
// Storage follows the pool layout documented in kernels/ops.h (KvPoolView).
//
// Thread-safety: a KvCache belongs to one rank's thread; it is not shared.
#ifndef KVSCOPE_KVCACHE_KV_CACHE_H_
#define KVSCOPE_KVCACHE_KV_CACHE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/ops.h"

namespace kvscope::kvcache {

// What one rank stores per token and layer.
struct KvShape {
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;  // KV heads held by this rank
  int32_t head_dim = 0;
  // Bytes of K plus V for one token in one layer (float32 on the CPU).
  int64_t BytesPerTokenPerLayer() const {
    return 2 * static_cast<int64_t>(num_kv_heads) * head_dim * static_cast<int64_t>(sizeof(float));
  }
};

// One sequence's share of a step: `num_new_tokens` tokens at positions
// [start_position, start_position + num_new_tokens) are written and attend to the cache.
struct SeqStep {
  int64_t seq_id = 0;
  int32_t num_new_tokens = 0;
  int32_t start_position = 0;
};

class KvCache {
 public:
  virtual ~KvCache() = default;

  virtual const KvShape& shape() const = 0;

  // Makes room for the step's new tokens. A sequence seen for the first time is admitted;
  // a known one must continue where it stopped (start_position == tokens held so far).
  // ResourceExhausted if the cache cannot hold them (nothing is changed then);
  // InvalidArgument for inconsistent positions.
  virtual absl::Status PrepareStep(absl::Span<const SeqStep> seqs) = 0;

  // Pool of layer `layer`, valid until the next PrepareStep.
  virtual kernels::KvPoolView Pool(int32_t layer) = 0;
  // Slot of each new token of the last PrepareStep, in the order of its `seqs`
  // ([sum of num_new_tokens]); -1 means "do not store".
  virtual absl::Span<const int32_t> NewTokenSlots() const = 0;
  // Attention views of the last PrepareStep's sequences for layer `layer`, in the order of
  // its `seqs`; they include the step's new tokens.
  virtual absl::Span<const kernels::SeqKvView> SeqViews(int32_t layer) = 0;

  // Score-based strategies return a zeroed buffer [num_seqs][num_heads_local][max_cached]
  // for the attention op to accumulate into, and read it in OnAttention; others return
  // null. `max_cached` receives the row stride.
  virtual float* AttentionMassBuffer(int32_t layer, int32_t num_heads_local,
                                     int64_t* max_cached) {
    *max_cached = 0;
    return nullptr;
  }
  virtual void OnAttention(int32_t layer) {}

  // Frees everything the sequence holds. Unknown ids are ignored.
  virtual void Release(int64_t seq_id) = 0;

  // Tokens currently held by `seq_id` (0 if unknown).
  virtual int32_t NumTokens(int64_t seq_id) const = 0;
  // KV bytes this cache has reserved for sequences and bytes holding tokens.
  virtual int64_t ReservedBytes() const = 0;
  virtual int64_t UsedBytes() const = 0;
};

}  // namespace kvscope::kvcache

#endif  // KVSCOPE_KVCACHE_KV_CACHE_H_

// File: kernels/cuda/evicting_ops.h
//
// Device-side state and mechanics of the fixed-budget strategies (kvcache/evicting_kv_cache.h:
// `h2o`, `streaming`) for one layer: the per-(sequence, KV head) entry lists and the two
// moves OnAttention makes after a policy has decided (evicting_kv_cache.cc:324-375):
//   compression  entries keep[0..count) (ascending) are compacted into entries 0..count-1,
//                with their K/V rows, positions and scores (CompactKept);
//   eviction     the incoming entry (view_n - 1) replaces the victim entry, K/V row,
//                position and score (ReplaceVictims; nothing when the victim is the incoming
//                entry itself).
// The decisions are h2o_ops.h and streaming_ops.h; the re-rotation of sink keys is
// streaming_ops.h. Data movement is bit exact (rows are copied, never converted).
//
// Every function: all pointers are device pointers; arguments are checked on the host and a
// bad one gives InvalidArgument before anything is launched; the device arrays' CONTENTS
// (slots, counts, indices) are preconditions (out-of-range values are undefined behaviour).
// Asynchronous on `stream`; launch errors come back as a Status (cuda_status.h).
#ifndef KVSCOPE_KERNELS_CUDA_EVICTING_OPS_H_
#define KVSCOPE_KERNELS_CUDA_EVICTING_OPS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/kv_pool.h"

namespace kvscope::kernels::cuda {

// The entry lists of one layer (EvictingKvManager::Seq::head_slots / head_pos / head_score
// of that layer and this rank's KV heads, the same arrays the attention views read). Entry
// j of (step sequence i, local KV head h) is element head_offset[i] + h * head_stride[i] + j
// of positions, slots and scores.
struct EntryLists {
  int32_t* positions = nullptr;          // original position of each entry
  int32_t* slots = nullptr;              // pool slot of each entry
  double* scores = nullptr;              // accumulated attention mass; may be null (streaming)
  const int64_t* head_offset = nullptr;  // [num_seqs] element index of (i, head 0, entry 0)
  const int32_t* head_stride = nullptr;  // [num_seqs] elements between consecutive heads
  int32_t num_seqs = 0;                  // sequences of the step (>= 0)
  int32_t num_kv_heads = 0;              // KV heads of this rank (>= 1)
};

// Per-sequence values of the step, each [num_seqs] int32 on the device.
struct EvictStep {
  const int32_t* view_n = nullptr;  // entries listed this step (PlannedSeq::view_n)
  const int32_t* length = nullptr;  // tokens of the sequence after the step (PlannedSeq::length)
  const int32_t* total = nullptr;   // EvictBudget::total
  const int32_t* recent = nullptr;  // EvictBudget::recent
};

// InvalidArgument unless positions, slots, head_offset and head_stride are set, num_seqs >= 0
// and num_kv_heads >= 1 (and scores is set when `need_scores`).
absl::Status ValidateEntryLists(const EntryLists& entries, bool need_scores, const char* what);

// Eviction: for every (i, h) with victims[i * num_kv_heads + h] >= 0, the incoming entry
// n - 1 (n = view_n[i]) replaces entry victim: the K and V rows of head h move from slot
// slots[n-1] to slots[victim] in `pool`, and positions (and scores when set) follow. Victims
// equal to n - 1, or negative (a sequence that evicts nothing), change nothing.
// victims: [num_seqs][num_kv_heads].
absl::Status ReplaceVictims(const CudaKvPool& pool, const EntryLists& entries,
                            const int32_t* view_n, const int32_t* victims, cudaStream_t stream);

// Compression: for every (i, h), entries keep[(i * num_kv_heads + h) * keep_stride + j],
// j < keep_count[i * num_kv_heads + h] (strictly ascending, keep[j] >= j), move to entry j
// in order: K/V rows of head h from slot slots[keep[j]] to slots[j], positions and scores
// (when set) likewise. keep_count < 0 means "no compression" for that (i, h). Equivalent to
// the CPU's sequential in-place loop (sources are read before any later destination is
// written: the rows move in chunks, each read completely before it is written).
absl::Status CompactKept(const CudaKvPool& pool, const EntryLists& entries, const int32_t* keep,
                         int32_t keep_stride, const int32_t* keep_count, cudaStream_t stream);

}  // namespace kvscope::kernels::cuda

#endif  // KVSCOPE_KERNELS_CUDA_EVICTING_OPS_H_

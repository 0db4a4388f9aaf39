// File: kernels/cuda/streaming_ops.h
//
// StreamingLLM (kvcache/streaming_kv_manager.h) on the device, for one layer: the positional
// decisions of StreamingPolicy and the rolling-position re-rotation of the sink keys.
// With the entry moves of evicting_ops.h a step is, per layer:
//   compression  StreamingSelectKeep -> CompactKept (-> ShiftSinkKeys, positions=rolling)
//   decode       StreamingVictims    -> ReplaceVictims (-> ShiftSinkKeys, positions=rolling)
// the order of EvictingKvCache::OnAttention (evicting_kv_cache.cc:324-375).
//
// CPU rules mirrored (streaming_kv_manager.cc), with sinks = total - recent:
//   keep    entries with position < sinks or position >= length - recent, ascending
//           (streaming_kv_manager.cc:31-40);
//   victim  the entry with the smallest position >= sinks (first entry on equal positions);
//           if there is none, the entry with the largest position (first on ties)
//           (streaming_kv_manager.cc:42-54);
//   shift   after `evicted` > 0 tokens left a (sequence, head), every held entry j < total
//           with position < sinks has its key re-rotated by `evicted` positions:
//           for i < rot_half, angle = double(evicted) * double(inv_freq[i]),
//           (a, b) = (x[i], x[i + rot_half]) -> (a cos - b sin, b cos + a sin) computed in
//           double and rounded to float once (evicting_kv_cache.cc:308-322, 365-371), then
//           to the pool's element type.
// Conventions (pointers, validation, streams): evicting_ops.h.
#ifndef KVSCOPE_KERNELS_CUDA_STREAMING_OPS_H_
#define KVSCOPE_KERNELS_CUDA_STREAMING_OPS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/evicting_ops.h"
#include "kernels/cuda/kv_pool.h"

namespace kvscope::kernels::cuda {

// victims[i * num_kv_heads + h] = the entry (of view_n[i]) that (i, h) evicts (reads
// positions, step.view_n, step.total and step.recent). victims: [num_seqs][num_kv_heads].
absl::Status StreamingVictims(const EntryLists& entries, const EvictStep& step,
                              int32_t* victims, cudaStream_t stream);

// keep[(i * num_kv_heads + h) * keep_stride + 0 .. count) = the entries (of view_n[i]) that
// (i, h) keeps, ascending; keep_count[i * num_kv_heads + h] = count. Reads positions,
// view_n, length, total and recent. keep_stride must be >= every view_n[i] (writes beyond
// keep_stride are dropped). keep: [num_seqs][num_kv_heads][keep_stride].
absl::Status StreamingSelectKeep(const EntryLists& entries, const EvictStep& step, int32_t* keep,
                                 int32_t keep_stride, int32_t* keep_count, cudaStream_t stream);

// Re-rotates, in place in pool.k, the keys of the held entries j < held[i] of every (i, h)
// whose position is < shift_below[i], by evicted[i * num_kv_heads + h] positions (nothing
// where that is <= 0). inv_freq: [rot_half] floats on the device (KvGeometry::rope_inv_freq);
// 1 <= rot_half <= head_dim / 2. held, shift_below: [num_seqs]; evicted: [num_seqs]
// [num_kv_heads]. For a decode eviction evicted is 1; for a compression, view_n - keep
// count. pool.v is not touched.
absl::Status ShiftSinkKeys(const CudaKvPool& pool, const EntryLists& entries, const int32_t* held,
                           const int32_t* shift_below, const int32_t* evicted,
                           const float* inv_freq, int32_t rot_half, cudaStream_t stream);

}  // namespace kvscope::kernels::cuda

#endif  // KVSCOPE_KERNELS_CUDA_STREAMING_OPS_H_

// File: kernels/cuda/h2o_ops.h
//
// H2O (kvcache/h2o_kv_manager.h) on the device, for one layer: accumulating the attention
// op's mass into the per-(sequence, KV head, entry) scores, and the per-head eviction
// decisions of H2oPolicy. With the entry moves of evicting_ops.h a step is, per layer:
//   AccumulateH2oScores, then
//   compression  H2oSelectKeep -> CompactKept
//   decode       H2oVictims    -> ReplaceVictims
// the order of EvictingKvCache::OnAttention (evicting_kv_cache.cc:324-364).
//
// CPU rules mirrored, with window_start = length - recent:
//   scores  score[i][h][j] += mass[i][q][j] for the group's query heads q = h * group ..
//           (h + 1) * group - 1 in ascending order, one double addition each (the float mass
//           widened), j < view_n[i] (evicting_kv_cache.cc:337-343). Same additions in the
//           same order: the device scores equal the CPU's bit for bit.
//   victim  among entries with position < window_start, the lowest score, ties to the lower
//           position; if every entry is in the window, the same over all entries
//           (h2o_kv_manager.cc:58-74).
//   keep    every entry with position >= window_start, plus the min(total - min(#window,
//           total), #old) old entries with the highest score, ties to the lower position;
//           ascending entry order (h2o_kv_manager.cc:36-56).
// Conventions (pointers, validation, streams): evicting_ops.h.
#ifndef KVSCOPE_KERNELS_CUDA_H2O_OPS_H_
#define KVSCOPE_KERNELS_CUDA_H2O_OPS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/evicting_ops.h"

namespace kvscope::kernels::cuda {

// entries.scores[(i, h, j)] += Σ_q mass[(i * num_heads + q) * mass_stride + j] as above.
// mass: [num_seqs][num_heads][mass_stride] floats (the attention op's attn_mass, ops.h);
// num_heads: this rank's query heads, a multiple of num_kv_heads; view_n: [num_seqs], each
// <= mass_stride.
absl::Status AccumulateH2oScores(const float* mass, int32_t num_heads, int64_t mass_stride,
                                 const EntryLists& entries, const int32_t* view_n,
                                 cudaStream_t stream);

// victims[i * num_kv_heads + h] = the entry (of view_n[i]) that (i, h) evicts. Reads
// positions, scores, view_n, length and recent. victims: [num_seqs][num_kv_heads].
absl::Status H2oVictims(const EntryLists& entries, const EvictStep& step, int32_t* victims,
                        cudaStream_t stream);

// keep[(i * num_kv_heads + h) * keep_stride + 0 .. count) = the entries (of view_n[i]) that
// (i, h) keeps, ascending; keep_count[i * num_kv_heads + h] = count. Reads positions,
// scores, view_n, length, total and recent. keep_stride must be >= every view_n[i] (writes
// beyond it are dropped). Positions within a (i, h) list must be distinct (they are: each
// token is listed once). Cost per (i, h): 12 passes over view_n entries (radix select).
absl::Status H2oSelectKeep(const EntryLists& entries, const EvictStep& step, int32_t* keep,
                           int32_t keep_stride, int32_t* keep_count, cudaStream_t stream);

}  // namespace kvscope::kernels::cuda

#endif  // KVSCOPE_KERNELS_CUDA_H2O_OPS_H_

// File: kernels/cuda/infinigen_ops.h
//
// InfiniGen (kvcache/infinigen_kv_manager.h, infinigen_kv_cache.h) on the device: the
// partial key cache, speculation (partial scores, the count n', per-KV-head top-n') and the
// gather of the selected tokens' K/V rows from the host pool into the device prefetch buffer.
// One speculated layer and one rank per call; sequences are the step's sparse (decode)
// sequences, r = 0 .. num_seqs - 1 in InfinigenKvCache::SpeculationRows order.
//
// CPU rules mirrored:
//   partial keys  pk[slot][h][c] = K[slot][h][columns[h][c]] for every new slot >= 0
//                 (infinigen_kv_cache.cc:229-243).
//   scores        s[r][q][j] = Σ_c double(partial_q[r][q][c]) * double(pk[cand][kh][c]),
//                 c ascending, kh = q / group, cand = the j-th candidate of (r, kh)
//                 (infinigen_kv_cache.cc:166-189). Products of two floats are exact in
//                 double, so the device sum equals the CPU's bit for bit.
//   count         thr_q = max_j s[r][q][j] - alpha; cnt_q = #{j : s > thr_q} (strictly);
//                 n' = min(floor(Σ_q cnt_q / num_heads), max_num_kv[r], n[r]); 0 when n = 0
//                 (infinigen_selection.cc:8-19).
//   top-k         per KV head, agg[j] = max over the group's query heads of s[r][q][j]
//                 (starting at -inf); the n' largest, ties to the lower j, ascending j
//                 (infinigen_kv_cache.cc:192-199, infinigen_selection.cc:21-31).
//   gather        for each selected token: the K and V rows of (host slot, KV head) move to
//                 (prefetch slot, KV head); h2d bytes = rows x 2 x head_dim x element size
//                 (infinigen_kv_cache.cc:200-221 with sizeof(float) for the CPU's float pool).
// Conventions: pointers are device pointers unless stated; arguments are checked on the host
// (InvalidArgument before any launch or copy); device array contents are preconditions;
// asynchronous on `stream`.
#ifndef KVSCOPE_KERNELS_CUDA_INFINIGEN_OPS_H_
#define KVSCOPE_KERNELS_CUDA_INFINIGEN_OPS_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "common/dtype.h"
#include "kernels/cuda/kv_pool.h"

namespace kvscope::kernels::cuda {

// Partial key cache rows for new tokens: for t < num_new with slots[t] >= 0 and every KV
// head h, partial_keys[(row[t] * num_kv_heads + h) * partial_dim + c] = K row (slots[t],
// h)[columns[h * partial_dim + c]], where row = dst_rows (or slots when dst_rows is null;
// a row < 0 is skipped). slots, dst_rows: [num_new]; columns: [num_kv_heads][partial_dim]
// int32 in [0, head_dim) (InfinigenSkew::Columns of each local head's model KV head);
// partial_keys: [partial_rows][num_kv_heads][partial_dim] of pool.dtype (rows <
// partial_rows). dst_rows lets the keys be read where the step keeps them (the GPU engine's
// working pool) and stored at the tokens' host slots.
absl::Status WritePartialKeys(const CudaKvPool& pool, const int32_t* slots, int32_t num_new,
                              const int32_t* columns, int32_t partial_dim, void* partial_keys,
                              cudaStream_t stream, const int32_t* dst_rows = nullptr);

// Partial scores. partial_q: [num_seqs][num_heads][partial_dim] float32 (the skewed partial
// queries, engine/infinigen_forward.h); partial_keys: [*][num_kv_heads][partial_dim] of
// `dtype`; cand_rows: [num_seqs][num_kv_heads][cand_stride], the partial-key row (host slot)
// of candidate j of (r, kh) for j < num_cands[r]; num_cands: [num_seqs], each <= cand_stride;
// scores: [num_seqs][num_heads][cand_stride] doubles (entries j >= num_cands[r] untouched).
// num_heads must be a multiple of num_kv_heads.
absl::Status InfinigenPartialScores(const float* partial_q, const void* partial_keys,
                                    DType dtype, int32_t num_kv_heads, int32_t partial_dim,
                                    const int32_t* cand_rows, int64_t cand_stride,
                                    const int32_t* num_cands, int32_t num_seqs,
                                    int32_t num_heads, double* scores, cudaStream_t stream);

// counts[r] = n' of sequence r (rule above). scores as InfinigenPartialScores (row stride
// score_stride); max_num_kv: [num_seqs]. alpha >= 0 and finite.
absl::Status InfinigenSpeculatedCount(const double* scores, int64_t score_stride,
                                      const int32_t* num_cands, int32_t num_seqs,
                                      int32_t num_heads, double alpha, const int32_t* max_num_kv,
                                      int32_t* counts, cudaStream_t stream);

// selected[(r * num_kv_heads + kh) * selected_stride + 0 .. counts[r]) = the chosen candidate
// indices j of (r, kh), ascending (rule above); slots beyond counts[r] untouched.
// selected_stride must be >= every counts[r] (>= every max_num_kv[r] suffices; writes beyond
// it are dropped). Cost per (r, kh): 12 passes over num_cands[r] candidates.
absl::Status InfinigenTopK(const double* scores, int64_t score_stride, const int32_t* num_cands,
                           const int32_t* counts, int32_t num_seqs, int32_t num_heads,
                           int32_t num_kv_heads, int32_t* selected, int32_t selected_stride,
                           cudaStream_t stream);

// One row of a gather: the K and V rows of (src_slot, head) in the source pool go to
// (dst_slot, head) in the destination pool.
struct GatherRow {
  int32_t src_slot = 0;
  int32_t dst_slot = 0;
  int32_t head = 0;
};

// Bytes of K/V data a gather of `num_rows` rows moves (the CPU's h2d_bytes accounting).
inline int64_t GatherBytes(int64_t num_rows, int32_t head_dim, DType dtype) {
  return num_rows * 2 * head_dim * static_cast<int64_t>(DTypeSize(dtype));
}

// Size of the pinned staging buffer and of the device packed buffer GatherCopyEngine needs.
size_t GatherPackedBytes(int64_t num_rows, int32_t head_dim, DType dtype);

// (a) Copy engine. On the calling thread, packs the rows (row list first, then each row's K
// and V) from `host_pool` (HOST pointers, pinned or not) into `pinned_staging`, then ONE
// cudaMemcpyAsync moves the packed bytes to `device_packed` and a kernel scatters them into
// `dst_pool` (device). rows: HOST array [num_rows]; slots and heads are checked against both
// pools (InvalidArgument naming the row). The caller must not reuse `pinned_staging` before
// the copy has completed (e.g. an event on `stream`); this function does not synchronize.
// *h2d_bytes (optional) += GatherBytes(num_rows, ...), the K/V data moved (the row list,
// 12 bytes a row, travels in the same copy and is not counted, as on the CPU).
absl::Status GatherCopyEngine(const CudaKvPool& host_pool, const GatherRow* rows,
                              int64_t num_rows, void* pinned_staging, size_t staging_bytes,
                              void* device_packed, size_t device_packed_bytes,
                              const CudaKvPool& dst_pool, cudaStream_t stream,
                              int64_t* h2d_bytes);

// (b) Zero copy. A kernel reads the rows straight from mapped pinned host memory:
// `mapped_pool` holds the DEVICE addresses of the host pool (PinnedBuffer::DevicePointer of a
// mapped=true buffer) and writes them into `dst_pool`. rows: DEVICE array [num_rows] (e.g.
// built on the device from InfinigenTopK's output, with no host round trip). Rows are read in
// 16-byte words when the row size and both pools allow it. *h2d_bytes (optional) +=
// GatherBytes(num_rows, ...).
absl::Status GatherZeroCopy(const CudaKvPool& mapped_pool, const GatherRow* rows,
                            int64_t num_rows, const CudaKvPool& dst_pool, cudaStream_t stream,
                            int64_t* h2d_bytes);

}  // namespace kvscope::kernels::cuda

#endif  // KVSCOPE_KERNELS_CUDA_INFINIGEN_OPS_H_

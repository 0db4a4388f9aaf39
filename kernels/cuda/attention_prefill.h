// File: kernels/cuda/attention_prefill.h
//
// Causal prefill attention on the device, reading K/V from the paged pool: the query tokens
// of each sequence attend the sequence's listed cached tokens (its prefix and, after WriteKv,
// the new tokens themselves: chunked prefill is "write the chunk, then attend"), with the
// causal rule on original positions as in kernels::Attention (kernels/ops.h).
//
// For bf16/fp16 with head_dim 64, 128 or 256 and 16-byte aligned rows the kernel is tiled
// flash-attention style on the tensor cores (mma.sync m16n8k16, sm_80 and later): a CTA
// holds 64 query rows of one head, streams the K/V rows of the sequence's slot list through
// shared memory (gathered with cp.async, double buffered, 64 keys per tile, 32 for
// head_dim 256), keeps the scores and the output in registers with an online softmax in
// float32, and skips the tiles whose keys no row of a warp can see. The keys a CTA loads
// stop at the last listed key visible to any of its rows, so for position-ordered lists the
// causal upper triangle is neither read nor computed. float32 and other head sizes run the
// general kernel of attention_decode.h (CUDA cores, exact same semantics).
//
// Device-side errors as in attention_decode.h (kErrorSlotOutOfRange; a query row that sees
// no cached token gets zeros and kErrorNoVisibleKey). Thread safety: enqueues on `stream`.
#ifndef KVSCOPE_KERNELS_CUDA_ATTENTION_PREFILL_H_
#define KVSCOPE_KERNELS_CUDA_ATTENTION_PREFILL_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/kv_cache_ops.h"
#include "kernels/ops.h"

namespace kvscope::kernels::cuda {

struct PrefillOptions {
  // Run the general (CUDA-core) kernel even where the tensor-core kernel applies; for tests
  // and comparisons.
  bool force_general = false;
};

// Causal attention of the query tokens of `num_seqs` sequences, stored back to back.
//   q:           device, [tokens, num_heads, head_dim] of pool.dtype, row stride q_stride
//   out:         device, [tokens, num_heads, head_dim] of pool.dtype, row stride out_stride
//   seq_q_start: device, [num_seqs + 1], ascending: sequence s owns query rows
//                [seq_q_start[s], seq_q_start[s + 1]) (seq_q_start[num_seqs] <= tokens)
//   token_pos:   device, [tokens], each query token's position in its sequence
//   seqs:        DEVICE array [num_seqs] of SeqKvView with device slots/positions, as in
//                PagedAttention (per-head lists or one shared list)
//   max_q_per_seq: host, >= every seq_q_start[s + 1] - seq_q_start[s] (sizes the grid)
// KV head of query head h is h / (num_heads / pool.num_kv_heads). Rows of q/out not owned by
// any sequence are left untouched. InvalidArgument (nothing launched) for bad shapes,
// strides or null pointers.
absl::Status PrefillAttention(const void* q, int64_t q_stride, int64_t tokens, int32_t num_heads,
                              const int32_t* seq_q_start, const int32_t* token_pos,
                              const CudaKvPool& pool, const SeqKvView* seqs, int32_t num_seqs,
                              int32_t max_q_per_seq, float scale, void* out, int64_t out_stride,
                              int32_t* error_flag, const PrefillOptions& options,
                              cudaStream_t stream);

}  // namespace kvscope::kernels::cuda

#endif  // KVSCOPE_KERNELS_CUDA_ATTENTION_PREFILL_H_

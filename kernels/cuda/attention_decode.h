// File: kernels/cuda/attention_decode.h
//
// Paged attention over slot lists on the device: kernels::Attention (kernels/ops.h) with
// device pointers and a storage dtype. This is the general kernel every KV strategy uses:
// one query token per sequence (a decode step) is the fast case, but any number of query
// tokens per sequence with arbitrary positions is served exactly (the causal rule compares
// original positions, as on the CPU). Long prefills go through attention_prefill.h, which
// reads K/V once per tile of queries instead of once per query token.
//
// Work decomposition. One CTA per (query token, KV head, chunk of the group's query heads,
// split): the query heads sharing a KV head are processed together, so each K/V row is read
// once per query token. A chunk is a tile of 1, 4 or 8 heads, the smallest that holds the
// group (larger groups in chunks of 8), so an MHA model's CTA carries one head's registers. The listed cached tokens may be split into `num_splits` ranges
// (flash-decoding): each CTA keeps an online softmax over its range and a second kernel
// merges the partial results. Rows are read with 16-byte loads (64/128/256 specialised;
// other head sizes up to 256 use a scalar generic kernel), several rows in flight per warp.
// Arithmetic in float32; outputs rounded once to the storage type.
//
// Device-side errors (the inputs live on the device and are not read by the host): a
// listed slot outside [0, num_slots) is ignored (kErrorSlotOutOfRange), a query token whose
// sequence index is outside [0, num_seqs) or that sees no cached token gets an all-zero
// output row (kErrorSeqOutOfRange / kErrorNoVisibleKey); the bits are OR-ed into
// *error_flag when it is not null (kv_cache_ops.h). Host-side arguments are validated on the
// host: InvalidArgument, nothing launched.
//
// Thread safety: enqueues work on `stream` only; concurrent calls need distinct workspaces.
#ifndef KVSCOPE_KERNELS_CUDA_ATTENTION_DECODE_H_
#define KVSCOPE_KERNELS_CUDA_ATTENTION_DECODE_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/kv_cache_ops.h"
#include "kernels/ops.h"

namespace kvscope::kernels::cuda {

struct AttentionOptions {
  // Splits of the cached-token range per query token: 0 = chosen from the shape and the
  // device's multiprocessor count (split only when tokens * kv heads leave SMs idle and the
  // context is long), 1 = never split, n > 1 = exactly n (capped at kMaxAttentionSplits).
  int32_t num_splits = 0;
};

inline constexpr int32_t kMaxAttentionSplits = 64;

// The number of splits a call with these host-side arguments will use.
int32_t ChooseAttentionSplits(int64_t tokens, int32_t num_heads, int32_t num_kv_heads,
                              int32_t max_cached, const AttentionOptions& options);

// Bytes of device workspace PagedAttention needs for these arguments: float32 partial
// outputs and (max, sum) pairs when it splits, and a log-sum-exp per (token, head) when
// attn_mass is requested. 0 when neither.
size_t AttentionWorkspaceBytes(int64_t tokens, int32_t num_heads, int32_t num_kv_heads,
                               int32_t head_dim, int32_t max_cached, bool with_attn_mass,
                               const AttentionOptions& options);

// Causal scaled-dot-product attention with grouped-query heads over slot lists.
//   q:          device, [tokens, num_heads, head_dim] of pool.dtype, row stride q_stride
//   out:        device, [tokens, num_heads, head_dim] of pool.dtype, row stride out_stride
//   token_seq:  device, [tokens], index into `seqs` of each query token's sequence
//   token_pos:  device, [tokens], the query token's position: it attends the listed cached
//               tokens of its sequence whose position is <= its own
//   seqs:       DEVICE array [num_seqs] of SeqKvView whose slots/positions point to device
//               memory: [num_kv_heads][head_stride] per-head lists (head_stride > 0) or one
//               list [num_cached] shared by all KV heads (head_stride == 0)
//   max_cached: host, >= every seqs[s].num_cached (sizes the split ranges, the workspace and
//               is the attn_mass row stride, as in ops.h)
//   attn_mass:  optional device float32 [num_seqs][num_heads][max_cached]: each query token's
//               post-softmax probability on the j-th listed token of its head is ADDED at
//               [seq][head][j] (the H2O accumulated score), tokens of one sequence added in
//               ascending token order (deterministic)
//   workspace:  device, >= AttentionWorkspaceBytes(...) bytes (may be null when that is 0)
// KV head of query head h is h / (num_heads / pool.num_kv_heads); scale is usually
// 1/sqrt(head_dim). InvalidArgument (nothing launched) for bad shapes, strides, a too
// small workspace or null pointers.
absl::Status PagedAttention(const void* q, int64_t q_stride, int64_t tokens, int32_t num_heads,
                            const int32_t* token_seq, const int32_t* token_pos,
                            const CudaKvPool& pool, const SeqKvView* seqs, int32_t num_seqs,
                            int32_t max_cached, float scale, void* out, int64_t out_stride,
                            float* attn_mass, void* workspace, size_t workspace_bytes,
                            int32_t* error_flag, const AttentionOptions& options,
                            cudaStream_t stream);

// The block-table form of the plain paged case, turned into the slot lists above (one
// shared list per sequence, positions 0..len-1), so that PagedAttention serves it:
//   block_tables: device, [num_seqs][max_blocks_per_seq] block ids
//   context_lens: device, [num_seqs] cached tokens per sequence
//   slots, positions: device outputs, [num_seqs][max_context]: slot j of sequence s is
//                  block_tables[s][j / block_size] * block_size + j % block_size, position j
//   views:         device output, [num_seqs] SeqKvView pointing into slots/positions
//   token_seq, token_pos: optional device outputs [num_seqs] for a decode step (one query
//                  per sequence at position context_len - 1); null to skip
// A context length above max_context or max_blocks_per_seq * block_size (or negative) is
// clamped into range and flags kErrorSlotOutOfRange. The block ids themselves are checked
// by the attention kernel (out-of-range slots are ignored there).
absl::Status BlockTablesToSlotLists(const int32_t* block_tables, int32_t max_blocks_per_seq,
                                    const int32_t* context_lens, int32_t num_seqs,
                                    int32_t block_size, int32_t max_context, int32_t* slots,
                                    int32_t* positions, SeqKvView* views, int32_t* token_seq,
                                    int32_t* token_pos, int32_t* error_flag, cudaStream_t stream);

namespace internal {

// The same computation with the token -> sequence map given as row ranges instead:
// when token_seq is null, the query tokens of sequence s are rows
// [seq_q_start[s], seq_q_start[s + 1]) (device, [num_seqs + 1], ascending). Used by the
// prefill attention for the shapes it has no tensor-core kernel for. attn_mass requires
// token_seq.
absl::Status PagedAttentionImpl(const void* q, int64_t q_stride, int64_t tokens, int32_t num_heads,
                                const int32_t* token_seq, const int32_t* seq_q_start,
                                const int32_t* token_pos, const CudaKvPool& pool,
                                const SeqKvView* seqs, int32_t num_seqs, int32_t max_cached,
                                float scale, void* out, int64_t out_stride, float* attn_mass,
                                void* workspace, size_t workspace_bytes, int32_t* error_flag,
                                const AttentionOptions& options, cudaStream_t stream);

}  // namespace internal
}  // namespace kvscope::kernels::cuda

#endif  // KVSCOPE_KERNELS_CUDA_ATTENTION_DECODE_H_

// File: engine/cuda/gpu_infinigen_kernels.h
//
// The small device kernels that glue kernels/cuda/infinigen_ops.h into the GPU forward pass
// (engine/cuda/gpu_infinigen.h): the skew of query/key heads after RoPE (Llama family), the
// partial-query column pick, and the step of speculation that turns InfinigenTopK's output
// into attention views and gathers the selected rows from the mapped host pool. They are
// not in kernels/cuda/ because their argument layouts are those of GpuInfinigen's step
// buffers, not a general contract.
//
// Conventions: device pointers unless stated; asynchronous on `stream`; host arguments are
// checked (InvalidArgument before any launch); device array contents are preconditions.
#ifndef KVSCOPE_ENGINE_CUDA_GPU_INFINIGEN_KERNELS_H_
#define KVSCOPE_ENGINE_CUDA_GPU_INFINIGEN_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "common/dtype.h"
#include "kernels/cuda/kv_pool.h"
#include "kernels/ops.h"

namespace kvscope::engine::cuda {

// x[t, h, :] <- x[t, h, :] · A_h in place (row vector times [head_dim][head_dim]), for
// t < tokens, h < heads; x: [tokens] rows of stride `stride` elements of `dtype`, head h at
// element h * head_dim; a: float32 [heads][head_dim][head_dim] (A_h of each head of x).
// Accumulated in double in ascending input index, as InfinigenShard::SkewInPlace, then
// rounded once to `dtype`.
absl::Status SkewHeads(void* x, int64_t tokens, int64_t stride, int32_t heads, int32_t head_dim,
                       const float* a, DType dtype, cudaStream_t stream);

// out[r][h][c] = float(in[r * row_stride + h * head_stride + columns[h * partial_dim + c]])
// for r < rows, h < heads, c < partial_dim. in: `dtype`; columns: int32 [heads][partial_dim];
// out: float32 [rows][heads][partial_dim].
absl::Status PickPartialColumns(const void* in, int64_t rows, int64_t row_stride, int32_t heads,
                                int64_t head_stride, const int32_t* columns,
                                int32_t partial_dim, float* out, DType dtype,
                                cudaStream_t stream);

// One speculated layer's selection, per sparse sequence r < num_seqs and local KV head kh:
//   counts      [num_seqs]  n' (InfinigenSpeculatedCount), each <= max_count and < view_stride
//   selected    [num_seqs][kv_heads][selected_stride]  candidate indices (InfinigenTopK)
//   cand_rows   [num_seqs][kv_heads][cand_stride]      host slot of each candidate
//   cand_pos    [num_seqs][kv_heads][cand_stride]      position of each candidate
//   dst_base    [num_seqs]  first prefetch slot: selected token j goes to dst_base[r] + j
//   new_slot, new_pos [num_seqs]  the sequence's new token (slot in the device pool)
//   view_slots, view_pos  out [num_seqs][kv_heads][view_stride]: the attention lists
//                         (the n' prefetch slots with their positions, then the new token)
//   views       [*] SeqKvView whose lists already point at view_slots/view_pos rows;
//               views[view_index[r]].num_cached is set to counts[r] + 1
struct SelectionArgs {
  int32_t num_seqs = 0;
  int32_t kv_heads = 0;
  int32_t max_count = 0;  // host bound of every counts[r] (sizes the grids)
  const int32_t* counts = nullptr;
  const int32_t* selected = nullptr;
  int32_t selected_stride = 0;
  const int32_t* cand_rows = nullptr;
  const int32_t* cand_pos = nullptr;
  int64_t cand_stride = 0;
  const int32_t* dst_base = nullptr;
  const int32_t* new_slot = nullptr;
  const int32_t* new_pos = nullptr;
  int32_t* view_slots = nullptr;
  int32_t* view_pos = nullptr;
  int32_t view_stride = 0;
  kernels::SeqKvView* views = nullptr;
  const int32_t* view_index = nullptr;
};

// Writes the attention lists and num_cached of the selection (nothing is copied).
absl::Status BuildSelectionViews(const SelectionArgs& args, cudaStream_t stream);

// The zero-copy gather of the selection: for j < counts[r], the K and V rows of (cand_rows
// of the j-th selected candidate, kh) in `mapped_pool` (DEVICE addresses of mapped pinned
// host memory) go to (dst_base[r] + j, kh) in `dst_pool`. Only the selected rows cross PCIe
// (rows j >= counts[r] are skipped on the device). Both pools have the same dtype, KV heads
// and head_dim.
absl::Status GatherSelectionZeroCopy(const SelectionArgs& args,
                                     const kernels::cuda::CudaKvPool& mapped_pool,
                                     const kernels::cuda::CudaKvPool& dst_pool,
                                     cudaStream_t stream);

}  // namespace kvscope::engine::cuda

#endif  // KVSCOPE_ENGINE_CUDA_GPU_INFINIGEN_KERNELS_H_

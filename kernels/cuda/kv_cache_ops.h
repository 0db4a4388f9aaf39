// File: kernels/cuda/kv_cache_ops.h
//
// Data movement on the paged KV pool on the device: writing new keys/values by slot mapping,
// copying blocks inside the pool (copy-on-write) and swapping blocks between the pool and
// pinned host memory. Every op here is a pure copy: results are bit exact.
//
// Pool layout (the same as kernels/ops.h KvPoolView, the CPU reference): per layer, K and V
// each live in pool[num_blocks][num_kv_heads][block_size][head_dim] of `dtype`. Slot s is
// block s / block_size, offset s % block_size. One block of K (or V) is the contiguous range
// of num_kv_heads * block_size * head_dim elements starting at block * that many.
//
// Device-side index errors. Slot lists and block pairs that live in device memory cannot be
// validated on the host without a synchronisation, so the kernels validate each index as
// they go: an out-of-range entry is skipped (nothing is written for it, never out of bounds)
// and, when `error_flag` is not null, the bits kErrorSlotOutOfRange / kErrorBlockOutOfRange
// are OR-ed into *error_flag (a device int32 the caller zeroes beforehand and reads after
// the stream reaches it). Shapes and host-side arguments are validated on the host:
// InvalidArgument, nothing launched.
//
// Thread safety: the functions only enqueue work on `stream`; concurrent calls on disjoint
// buffers are safe. Ordering with other work is the stream's.
#ifndef KVSCOPE_KERNELS_CUDA_KV_CACHE_OPS_H_
#define KVSCOPE_KERNELS_CUDA_KV_CACHE_OPS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "common/dtype.h"
#include "kernels/cuda/kv_pool.h"

namespace kvscope::kernels::cuda {

// Bits OR-ed into a device error flag by the kernels of this library.
inline constexpr int32_t kErrorSlotOutOfRange = 1;   // a slot outside [0, num_slots) (or < -1)
inline constexpr int32_t kErrorNoVisibleKey = 2;     // a query sees no cached token
inline constexpr int32_t kErrorSeqOutOfRange = 4;    // a token's sequence index is invalid
inline constexpr int32_t kErrorBlockOutOfRange = 8;  // a block pair outside [0, num_blocks)

// Pools are CudaKvPool (kv_pool.h): k and v 16-byte aligned for the vectorised paths
// (cudaMalloc memory is; other alignments take slower paths).

// Copies new keys/values into their slots (kernels::WriteKv on the device).
//   k, v:   device, [tokens, num_kv_heads, head_dim] of pool.dtype, row stride
//           `token_stride` elements (>= num_kv_heads * head_dim)
//   slots:  device, [tokens]; -1 = skip (padding); other values outside [0, num_slots) are
//           skipped and flag kErrorSlotOutOfRange
//   error_flag: device int32 or null (see the file comment)
// Two tokens mapped to the same slot: one of them wins (unspecified which).
absl::Status WriteKv(const CudaKvPool& pool, const void* k, const void* v, int64_t token_stride,
                     const int32_t* slots, int64_t tokens, int32_t* error_flag,
                     cudaStream_t stream);

// Copies whole blocks inside the pool, K and V: for each i < num_pairs, block
// pairs[2*i+1] := block pairs[2*i] (copy-on-write of a shared prefix block).
//   pairs: device, [num_pairs][2] = (src_block, dst_block); a pair with an index outside
//          [0, num_blocks) is skipped and flags kErrorBlockOutOfRange.
// A block that is the destination of one pair must not be the source or destination of
// another pair of the same call (the copies run concurrently).
absl::Status CopyBlocks(const CudaKvPool& pool, const int32_t* pairs, int64_t num_pairs,
                        int32_t* error_flag, cudaStream_t stream);

enum class SwapDirection { kDeviceToHost, kHostToDevice };

// Swaps whole blocks between the device pool and a host pool of the same block shape and
// dtype (swap-out / swap-in of preempted sequences), K and V.
//   host_k, host_v: host memory of [host_num_blocks][block_elems] elements; pinned
//                   (cudaHostAlloc) for the copies to be asynchronous
//   pairs: HOST memory, [num_pairs][2] = (src_block, dst_block), the source in the pool the
//          data comes from (the device pool for kDeviceToHost). Validated on the host:
//          InvalidArgument names the first bad pair and nothing is enqueued.
// Consecutive pairs whose source and destination both advance by one are merged into one
// cudaMemcpyAsync per K/V, so a run of contiguous blocks costs two copies.
absl::Status SwapBlocks(const CudaKvPool& pool, void* host_k, void* host_v, int64_t host_num_blocks,
                        const int32_t* pairs, int64_t num_pairs, SwapDirection direction,
                        cudaStream_t stream);

}  // namespace kvscope::kernels::cuda

#endif  // KVSCOPE_KERNELS_CUDA_KV_CACHE_OPS_H_

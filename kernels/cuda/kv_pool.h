// File: kernels/cuda/kv_pool.h
//
// A typed K/V pool in the block layout of kernels/ops.h (KvPoolView), as every CUDA kernel
// over the KV cache addresses it (kv_cache_ops.h, attention_*.h, the strategy kernels):
//   k, v: [num_blocks][num_kv_heads][block_size][head_dim] elements of `dtype`;
//   row (slot s, KV head h) starts at element ((s / block_size) * num_kv_heads + h)
//   * block_size * head_dim + (s % block_size) * head_dim.
// The pointers are device pointers, or (where a function says so) host pointers. Not owning.
// Host-only header.
#ifndef KVSCOPE_KERNELS_CUDA_KV_POOL_H_
#define KVSCOPE_KERNELS_CUDA_KV_POOL_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/dtype.h"

namespace kvscope::kernels::cuda {

struct CudaKvPool {
  void* k = nullptr;           // [num_blocks, num_kv_heads, block_size, head_dim]
  void* v = nullptr;           // same shape as k
  int64_t num_blocks = 0;
  int32_t num_kv_heads = 0;
  int32_t block_size = 0;
  int32_t head_dim = 0;
  DType dtype = DType::kF32;   // element type of k and v

  int64_t num_slots() const { return num_blocks * block_size; }
  // Elements in one block of K (or V).
  int64_t block_elems() const {
    return static_cast<int64_t>(num_kv_heads) * block_size * head_dim;
  }
  // Element offset of the row (slot, head).
  int64_t RowOffset(int64_t slot, int32_t head) const {
    return ((slot / block_size) * num_kv_heads + head) * block_size * head_dim +
           (slot % block_size) * head_dim;
  }
};

// InvalidArgument naming `what` unless k and v are set and the geometry is positive with
// head_dim in [1, 256] (the CUDA kernels' limit, dispatch.h).
inline absl::Status CheckCudaKvPool(const CudaKvPool& pool, const char* what) {
  if (pool.k == nullptr || pool.v == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": null K or V pointer"));
  }
  if (pool.num_blocks < 1 || pool.num_kv_heads < 1 || pool.block_size < 1 ||
      pool.head_dim < 1 || pool.head_dim > 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": bad pool geometry (num_blocks ", pool.num_blocks, ", num_kv_heads ",
        pool.num_kv_heads, ", block_size ", pool.block_size, ", head_dim ", pool.head_dim,
        "; head_dim must be in [1, 256])"));
  }
  switch (pool.dtype) {
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
      return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(what, ": unsupported element type ", static_cast<int>(pool.dtype)));
}

}  // namespace kvscope::kernels::cuda

#endif  // KVSCOPE_KERNELS_CUDA_KV_POOL_H_

// File: kernels/cuda/kv_cache_ops.cu
//
// KV-cache data movement (kv_cache_ops.h). The kernels move raw words: the element type only
// fixes the element size, so they are instantiated per word width (16, 8, 4 or 2 bytes, the
// widest that divides every row and address involved), never per dtype.
#include "kernels/cuda/kv_cache_ops.h"

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/dispatch.h"

namespace kvscope::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// Widest word (16, 8, 4, 2 bytes) dividing every value in `values` (byte counts/addresses).
template <typename... Ts>
int WordBytes(Ts... values) {
  uint64_t all = 0;
  ((all |= static_cast<uint64_t>(values)), ...);
  for (int w : {16, 8, 4}) {
    if (all % w == 0) return w;
  }
  return 2;
}

template <int kBytes>
struct Word;
template <>
struct Word<16> {
  using type = uint4;
};
template <>
struct Word<8> {
  using type = uint2;
};
template <>
struct Word<4> {
  using type = uint32_t;
};
template <>
struct Word<2> {
  using type = uint16_t;
};

template <typename F>
absl::Status DispatchWord(int bytes, F&& f) {
  switch (bytes) {
    case 16:
      return f(Word<16>{});
    case 8:
      return f(Word<8>{});
    case 4:
      return f(Word<4>{});
    default:
      return f(Word<2>{});
  }
}

// One thread per word of one (token, kv head) row; grid-stride over tokens * heads * words.
// Sizes in words of W. Rows go to ((slot / bs) * heads + h) * bs + slot % bs.
template <typename W>
__global__ void WriteKvKernel(W* __restrict__ pool_k, W* __restrict__ pool_v,
                              const W* __restrict__ k, const W* __restrict__ v,
                              int64_t token_stride_w, const int32_t* __restrict__ slots,
                              int64_t tokens, int32_t heads, int32_t block_size, int32_t row_w,
                              int64_t num_slots, int32_t* error_flag) {
  const int64_t per_token = static_cast<int64_t>(heads) * row_w;
  const int64_t total = tokens * per_token;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / per_token;
    const int64_t rem = i - t * per_token;
    const int32_t h = static_cast<int32_t>(rem / row_w);
    const int32_t w = static_cast<int32_t>(rem - static_cast<int64_t>(h) * row_w);
    const int64_t slot = slots[t];
    if (slot < 0 || slot >= num_slots) {
      if (slot != -1 && w == 0 && h == 0 && error_flag != nullptr) {
        atomicOr(error_flag, kErrorSlotOutOfRange);
      }
      continue;
    }
    const int64_t dst = (((slot / block_size) * heads + h) * block_size + slot % block_size) *
                            static_cast<int64_t>(row_w) +
                        w;
    const int64_t src = t * token_stride_w + static_cast<int64_t>(h) * row_w + w;
    pool_k[dst] = k[src];
    pool_v[dst] = v[src];
  }
}

// blockIdx.y: pair (grid-stride over pairs); x: words of the block.
template <typename W>
__global__ void CopyBlocksKernel(W* __restrict__ pool_k, W* __restrict__ pool_v,
                                 const int32_t* __restrict__ pairs, int64_t num_pairs,
                                 int64_t num_blocks, int64_t block_w, int32_t* error_flag) {
  for (int64_t p = blockIdx.y; p < num_pairs; p += gridDim.y) {
    const int64_t src = pairs[2 * p];
    const int64_t dst = pairs[2 * p + 1];
    if (src < 0 || src >= num_blocks || dst < 0 || dst >= num_blocks) {
      if (blockIdx.x == 0 && threadIdx.x == 0 && error_flag != nullptr) {
        atomicOr(error_flag, kErrorBlockOutOfRange);
      }
      continue;
    }
    for (int64_t w = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; w < block_w;
         w += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      pool_k[dst * block_w + w] = pool_k[src * block_w + w];
      pool_v[dst * block_w + w] = pool_v[src * block_w + w];
    }
  }
}

}  // namespace

absl::Status WriteKv(const CudaKvPool& pool, const void* k, const void* v, int64_t token_stride,
                     const int32_t* slots, int64_t tokens, int32_t* error_flag,
                     cudaStream_t stream) {
  if (tokens < 0) return absl::InvalidArgumentError("WriteKv: negative token count");
  if (tokens == 0) return absl::OkStatus();
  if (absl::Status st = CheckCudaKvPool(pool, "WriteKv"); !st.ok()) return st;
  if (k == nullptr || v == nullptr || slots == nullptr) {
    return absl::InvalidArgumentError("WriteKv: null k, v or slots");
  }
  const int64_t row = static_cast<int64_t>(pool.num_kv_heads) * pool.head_dim;
  if (token_stride < row) {
    return absl::InvalidArgumentError(
        absl::StrCat("WriteKv: token_stride ", token_stride, " < num_kv_heads * head_dim = ", row));
  }
  const int64_t esize = static_cast<int64_t>(DTypeSize(pool.dtype));
  // (Not esize itself: OR-ing the element size in would cap the word at the element size
  // and disable the 8/16-byte paths; every value here is already a multiple of it.)
  const int word =
      WordBytes(pool.head_dim * esize, token_stride * esize, reinterpret_cast<uintptr_t>(k),
                reinterpret_cast<uintptr_t>(v), reinterpret_cast<uintptr_t>(pool.k),
                reinterpret_cast<uintptr_t>(pool.v));
  return DispatchWord(word, [&](auto tag) -> absl::Status {
    using W = typename decltype(tag)::type;
    constexpr int64_t kW = sizeof(W);
    const int32_t row_w = static_cast<int32_t>(pool.head_dim * esize / kW);
    const int64_t total = tokens * pool.num_kv_heads * row_w;
    WriteKvKernel<W><<<GridFor(total, kThreads), kThreads, 0, stream>>>(
        static_cast<W*>(pool.k), static_cast<W*>(pool.v), static_cast<const W*>(k),
        static_cast<const W*>(v), token_stride * esize / kW, slots, tokens, pool.num_kv_heads,
        pool.block_size, row_w, pool.num_slots(), error_flag);
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return absl::OkStatus();
  });
}

absl::Status CopyBlocks(const CudaKvPool& pool, const int32_t* pairs, int64_t num_pairs,
                        int32_t* error_flag, cudaStream_t stream) {
  if (num_pairs < 0) return absl::InvalidArgumentError("CopyBlocks: negative pair count");
  if (num_pairs == 0) return absl::OkStatus();
  if (absl::Status st = CheckCudaKvPool(pool, "CopyBlocks"); !st.ok()) return st;
  if (pairs == nullptr) return absl::InvalidArgumentError("CopyBlocks: null pairs");
  const int64_t esize = static_cast<int64_t>(DTypeSize(pool.dtype));
  const int64_t block_bytes = pool.block_elems() * esize;
  const int word = WordBytes(block_bytes, reinterpret_cast<uintptr_t>(pool.k),
                             reinterpret_cast<uintptr_t>(pool.v));
  return DispatchWord(word, [&](auto tag) -> absl::Status {
    using W = typename decltype(tag)::type;
    const int64_t block_w = block_bytes / static_cast<int64_t>(sizeof(W));
    // Enough CTAs per pair to cover a block in one pass (up to 16), pairs on y.
    const unsigned x = GridFor(block_w, kThreads, 16);
    const unsigned y = static_cast<unsigned>(num_pairs < 65535 ? num_pairs : 65535);
    CopyBlocksKernel<W><<<dim3(x, y), kThreads, 0, stream>>>(
        static_cast<W*>(pool.k), static_cast<W*>(pool.v), pairs, num_pairs, pool.num_blocks,
        block_w, error_flag);
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return absl::OkStatus();
  });
}

absl::Status SwapBlocks(const CudaKvPool& pool, void* host_k, void* host_v, int64_t host_num_blocks,
                        const int32_t* pairs, int64_t num_pairs, SwapDirection direction,
                        cudaStream_t stream) {
  if (num_pairs < 0) return absl::InvalidArgumentError("SwapBlocks: negative pair count");
  if (num_pairs == 0) return absl::OkStatus();
  if (absl::Status st = CheckCudaKvPool(pool, "SwapBlocks"); !st.ok()) return st;
  if (host_k == nullptr || host_v == nullptr || pairs == nullptr || host_num_blocks <= 0) {
    return absl::InvalidArgumentError("SwapBlocks: null host pool or pairs, or empty host pool");
  }
  const bool to_host = direction == SwapDirection::kDeviceToHost;
  const int64_t src_blocks = to_host ? pool.num_blocks : host_num_blocks;
  const int64_t dst_blocks = to_host ? host_num_blocks : pool.num_blocks;
  for (int64_t i = 0; i < num_pairs; ++i) {
    const int64_t s = pairs[2 * i], d = pairs[2 * i + 1];
    if (s < 0 || s >= src_blocks || d < 0 || d >= dst_blocks) {
      return absl::InvalidArgumentError(
          absl::StrCat("SwapBlocks: pair ", i, " (", s, " -> ", d, ") is outside the source [0, ",
                       src_blocks, ") or destination [0, ", dst_blocks, ") pool"));
    }
  }
  const size_t block_bytes = static_cast<size_t>(pool.block_elems()) * DTypeSize(pool.dtype);
  char* src_k = static_cast<char*>(to_host ? pool.k : host_k);
  char* src_v = static_cast<char*>(to_host ? pool.v : host_v);
  char* dst_k = static_cast<char*>(to_host ? host_k : pool.k);
  char* dst_v = static_cast<char*>(to_host ? host_v : pool.v);
  const cudaMemcpyKind kind = to_host ? cudaMemcpyDeviceToHost : cudaMemcpyHostToDevice;
  int64_t i = 0;
  while (i < num_pairs) {
    const int64_t s = pairs[2 * i], d = pairs[2 * i + 1];
    int64_t run = 1;
    while (i + run < num_pairs && pairs[2 * (i + run)] == s + run &&
           pairs[2 * (i + run) + 1] == d + run) {
      ++run;
    }
    const size_t bytes = block_bytes * static_cast<size_t>(run);
    KVSCOPE_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(dst_k + d * block_bytes, src_k + s * block_bytes, bytes, kind, stream));
    KVSCOPE_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(dst_v + d * block_bytes, src_v + s * block_bytes, bytes, kind, stream));
    i += run;
  }
  return absl::OkStatus();
}

}  // namespace kvscope::kernels::cuda

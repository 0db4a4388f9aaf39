// Entry moves of the fixed-budget strategies (evicting_ops.h).
#include "kernels/cuda/evicting_ops.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"

namespace kvscope::kernels::cuda {
namespace {

constexpr int kMoveThreads = 128;
constexpr int kChunkBytes = 24 * 1024;  // shared staging of one compaction chunk
constexpr int kMaxChunkEntries = 64;

// Element offset of the row (slot, head) in a pool of this geometry.
__device__ __forceinline__ int64_t RowAt(int64_t slot, int32_t head, int32_t kv_heads,
                                         int32_t block_size, int32_t head_dim) {
  return ((slot / block_size) * kv_heads + head) * static_cast<int64_t>(block_size) * head_dim +
         (slot % block_size) * static_cast<int64_t>(head_dim);
}

// One block per (i, h). U is an unsigned integer of the element size: rows are copied
// bit for bit.
template <typename U>
__global__ void ReplaceVictimsKernel(U* k, U* v, int32_t kv_heads, int32_t block_size,
                                     int32_t head_dim, EntryLists e, const int32_t* view_n,
                                     const int32_t* victims) {
  const int i = blockIdx.x / e.num_kv_heads;
  const int h = blockIdx.x % e.num_kv_heads;
  const int32_t victim = victims[blockIdx.x];
  const int32_t incoming = view_n[i] - 1;
  if (victim < 0 || victim == incoming) return;
  const int64_t base = e.head_offset[i] + static_cast<int64_t>(h) * e.head_stride[i];
  const int64_t src = RowAt(e.slots[base + incoming], h, kv_heads, block_size, head_dim);
  const int64_t dst = RowAt(e.slots[base + victim], h, kv_heads, block_size, head_dim);
  for (int c = threadIdx.x; c < head_dim; c += blockDim.x) {
    k[dst + c] = k[src + c];
    v[dst + c] = v[src + c];
  }
  if (threadIdx.x == 0) {
    e.positions[base + victim] = e.positions[base + incoming];
    if (e.scores != nullptr) e.scores[base + victim] = e.scores[base + incoming];
  }
}

template <typename U>
__global__ void CompactKeptKernel(U* k, U* v, int32_t kv_heads, int32_t block_size,
                                  int32_t head_dim, EntryLists e, const int32_t* keep,
                                  int32_t keep_stride, const int32_t* keep_count, int chunk) {
  __shared__ __align__(16) unsigned char rows_raw[kChunkBytes];
  __shared__ int32_t chunk_pos[kMaxChunkEntries];
  __shared__ double chunk_score[kMaxChunkEntries];
  U* rows = reinterpret_cast<U*>(rows_raw);
  const int i = blockIdx.x / e.num_kv_heads;
  const int h = blockIdx.x % e.num_kv_heads;
  const int32_t count = keep_count[blockIdx.x];
  if (count <= 0) return;
  const int32_t* kp = keep + static_cast<int64_t>(blockIdx.x) * keep_stride;
  const int64_t base = e.head_offset[i] + static_cast<int64_t>(h) * e.head_stride[i];
  const int pair = 2 * head_dim;
  for (int j0 = 0; j0 < count; j0 += chunk) {
    const int c = min(chunk, count - j0);
    // Read every source of the chunk ...
    for (int x = threadIdx.x; x < c * pair; x += blockDim.x) {
      const int r = x / pair, w = x % pair;
      const int64_t row = RowAt(e.slots[base + kp[j0 + r]], h, kv_heads, block_size, head_dim);
      rows[x] = w < head_dim ? k[row + w] : v[row + w - head_dim];
    }
    for (int r = threadIdx.x; r < c; r += blockDim.x) {
      chunk_pos[r] = e.positions[base + kp[j0 + r]];
      if (e.scores != nullptr) chunk_score[r] = e.scores[base + kp[j0 + r]];
    }
    __syncthreads();
    // ... then write the chunk's destinations (entries j0..j0+c-1).
    for (int x = threadIdx.x; x < c * pair; x += blockDim.x) {
      const int r = x / pair, w = x % pair;
      if (kp[j0 + r] == j0 + r) continue;
      const int64_t row = RowAt(e.slots[base + j0 + r], h, kv_heads, block_size, head_dim);
      if (w < head_dim) {
        k[row + w] = rows[x];
      } else {
        v[row + w - head_dim] = rows[x];
      }
    }
    for (int r = threadIdx.x; r < c; r += blockDim.x) {
      e.positions[base + j0 + r] = chunk_pos[r];
      if (e.scores != nullptr) e.scores[base + j0 + r] = chunk_score[r];
    }
    __syncthreads();
  }
}

}  // namespace

absl::Status ValidateEntryLists(const EntryLists& entries, bool need_scores, const char* what) {
  if (entries.positions == nullptr || entries.slots == nullptr ||
      entries.head_offset == nullptr || entries.head_stride == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": null positions, slots, head_offset or head_stride"));
  }
  if (need_scores && entries.scores == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": null scores"));
  }
  if (entries.num_seqs < 0 || entries.num_kv_heads < 1) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": num_seqs ", entries.num_seqs,
                                                   ", num_kv_heads ", entries.num_kv_heads));
  }
  if (static_cast<int64_t>(entries.num_seqs) * entries.num_kv_heads > (int64_t{1} << 31) - 1) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": too many (sequence, head) pairs"));
  }
  return absl::OkStatus();
}

namespace {

absl::Status CheckPoolMatches(const CudaKvPool& pool, const EntryLists& entries,
                              const char* what) {
  if (absl::Status st = CheckCudaKvPool(pool, what); !st.ok()) return st;
  if (pool.num_kv_heads != entries.num_kv_heads) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": pool has ", pool.num_kv_heads,
                                                   " KV heads, entry lists ",
                                                   entries.num_kv_heads));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ReplaceVictims(const CudaKvPool& pool, const EntryLists& entries,
                            const int32_t* view_n, const int32_t* victims, cudaStream_t stream) {
  if (absl::Status st = ValidateEntryLists(entries, false, "ReplaceVictims"); !st.ok()) return st;
  if (absl::Status st = CheckPoolMatches(pool, entries, "ReplaceVictims"); !st.ok()) return st;
  if (view_n == nullptr || victims == nullptr) {
    return absl::InvalidArgumentError("ReplaceVictims: null view_n or victims");
  }
  const int blocks = entries.num_seqs * entries.num_kv_heads;
  if (blocks == 0) return absl::OkStatus();
  if (DTypeSize(pool.dtype) == 4) {
    ReplaceVictimsKernel<uint32_t><<<blocks, kMoveThreads, 0, stream>>>(
        static_cast<uint32_t*>(pool.k), static_cast<uint32_t*>(pool.v), pool.num_kv_heads,
        pool.block_size, pool.head_dim, entries, view_n, victims);
  } else {
    ReplaceVictimsKernel<uint16_t><<<blocks, kMoveThreads, 0, stream>>>(
        static_cast<uint16_t*>(pool.k), static_cast<uint16_t*>(pool.v), pool.num_kv_heads,
        pool.block_size, pool.head_dim, entries, view_n, victims);
  }
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status CompactKept(const CudaKvPool& pool, const EntryLists& entries, const int32_t* keep,
                         int32_t keep_stride, const int32_t* keep_count, cudaStream_t stream) {
  if (absl::Status st = ValidateEntryLists(entries, false, "CompactKept"); !st.ok()) return st;
  if (absl::Status st = CheckPoolMatches(pool, entries, "CompactKept"); !st.ok()) return st;
  if (keep == nullptr || keep_count == nullptr || keep_stride < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("CompactKept: null keep or keep_count, or keep_stride ", keep_stride));
  }
  const int blocks = entries.num_seqs * entries.num_kv_heads;
  if (blocks == 0) return absl::OkStatus();
  const int pair_bytes = 2 * pool.head_dim * static_cast<int>(DTypeSize(pool.dtype));
  const int chunk = std::max(1, std::min(kMaxChunkEntries, kChunkBytes / pair_bytes));
  if (DTypeSize(pool.dtype) == 4) {
    CompactKeptKernel<uint32_t><<<blocks, kMoveThreads, 0, stream>>>(
        static_cast<uint32_t*>(pool.k), static_cast<uint32_t*>(pool.v), pool.num_kv_heads,
        pool.block_size, pool.head_dim, entries, keep, keep_stride, keep_count, chunk);
  } else {
    CompactKeptKernel<uint16_t><<<blocks, kMoveThreads, 0, stream>>>(
        static_cast<uint16_t*>(pool.k), static_cast<uint16_t*>(pool.v), pool.num_kv_heads,
        pool.block_size, pool.head_dim, entries, keep, keep_stride, keep_count, chunk);
  }
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace kvscope::kernels::cuda

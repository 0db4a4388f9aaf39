// InfiniGen partial keys, speculation and gather (infinigen_ops.h).
#include "kernels/cuda/infinigen_ops.h"

#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <initializer_list>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/dispatch.h"
#include "kernels/cuda/select_util.cuh"

namespace kvscope::kernels::cuda {
namespace {

constexpr int kThreads = 256;

__host__ __device__ __forceinline__ int64_t RowAt(int64_t slot, int32_t head, int32_t kv_heads,
                                                  int32_t block_size, int32_t head_dim) {
  return ((slot / block_size) * kv_heads + head) * static_cast<int64_t>(block_size) * head_dim +
         (slot % block_size) * static_cast<int64_t>(head_dim);
}

// ---- partial keys -------------------------------------------------------------------------

template <typename U>
__global__ void WritePartialKeysKernel(const U* k, int32_t kv_heads, int32_t block_size,
                                       int32_t head_dim, const int32_t* slots, int32_t num_new,
                                       const int32_t* columns, int32_t partial_dim,
                                       const int32_t* dst_rows, U* out) {
  const int64_t work = static_cast<int64_t>(num_new) * kv_heads * partial_dim;
  for (int64_t x = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; x < work;
       x += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t t = static_cast<int32_t>(x / (static_cast<int64_t>(kv_heads) * partial_dim));
    const int32_t h = static_cast<int32_t>((x / partial_dim) % kv_heads);
    const int32_t c = static_cast<int32_t>(x % partial_dim);
    const int32_t slot = slots[t];
    const int32_t row = dst_rows != nullptr ? dst_rows[t] : slot;
    if (slot < 0 || row < 0) continue;
    out[(static_cast<int64_t>(row) * kv_heads + h) * partial_dim + c] =
        k[RowAt(slot, h, kv_heads, block_size, head_dim) + columns[h * partial_dim + c]];
  }
}

// ---- scores ---------------------------------------------------------------------------------

// blockIdx.x: (r, q); blockIdx.y (grid-stride) with threadIdx.x: candidate j.
template <typename T>
__global__ void PartialScoresKernel(const float* partial_q, const T* partial_keys,
                                    int32_t kv_heads, int32_t partial_dim,
                                    const int32_t* cand_rows, int64_t cand_stride,
                                    const int32_t* num_cands, int32_t num_heads,
                                    double* scores) {
  extern __shared__ float q_shared[];
  const int r = blockIdx.x / num_heads;
  const int q = blockIdx.x % num_heads;
  const int kh = q / (num_heads / kv_heads);
  for (int c = threadIdx.x; c < partial_dim; c += blockDim.x) {
    q_shared[c] = partial_q[static_cast<int64_t>(blockIdx.x) * partial_dim + c];
  }
  __syncthreads();
  const int32_t n = num_cands[r];
  const int32_t* cand = cand_rows + (static_cast<int64_t>(r) * kv_heads + kh) * cand_stride;
  double* out = scores + static_cast<int64_t>(blockIdx.x) * cand_stride;
  for (int j = blockIdx.y * blockDim.x + threadIdx.x; j < n; j += gridDim.y * blockDim.x) {
    const T* key = partial_keys + (static_cast<int64_t>(cand[j]) * kv_heads + kh) * partial_dim;
    double dot = 0.0;
    for (int c = 0; c < partial_dim; ++c) {
      dot = __dadd_rn(dot, __dmul_rn(static_cast<double>(q_shared[c]),
                                     static_cast<double>(Load(key[c]))));
    }
    out[j] = dot;
  }
}

// ---- count ----------------------------------------------------------------------------------

__device__ double BlockMax(double v, double* warp_max) {
  for (int off = 16; off > 0; off >>= 1) v = fmax(v, __shfl_down_sync(0xffffffffu, v, off));
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = v;
  __syncthreads();
  double m = warp_max[0];
  for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) m = fmax(m, warp_max[w]);
  __syncthreads();  // warp_max is reused by the next call
  return m;
}

// One block per sequence r.
__global__ void SpeculatedCountKernel(const double* scores, int64_t score_stride,
                                      const int32_t* num_cands, int32_t num_heads, double alpha,
                                      const int32_t* max_num_kv, int32_t* counts) {
  __shared__ double warp_max[kThreads / 32];
  const int r = blockIdx.x;
  const int32_t n = num_cands[r];
  if (n <= 0) {
    if (threadIdx.x == 0) counts[r] = 0;
    return;
  }
  long long total = 0;
  for (int q = 0; q < num_heads; ++q) {
    const double* row = scores + (static_cast<int64_t>(r) * num_heads + q) * score_stride;
    double local = -INFINITY;
    for (int j = threadIdx.x; j < n; j += blockDim.x) local = fmax(local, row[j]);
    const double thr = BlockMax(local, warp_max) - alpha;
    total += BlockCount(n, [&](int j) { return row[j] > thr; });
  }
  if (threadIdx.x == 0) {
    long long c = total / num_heads;
    if (c > max_num_kv[r]) c = max_num_kv[r];
    if (c > n) c = n;
    counts[r] = static_cast<int32_t>(c);
  }
}

// ---- top-k ----------------------------------------------------------------------------------

// One block per (r, kh).
__global__ void TopKKernel(const double* scores, int64_t score_stride, const int32_t* num_cands,
                           const int32_t* counts, int32_t num_heads, int32_t kv_heads,
                           int32_t* selected, int32_t selected_stride) {
  __shared__ SelectScratch scratch;
  const int r = blockIdx.x / kv_heads;
  const int kh = blockIdx.x % kv_heads;
  const int group = num_heads / kv_heads;
  const int32_t n = num_cands[r];
  const int32_t k = min(counts[r], n);
  if (k <= 0) return;
  const double* rows = scores + (static_cast<int64_t>(r) * num_heads + kh * group) * score_stride;
  const auto key_at = [&](int j, Key96* key) {
    double agg = -INFINITY;
    for (int q = 0; q < group; ++q) {
      const double s = rows[q * score_stride + j];
      agg = agg < s ? s : agg;  // std::max(agg, s)
    }
    *key = Key96{OrderedKey(agg), ~static_cast<unsigned>(j)};
    return true;
  };
  const Key96 threshold = BlockSelectKthLargest(n, k, key_at, scratch);
  BlockCompactAscending(
      n,
      [&](int j) {
        Key96 key;
        key_at(j, &key);
        return KeyGreaterEq(key, threshold);
      },
      selected + static_cast<int64_t>(blockIdx.x) * selected_stride, selected_stride, scratch);
}

// ---- gather ---------------------------------------------------------------------------------

// Unit of copying: U-sized words, `units` per K (or V) row.
template <typename U>
__global__ void ScatterPackedKernel(const unsigned char* packed, int64_t num_rows,
                                    int64_t header_bytes, int32_t units, U* dst_k, U* dst_v,
                                    int32_t kv_heads, int32_t block_size, int32_t head_dim,
                                    int32_t elems_per_unit) {
  const GatherRow* rows = reinterpret_cast<const GatherRow*>(packed);
  const U* data = reinterpret_cast<const U*>(packed + header_bytes);
  const int64_t work = num_rows * 2 * units;
  for (int64_t x = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; x < work;
       x += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = x / (2 * units);
    const int32_t w = static_cast<int32_t>(x % (2 * units));
    const GatherRow row = rows[r];
    U* dst = w < units ? dst_k : dst_v;
    dst[RowAt(row.dst_slot, row.head, kv_heads, block_size, head_dim) / elems_per_unit +
        w % units] = data[x];
  }
}

template <typename U>
__global__ void ZeroCopyGatherKernel(const U* src_k, const U* src_v, int32_t src_block_size,
                                     const GatherRow* rows, int64_t num_rows, int32_t units,
                                     U* dst_k, U* dst_v, int32_t kv_heads, int32_t dst_block_size,
                                     int32_t head_dim, int32_t elems_per_unit) {
  const int64_t work = num_rows * 2 * units;
  for (int64_t x = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; x < work;
       x += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = x / (2 * units);
    const int32_t w = static_cast<int32_t>(x % (2 * units));
    const GatherRow row = rows[r];
    const bool is_k = w < units;
    const int32_t u = w % units;
    const U* src = is_k ? src_k : src_v;
    U* dst = is_k ? dst_k : dst_v;
    dst[RowAt(row.dst_slot, row.head, kv_heads, dst_block_size, head_dim) / elems_per_unit + u] =
        src[RowAt(row.src_slot, row.head, kv_heads, src_block_size, head_dim) / elems_per_unit +
            u];
  }
}

int64_t HeaderBytes(int64_t num_rows) {
  return (num_rows * static_cast<int64_t>(sizeof(GatherRow)) + 15) / 16 * 16;
}

// The widest copy unit (16, 4 or 2 bytes, never below the element size) that divides a row
// and every base pointer; the element size when none does.
int UnitBytes(int64_t row_bytes, int elem, std::initializer_list<const void*> bases) {
  for (int unit : {16, 4, 2}) {
    if (unit < elem || row_bytes % unit != 0) continue;
    bool aligned = true;
    for (const void* p : bases) aligned = aligned && reinterpret_cast<uintptr_t>(p) % unit == 0;
    if (aligned) return unit;
  }
  return elem;
}

absl::Status CheckGatherPools(const CudaKvPool& src, const CudaKvPool& dst, const char* what) {
  if (absl::Status st = CheckCudaKvPool(src, what); !st.ok()) return st;
  if (absl::Status st = CheckCudaKvPool(dst, what); !st.ok()) return st;
  if (src.dtype != dst.dtype || src.head_dim != dst.head_dim ||
      src.num_kv_heads != dst.num_kv_heads) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": source and destination pools differ in element type, head_dim or KV heads"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WritePartialKeys(const CudaKvPool& pool, const int32_t* slots, int32_t num_new,
                              const int32_t* columns, int32_t partial_dim, void* partial_keys,
                              cudaStream_t stream, const int32_t* dst_rows) {
  if (absl::Status st = CheckCudaKvPool(pool, "WritePartialKeys"); !st.ok()) return st;
  if (slots == nullptr || columns == nullptr || partial_keys == nullptr || num_new < 0) {
    return absl::InvalidArgumentError(
        "WritePartialKeys: null slots, columns or partial_keys, or num_new < 0");
  }
  if (partial_dim < 1 || partial_dim > pool.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat("WritePartialKeys: partial_dim ", partial_dim,
                                                   " outside [1, head_dim ", pool.head_dim, "]"));
  }
  const int64_t work = static_cast<int64_t>(num_new) * pool.num_kv_heads * partial_dim;
  if (work == 0) return absl::OkStatus();
  if (DTypeSize(pool.dtype) == 4) {
    WritePartialKeysKernel<uint32_t><<<GridFor(work, kThreads), kThreads, 0, stream>>>(
        static_cast<const uint32_t*>(pool.k), pool.num_kv_heads, pool.block_size, pool.head_dim,
        slots, num_new, columns, partial_dim, dst_rows, static_cast<uint32_t*>(partial_keys));
  } else {
    WritePartialKeysKernel<uint16_t><<<GridFor(work, kThreads), kThreads, 0, stream>>>(
        static_cast<const uint16_t*>(pool.k), pool.num_kv_heads, pool.block_size, pool.head_dim,
        slots, num_new, columns, partial_dim, dst_rows, static_cast<uint16_t*>(partial_keys));
  }
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status InfinigenPartialScores(const float* partial_q, const void* partial_keys,
                                    DType dtype, int32_t num_kv_heads, int32_t partial_dim,
                                    const int32_t* cand_rows, int64_t cand_stride,
                                    const int32_t* num_cands, int32_t num_seqs,
                                    int32_t num_heads, double* scores, cudaStream_t stream) {
  if (partial_q == nullptr || partial_keys == nullptr || cand_rows == nullptr ||
      num_cands == nullptr || scores == nullptr) {
    return absl::InvalidArgumentError(
        "InfinigenPartialScores: null partial_q, partial_keys, cand_rows, num_cands or scores");
  }
  if (num_seqs < 0 || num_kv_heads < 1 || num_heads < 1 || num_heads % num_kv_heads != 0 ||
      partial_dim < 1 || partial_dim > kMaxHeadDim || cand_stride < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "InfinigenPartialScores: num_seqs ", num_seqs, ", num_heads ", num_heads,
        ", num_kv_heads ", num_kv_heads, " (heads must be a multiple), partial_dim ",
        partial_dim, " (1 to ", kMaxHeadDim, "), cand_stride ", cand_stride));
  }
  const int64_t pairs = static_cast<int64_t>(num_seqs) * num_heads;
  if (pairs > (int64_t{1} << 31) - 1) {
    return absl::InvalidArgumentError("InfinigenPartialScores: too many (sequence, head) pairs");
  }
  if (pairs == 0) return absl::OkStatus();
  const int64_t chunks = (cand_stride + kThreads - 1) / kThreads;
  const dim3 grid(static_cast<unsigned>(pairs),
                  static_cast<unsigned>(chunks < 65535 ? chunks : 65535));
  // q_shared rounded up to whole 16-byte words: ptxas hoists the tail loop's loads (up to 3
  // floats past partial_dim) above their guards, harmless on the hardware but out of bounds
  // for compute-sanitizer memcheck when the allocation ends at partial_dim (seen on the H100
  // with partial_dim 26). The padding is never read into a result.
  const size_t q_bytes = static_cast<size_t>((partial_dim + 3) / 4 * 4) * sizeof(float);
  return DispatchDType(dtype, [&](auto tag) -> absl::Status {
    using T = typename decltype(tag)::type;
    PartialScoresKernel<T><<<grid, kThreads, q_bytes, stream>>>(
        partial_q, static_cast<const T*>(partial_keys), num_kv_heads, partial_dim, cand_rows,
        cand_stride, num_cands, num_heads, scores);
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return absl::OkStatus();
  });
}

absl::Status InfinigenSpeculatedCount(const double* scores, int64_t score_stride,
                                      const int32_t* num_cands, int32_t num_seqs,
                                      int32_t num_heads, double alpha, const int32_t* max_num_kv,
                                      int32_t* counts, cudaStream_t stream) {
  if (scores == nullptr || num_cands == nullptr || max_num_kv == nullptr || counts == nullptr) {
    return absl::InvalidArgumentError(
        "InfinigenSpeculatedCount: null scores, num_cands, max_num_kv or counts");
  }
  if (num_seqs < 0 || num_heads < 1 || score_stride < 1 || !std::isfinite(alpha) ||
      alpha < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "InfinigenSpeculatedCount: num_seqs ", num_seqs, ", num_heads ", num_heads,
        ", score_stride ", score_stride, ", alpha ", alpha, " (finite, >= 0)"));
  }
  if (num_seqs == 0) return absl::OkStatus();
  SpeculatedCountKernel<<<num_seqs, kThreads, 0, stream>>>(scores, score_stride, num_cands,
                                                           num_heads, alpha, max_num_kv, counts);
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status InfinigenTopK(const double* scores, int64_t score_stride, const int32_t* num_cands,
                           const int32_t* counts, int32_t num_seqs, int32_t num_heads,
                           int32_t num_kv_heads, int32_t* selected, int32_t selected_stride,
                           cudaStream_t stream) {
  if (scores == nullptr || num_cands == nullptr || counts == nullptr || selected == nullptr) {
    return absl::InvalidArgumentError(
        "InfinigenTopK: null scores, num_cands, counts or selected");
  }
  if (num_seqs < 0 || num_kv_heads < 1 || num_heads < 1 || num_heads % num_kv_heads != 0 ||
      score_stride < 1 || selected_stride < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "InfinigenTopK: num_seqs ", num_seqs, ", num_heads ", num_heads, ", num_kv_heads ",
        num_kv_heads, " (heads must be a multiple), score_stride ", score_stride,
        ", selected_stride ", selected_stride));
  }
  const int64_t blocks = static_cast<int64_t>(num_seqs) * num_kv_heads;
  if (blocks > (int64_t{1} << 31) - 1) {
    return absl::InvalidArgumentError("InfinigenTopK: too many (sequence, head) pairs");
  }
  if (blocks == 0) return absl::OkStatus();
  TopKKernel<<<static_cast<unsigned>(blocks), kSelectThreads, 0, stream>>>(
      scores, score_stride, num_cands, counts, num_heads, num_kv_heads, selected,
      selected_stride);
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

size_t GatherPackedBytes(int64_t num_rows, int32_t head_dim, DType dtype) {
  if (num_rows <= 0) return 0;
  return static_cast<size_t>(HeaderBytes(num_rows) + GatherBytes(num_rows, head_dim, dtype));
}

absl::Status GatherCopyEngine(const CudaKvPool& host_pool, const GatherRow* rows,
                              int64_t num_rows, void* pinned_staging, size_t staging_bytes,
                              void* device_packed, size_t device_packed_bytes,
                              const CudaKvPool& dst_pool, cudaStream_t stream,
                              int64_t* h2d_bytes) {
  if (absl::Status st = CheckGatherPools(host_pool, dst_pool, "GatherCopyEngine"); !st.ok()) {
    return st;
  }
  if (num_rows < 0 || (num_rows > 0 && (rows == nullptr || pinned_staging == nullptr ||
                                        device_packed == nullptr))) {
    return absl::InvalidArgumentError(
        "GatherCopyEngine: num_rows < 0, or null rows, pinned_staging or device_packed");
  }
  if (num_rows == 0) return absl::OkStatus();
  const size_t need = GatherPackedBytes(num_rows, host_pool.head_dim, host_pool.dtype);
  if (staging_bytes < need || device_packed_bytes < need) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GatherCopyEngine: ", num_rows, " rows need ", need, " bytes of staging; pinned has ",
        staging_bytes, ", device ", device_packed_bytes));
  }
  for (int64_t r = 0; r < num_rows; ++r) {
    const GatherRow& row = rows[r];
    if (row.src_slot < 0 || row.src_slot >= host_pool.num_slots() || row.dst_slot < 0 ||
        row.dst_slot >= dst_pool.num_slots() || row.head < 0 ||
        row.head >= host_pool.num_kv_heads) {
      return absl::InvalidArgumentError(absl::StrCat(
          "GatherCopyEngine: row ", r, " (src slot ", row.src_slot, ", dst slot ", row.dst_slot,
          ", head ", row.head, ") is outside the pools (", host_pool.num_slots(), " / ",
          dst_pool.num_slots(), " slots, ", host_pool.num_kv_heads, " heads)"));
    }
  }
  const size_t elem = DTypeSize(host_pool.dtype);
  const size_t row_bytes = static_cast<size_t>(host_pool.head_dim) * elem;
  const int64_t header = HeaderBytes(num_rows);
  auto* staging = static_cast<unsigned char*>(pinned_staging);
  std::memcpy(staging, rows, num_rows * sizeof(GatherRow));
  unsigned char* data = staging + header;
  const auto* k = static_cast<const unsigned char*>(host_pool.k);
  const auto* v = static_cast<const unsigned char*>(host_pool.v);
  for (int64_t r = 0; r < num_rows; ++r) {
    const int64_t at = host_pool.RowOffset(rows[r].src_slot, rows[r].head) * elem;
    std::memcpy(data + (2 * r) * row_bytes, k + at, row_bytes);
    std::memcpy(data + (2 * r + 1) * row_bytes, v + at, row_bytes);
  }
  KVSCOPE_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(device_packed, pinned_staging, need, cudaMemcpyHostToDevice, stream));
  const auto* packed = static_cast<const unsigned char*>(device_packed);
  const int unit = UnitBytes(static_cast<int64_t>(row_bytes), static_cast<int>(elem),
                             {device_packed, dst_pool.k, dst_pool.v, packed + header});
  const int32_t units = static_cast<int32_t>(row_bytes / unit);
  const int32_t per_unit = unit / static_cast<int>(elem);
  const int64_t work = num_rows * 2 * units;
  const unsigned grid = GridFor(work, kThreads);
  switch (unit) {
    case 16:
      ScatterPackedKernel<uint4><<<grid, kThreads, 0, stream>>>(
          packed, num_rows, header, units, static_cast<uint4*>(dst_pool.k),
          static_cast<uint4*>(dst_pool.v), dst_pool.num_kv_heads, dst_pool.block_size,
          dst_pool.head_dim, per_unit);
      break;
    case 4:
      ScatterPackedKernel<uint32_t><<<grid, kThreads, 0, stream>>>(
          packed, num_rows, header, units, static_cast<uint32_t*>(dst_pool.k),
          static_cast<uint32_t*>(dst_pool.v), dst_pool.num_kv_heads, dst_pool.block_size,
          dst_pool.head_dim, per_unit);
      break;
    default:
      ScatterPackedKernel<uint16_t><<<grid, kThreads, 0, stream>>>(
          packed, num_rows, header, units, static_cast<uint16_t*>(dst_pool.k),
          static_cast<uint16_t*>(dst_pool.v), dst_pool.num_kv_heads, dst_pool.block_size,
          dst_pool.head_dim, per_unit);
      break;
  }
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  if (h2d_bytes != nullptr) {
    *h2d_bytes += GatherBytes(num_rows, host_pool.head_dim, host_pool.dtype);
  }
  return absl::OkStatus();
}

absl::Status GatherZeroCopy(const CudaKvPool& mapped_pool, const GatherRow* rows,
                            int64_t num_rows, const CudaKvPool& dst_pool, cudaStream_t stream,
                            int64_t* h2d_bytes) {
  if (absl::Status st = CheckGatherPools(mapped_pool, dst_pool, "GatherZeroCopy"); !st.ok()) {
    return st;
  }
  if (num_rows < 0 || (num_rows > 0 && rows == nullptr)) {
    return absl::InvalidArgumentError("GatherZeroCopy: num_rows < 0 or null rows");
  }
  if (num_rows == 0) return absl::OkStatus();
  const size_t elem = DTypeSize(mapped_pool.dtype);
  const int64_t row_bytes = static_cast<int64_t>(mapped_pool.head_dim) * elem;
  const int unit =
      UnitBytes(row_bytes, static_cast<int>(elem),
                {mapped_pool.k, mapped_pool.v, dst_pool.k, dst_pool.v});
  const int32_t units = static_cast<int32_t>(row_bytes / unit);
  const int32_t per_unit = unit / static_cast<int>(elem);
  const int64_t work = num_rows * 2 * units;
  const unsigned grid = GridFor(work, kThreads);
  switch (unit) {
    case 16:
      ZeroCopyGatherKernel<uint4><<<grid, kThreads, 0, stream>>>(
          static_cast<const uint4*>(mapped_pool.k), static_cast<const uint4*>(mapped_pool.v),
          mapped_pool.block_size, rows, num_rows, units, static_cast<uint4*>(dst_pool.k),
          static_cast<uint4*>(dst_pool.v), dst_pool.num_kv_heads, dst_pool.block_size,
          dst_pool.head_dim, per_unit);
      break;
    case 4:
      ZeroCopyGatherKernel<uint32_t><<<grid, kThreads, 0, stream>>>(
          static_cast<const uint32_t*>(mapped_pool.k),
          static_cast<const uint32_t*>(mapped_pool.v), mapped_pool.block_size, rows, num_rows,
          units, static_cast<uint32_t*>(dst_pool.k), static_cast<uint32_t*>(dst_pool.v),
          dst_pool.num_kv_heads, dst_pool.block_size, dst_pool.head_dim, per_unit);
      break;
    default:
      ZeroCopyGatherKernel<uint16_t><<<grid, kThreads, 0, stream>>>(
          static_cast<const uint16_t*>(mapped_pool.k),
          static_cast<const uint16_t*>(mapped_pool.v), mapped_pool.block_size, rows, num_rows,
          units, static_cast<uint16_t*>(dst_pool.k), static_cast<uint16_t*>(dst_pool.v),
          dst_pool.num_kv_heads, dst_pool.block_size, dst_pool.head_dim, per_unit);
      break;
  }
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  if (h2d_bytes != nullptr) {
    *h2d_bytes += GatherBytes(num_rows, mapped_pool.head_dim, mapped_pool.dtype);
  }
  return absl::OkStatus();
}

}  // namespace kvscope::kernels::cuda

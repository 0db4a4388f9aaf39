// Glue kernels of the GPU InfiniGen step (gpu_infinigen_kernels.h).
#include "engine/cuda/gpu_infinigen_kernels.h"

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/dispatch.h"

namespace kvscope::engine::cuda {
namespace {

using kernels::cuda::DispatchDType;
using kernels::cuda::GridFor;
using kernels::cuda::Load;
using kernels::cuda::Store;

constexpr int kThreads = 256;

__host__ __device__ __forceinline__ int64_t RowAt(int64_t slot, int32_t head, int32_t kv_heads,
                                                  int32_t block_size, int32_t head_dim) {
  return ((slot / block_size) * kv_heads + head) * static_cast<int64_t>(block_size) * head_dim +
         (slot % block_size) * static_cast<int64_t>(head_dim);
}

// One block per (token, head); the row is read into shared memory first (in place).
template <typename T>
__global__ void SkewHeadsKernel(T* x, int64_t stride, int32_t heads, int32_t head_dim,
                                const float* a) {
  extern __shared__ double row[];
  const int64_t t = blockIdx.x / heads;
  const int32_t h = static_cast<int32_t>(blockIdx.x % heads);
  T* v = x + t * stride + static_cast<int64_t>(h) * head_dim;
  for (int32_t i = threadIdx.x; i < head_dim; i += blockDim.x) row[i] = Load(v[i]);
  __syncthreads();
  const float* ah = a + static_cast<int64_t>(h) * head_dim * head_dim;
  for (int32_t j = threadIdx.x; j < head_dim; j += blockDim.x) {
    double acc = 0.0;
    for (int32_t i = 0; i < head_dim; ++i) {
      acc += row[i] * static_cast<double>(ah[i * head_dim + j]);
    }
    v[j] = Store<T>(static_cast<float>(acc));
  }
}

template <typename T>
__global__ void PickColumnsKernel(const T* in, int64_t rows, int64_t row_stride, int32_t heads,
                                  int64_t head_stride, const int32_t* columns,
                                  int32_t partial_dim, float* out) {
  const int64_t work = rows * heads * partial_dim;
  for (int64_t x = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; x < work;
       x += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = x / (static_cast<int64_t>(heads) * partial_dim);
    const int32_t h = static_cast<int32_t>((x / partial_dim) % heads);
    const int32_t c = static_cast<int32_t>(x % partial_dim);
    out[x] = Load(in[r * row_stride + h * head_stride + columns[h * partial_dim + c]]);
  }
}

// Thread per (r, kh, j <= max_count).
__global__ void BuildViewsKernel(SelectionArgs a) {
  const int64_t per_head = static_cast<int64_t>(a.max_count) + 1;
  const int64_t work = static_cast<int64_t>(a.num_seqs) * a.kv_heads * per_head;
  for (int64_t x = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; x < work;
       x += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t r = static_cast<int32_t>(x / (a.kv_heads * per_head));
    const int32_t kh = static_cast<int32_t>((x / per_head) % a.kv_heads);
    const int32_t j = static_cast<int32_t>(x % per_head);
    const int32_t count = a.counts[r];
    const int64_t list = (static_cast<int64_t>(r) * a.kv_heads + kh) * a.view_stride;
    if (j < count) {
      const int32_t sel =
          a.selected[(static_cast<int64_t>(r) * a.kv_heads + kh) * a.selected_stride + j];
      a.view_slots[list + j] = a.dst_base[r] + j;
      a.view_pos[list + j] =
          a.cand_pos[(static_cast<int64_t>(r) * a.kv_heads + kh) * a.cand_stride + sel];
    } else if (j == count) {
      a.view_slots[list + j] = a.new_slot[r];
      a.view_pos[list + j] = a.new_pos[r];
      if (kh == 0) a.views[a.view_index[r]].num_cached = count + 1;
    }
  }
}

// Thread per (r, kh, j < max_count, copy unit of K or V).
template <typename U>
__global__ void GatherSelectionKernel(SelectionArgs a, const U* src_k, const U* src_v,
                                      int32_t src_block_size, U* dst_k, U* dst_v,
                                      int32_t dst_block_size, int32_t head_dim, int32_t units,
                                      int32_t elems_per_unit) {
  const int64_t per_row = 2LL * units;
  const int64_t work = static_cast<int64_t>(a.num_seqs) * a.kv_heads * a.max_count * per_row;
  for (int64_t x = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; x < work;
       x += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = x / per_row;
    const int32_t w = static_cast<int32_t>(x % per_row);
    const int32_t j = static_cast<int32_t>(row % a.max_count);
    const int32_t kh = static_cast<int32_t>((row / a.max_count) % a.kv_heads);
    const int32_t r = static_cast<int32_t>(row / (static_cast<int64_t>(a.max_count) * a.kv_heads));
    if (j >= a.counts[r]) continue;
    const int64_t head_row = static_cast<int64_t>(r) * a.kv_heads + kh;
    const int32_t sel = a.selected[head_row * a.selected_stride + j];
    const int32_t src_slot = a.cand_rows[head_row * a.cand_stride + sel];
    const int32_t dst_slot = a.dst_base[r] + j;
    const bool is_k = w < units;
    const int32_t u = w % units;
    const U* src = is_k ? src_k : src_v;
    U* dst = is_k ? dst_k : dst_v;
    dst[RowAt(dst_slot, kh, a.kv_heads, dst_block_size, head_dim) / elems_per_unit + u] =
        src[RowAt(src_slot, kh, a.kv_heads, src_block_size, head_dim) / elems_per_unit + u];
  }
}

bool Aligned(const void* p, int unit) {
  return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(unit) == 0;
}

}  // namespace

absl::Status SkewHeads(void* x, int64_t tokens, int64_t stride, int32_t heads, int32_t head_dim,
                       const float* a, DType dtype, cudaStream_t stream) {
  if (tokens < 0 || heads < 1 || head_dim < 1 || head_dim > 256 ||
      stride < static_cast<int64_t>(heads) * head_dim ||
      (tokens > 0 && (x == nullptr || a == nullptr))) {
    return absl::InvalidArgumentError(absl::StrCat("SkewHeads: bad arguments (tokens ", tokens,
                                                   ", heads ", heads, ", head_dim ", head_dim,
                                                   ", stride ", stride, ")"));
  }
  if (tokens == 0) return absl::OkStatus();
  return DispatchDType(dtype, [&](auto tag) -> absl::Status {
    using T = typename decltype(tag)::type;
    const int threads = head_dim >= 128 ? 128 : 64;
    SkewHeadsKernel<T><<<static_cast<unsigned>(tokens * heads), threads,
                         static_cast<size_t>(head_dim) * sizeof(double), stream>>>(
        static_cast<T*>(x), stride, heads, head_dim, a);
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return absl::OkStatus();
  });
}

absl::Status PickPartialColumns(const void* in, int64_t rows, int64_t row_stride, int32_t heads,
                                int64_t head_stride, const int32_t* columns,
                                int32_t partial_dim, float* out, DType dtype,
                                cudaStream_t stream) {
  if (rows < 0 || heads < 1 || partial_dim < 1 ||
      (rows > 0 && (in == nullptr || columns == nullptr || out == nullptr))) {
    return absl::InvalidArgumentError("PickPartialColumns: bad arguments");
  }
  if (rows == 0) return absl::OkStatus();
  return DispatchDType(dtype, [&](auto tag) -> absl::Status {
    using T = typename decltype(tag)::type;
    const int64_t work = rows * heads * partial_dim;
    PickColumnsKernel<T><<<GridFor(work, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(in), rows, row_stride, heads, head_stride, columns, partial_dim,
        out);
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return absl::OkStatus();
  });
}

absl::Status BuildSelectionViews(const SelectionArgs& args, cudaStream_t stream) {
  if (args.num_seqs == 0) return absl::OkStatus();
  if (args.num_seqs < 0 || args.kv_heads < 1 || args.max_count < 0 ||
      args.view_stride < args.max_count + 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "BuildSelectionViews: bad arguments (", args.num_seqs, " sequences, view stride ",
        args.view_stride, ", max count ", args.max_count, ")"));
  }
  const int64_t work =
      static_cast<int64_t>(args.num_seqs) * args.kv_heads * (args.max_count + 1);
  BuildViewsKernel<<<GridFor(work, kThreads), kThreads, 0, stream>>>(args);
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status GatherSelectionZeroCopy(const SelectionArgs& args,
                                     const kernels::cuda::CudaKvPool& mapped_pool,
                                     const kernels::cuda::CudaKvPool& dst_pool,
                                     cudaStream_t stream) {
  KVSCOPE_RETURN_IF_ERROR(kernels::cuda::CheckCudaKvPool(mapped_pool, "GatherSelectionZeroCopy"));
  KVSCOPE_RETURN_IF_ERROR(kernels::cuda::CheckCudaKvPool(dst_pool, "GatherSelectionZeroCopy"));
  if (mapped_pool.dtype != dst_pool.dtype || mapped_pool.num_kv_heads != dst_pool.num_kv_heads ||
      mapped_pool.head_dim != dst_pool.head_dim || args.kv_heads != dst_pool.num_kv_heads) {
    return absl::InvalidArgumentError("GatherSelectionZeroCopy: the pools differ in shape");
  }
  if (args.num_seqs <= 0 || args.max_count <= 0) return absl::OkStatus();
  const int elem = static_cast<int>(DTypeSize(dst_pool.dtype));
  const int64_t row_bytes = static_cast<int64_t>(dst_pool.head_dim) * elem;
  int unit = elem;
  for (int u : {16, 4, 2}) {
    if (u < elem || row_bytes % u != 0) continue;
    if (!Aligned(mapped_pool.k, u) || !Aligned(mapped_pool.v, u) || !Aligned(dst_pool.k, u) ||
        !Aligned(dst_pool.v, u)) {
      continue;
    }
    unit = u;
    break;
  }
  const int32_t units = static_cast<int32_t>(row_bytes / unit);
  const int32_t per_unit = unit / elem;
  const int64_t work =
      static_cast<int64_t>(args.num_seqs) * args.kv_heads * args.max_count * 2 * units;
  const unsigned grid = GridFor(work, kThreads);
  auto launch = [&](auto type_tag) {
    using U = typename decltype(type_tag)::type;
    GatherSelectionKernel<U><<<grid, kThreads, 0, stream>>>(
        args, static_cast<const U*>(mapped_pool.k), static_cast<const U*>(mapped_pool.v),
        mapped_pool.block_size, static_cast<U*>(dst_pool.k), static_cast<U*>(dst_pool.v),
        dst_pool.block_size, dst_pool.head_dim, units, per_unit);
  };
  switch (unit) {
    case 16:
      launch(kernels::cuda::TypeTag<uint4>{});
      break;
    case 4:
      launch(kernels::cuda::TypeTag<uint32_t>{});
      break;
    default:
      launch(kernels::cuda::TypeTag<uint16_t>{});
      break;
  }
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace kvscope::engine::cuda

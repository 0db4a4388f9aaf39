// File: kernels/cuda/norm.cu
//
// Kernels and launchers for kernels/cuda/norm.h: one kernel per storage type covering the four
// ops (the op is a run-time, block-uniform choice, which keeps compile time down).
//
// One block per row (grid-stride over rows), threads striding over the columns. Pass 1 (and,
// when fused, the residual store) accumulates sum(x) or sum(x^2); LayerNorm adds a centered
// pass; the last pass normalizes. Each thread only ever re-reads the columns it wrote itself,
// so out == x and the residual store need no extra barrier.
// TODO(issue 6): 16-byte vector loads when rows are aligned (vLLM's width-8 path).
#include "kernels/cuda/norm.h"

#include <cmath>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/dispatch.h"

namespace kvscope::kernels::cuda {
namespace {

constexpr int kMaxThreads = 1024;

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, offset);
  return v;
}

// Sum of v over the block, returned to every thread (fixed order: deterministic).
// scratch: [32] shared floats. blockDim.x is a multiple of 32.
__device__ float BlockSum(float v, float* scratch) {
  v = WarpSum(v);
  __syncthreads();  // the previous BlockSum's readers are done with scratch
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  float total = 0.0f;
  const int warps = blockDim.x >> 5;
  for (int w = 0; w < warps; ++w) total += scratch[w];
  return total;
}

// residual == nullptr: out = norm(x). Otherwise residual += x, out = norm(residual).
// layer: LayerNorm (bias may be null) instead of RmsNorm.
// No __restrict__: out may alias x.
template <typename T>
__global__ void NormKernel(const T* x, T* residual, const T* weight, const T* bias, float eps,
                           int64_t rows, int64_t cols, T* out, bool layer) {
  __shared__ float scratch[32];
  const float fcols = static_cast<float>(cols);  // divide (not * 1/cols): exact for exact sums
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * cols;
    T* rr = residual != nullptr ? residual + r * cols : nullptr;
    const T* src = rr != nullptr ? rr : xr;
    T* o = out + r * cols;

    float sum = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      float v;
      if (rr != nullptr) {
        const T stored = Store<T>(Load(rr[c]) + Load(xr[c]));
        rr[c] = stored;
        v = Load(stored);  // statistics over the stored (rounded) residual
      } else {
        v = Load(xr[c]);
      }
      sum += layer ? v : v * v;
    }
    sum = BlockSum(sum, scratch);

    float mean = 0.0f;
    float var;
    if (layer) {
      mean = sum / fcols;
      float sq = 0.0f;
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        const float d = Load(src[c]) - mean;
        sq += d * d;
      }
      var = BlockSum(sq, scratch) / fcols;
    } else {
      var = sum / fcols;
    }
    const float inv = 1.0f / sqrtf(var + eps);  // IEEE sqrt and division (no fast math)

    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      float y = (Load(src[c]) - mean) * inv * Load(weight[c]);
      if (bias != nullptr) y += Load(bias[c]);
      o[c] = Store<T>(y);
    }
  }
}

absl::Status LaunchNorm(const char* op, const void* x, void* residual, const void* weight,
                        const void* bias, float eps, int64_t rows, int64_t cols, void* out,
                        DType dtype, bool layer, cudaStream_t stream) {
  if (rows < 0 || cols < 0 || (rows > 0 && cols == 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": bad shape (rows ", rows, ", cols ", cols, ")"));
  }
  if (!std::isfinite(eps) || eps < 0.0f) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": eps ", eps, " must be finite, >= 0"));
  }
  if (rows == 0) return DispatchDType(dtype, [](auto) { return absl::OkStatus(); });
  if (x == nullptr || weight == nullptr || out == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": null x, weight or out"));
  }
  if (residual != nullptr && residual == out) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": out must not alias residual"));
  }
  int threads = static_cast<int>(cols < kMaxThreads ? (cols + 31) / 32 * 32 : kMaxThreads);
  const unsigned blocks = static_cast<unsigned>(rows < (1LL << 30) ? rows : (1LL << 30));
  return DispatchDType(dtype, [&](auto tag) -> absl::Status {
    using T = typename decltype(tag)::type;
    NormKernel<T><<<blocks, threads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<T*>(residual), static_cast<const T*>(weight),
        static_cast<const T*>(bias), eps, rows, cols, static_cast<T*>(out), layer);
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return absl::OkStatus();
  });
}

}  // namespace

absl::Status RmsNorm(const void* x, const void* weight, float eps, int64_t rows, int64_t cols,
                     void* out, DType dtype, cudaStream_t stream) {
  return LaunchNorm("RmsNorm", x, nullptr, weight, nullptr, eps, rows, cols, out, dtype,
                    /*layer=*/false, stream);
}

absl::Status AddRmsNorm(void* residual, const void* x, const void* weight, float eps,
                        int64_t rows, int64_t cols, void* out, DType dtype,
                        cudaStream_t stream) {
  if (rows > 0 && cols > 0 && residual == nullptr) {
    return absl::InvalidArgumentError("AddRmsNorm: residual is null");
  }
  return LaunchNorm("AddRmsNorm", x, residual, weight, nullptr, eps, rows, cols, out, dtype,
                    /*layer=*/false, stream);
}

absl::Status LayerNorm(const void* x, const void* weight, const void* bias, float eps,
                       int64_t rows, int64_t cols, void* out, DType dtype, cudaStream_t stream) {
  return LaunchNorm("LayerNorm", x, nullptr, weight, bias, eps, rows, cols, out, dtype,
                    /*layer=*/true, stream);
}

absl::Status AddLayerNorm(void* residual, const void* x, const void* weight, const void* bias,
                          float eps, int64_t rows, int64_t cols, void* out, DType dtype,
                          cudaStream_t stream) {
  if (rows > 0 && cols > 0 && residual == nullptr) {
    return absl::InvalidArgumentError("AddLayerNorm: residual is null");
  }
  return LaunchNorm("AddLayerNorm", x, residual, weight, bias, eps, rows, cols, out, dtype,
                    /*layer=*/true, stream);
}

}  // namespace kvscope::kernels::cuda

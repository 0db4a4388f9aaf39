// File: kernels/cuda/dispatch.h
//
// The one place where a run-time element type and head size become template parameters of
// a kernel. Include from .cu files only (it uses the CUDA half types).
//
//   return DispatchDType(dtype, [&](auto tag) -> absl::Status {
//     using T = typename decltype(tag)::type;        // float, __half or __nv_bfloat16
//     return DispatchHeadDim(head_dim, [&](auto hd) -> absl::Status {
//       constexpr int kHeadDim = decltype(hd)::value;  // 64, 128, 256, or kAnyHeadDim
//       ...launch MyKernel<T, kHeadDim>...
//     });
//   });
//
// Storage types follow common/dtype.h (kF32 = float, kF16 = __half, kBF16 = __nv_bfloat16).
// Arithmetic is always float32: Load() widens, Store() rounds to nearest even.
#ifndef KVSCOPE_KERNELS_CUDA_DISPATCH_H_
#define KVSCOPE_KERNELS_CUDA_DISPATCH_H_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/dtype.h"

namespace kvscope::kernels::cuda {

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) for the storage type of `dtype` and returns its Status.
template <typename F>
absl::Status DispatchDType(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kF32:
      return f(TypeTag<float>{});
    case DType::kF16:
      return f(TypeTag<__half>{});
    case DType::kBF16:
      return f(TypeTag<__nv_bfloat16>{});
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported element type ", static_cast<int>(dtype)));
}

// Head sizes with a specialised (register-tiled) kernel; any other size up to
// kMaxHeadDim runs the generic kernel, instantiated with kAnyHeadDim.
inline constexpr int kAnyHeadDim = 0;
inline constexpr int kMaxHeadDim = 256;

// Calls f(std::integral_constant<int, D>{}) with D = head_dim for 64, 128 and 256 and
// D = kAnyHeadDim for other sizes in [1, kMaxHeadDim]; InvalidArgument above that.
template <typename F>
absl::Status DispatchHeadDim(int head_dim, F&& f) {
  switch (head_dim) {
    case 64:
      return f(std::integral_constant<int, 64>{});
    case 128:
      return f(std::integral_constant<int, 128>{});
    case 256:
      return f(std::integral_constant<int, 256>{});
    default:
      if (head_dim >= 1 && head_dim <= kMaxHeadDim) {
        return f(std::integral_constant<int, kAnyHeadDim>{});
      }
      return absl::InvalidArgumentError(absl::StrCat(
          "head_dim ", head_dim, " is not supported by the CUDA kernels (1 to ", kMaxHeadDim,
          "; 64, 128 and 256 have specialised kernels)"));
  }
}

// float32 <-> storage type, on host and device.
__host__ __device__ inline float Load(float x) { return x; }
__host__ __device__ inline float Load(__half x) { return __half2float(x); }
__host__ __device__ inline float Load(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__host__ __device__ inline T Store(float x);
template <>
__host__ __device__ inline float Store<float>(float x) {
  return x;
}
template <>
__host__ __device__ inline __half Store<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__host__ __device__ inline __nv_bfloat16 Store<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Blocks of `threads` covering n items, capped so that the grid stays in range (kernels
// that use this loop with a grid stride).
inline unsigned GridFor(long long n, int threads, long long max_blocks = 65535LL * 16) {
  long long blocks = (n + threads - 1) / threads;
  if (blocks < 1) blocks = 1;
  if (blocks > max_blocks) blocks = max_blocks;
  return static_cast<unsigned>(blocks);
}

}  // namespace kvscope::kernels::cuda

#endif  // KVSCOPE_KERNELS_CUDA_DISPATCH_H_

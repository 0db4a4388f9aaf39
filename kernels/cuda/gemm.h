// File: kernels/cuda/gemm.h
//
// Linear layers on the device through cuBLASLt, with the semantics of kernels::Linear
// (kernels/ops.h):
//
//   y = x · wᵀ (+ bias) (+ y if accumulate)
//
// with weights stored [out_features, in_features] as in PyTorch. All buffers share one
// storage type: kBF16 and kF16 multiply on tensor cores with float32 accumulation
// (CUBLAS_COMPUTE_32F) and round y once; kF32 (for tests and reference runs) uses
// CUBLAS_COMPUTE_32F too, i.e. true float32 products, never TF32. The bias is added in
// cuBLASLt's epilogue (CUBLASLT_EPILOGUE_BIAS, in float32 before the single rounding of y).
//
// Usage:
//   KVSCOPE_ASSIGN_OR_RETURN(Gemm gemm, Gemm::Create());     // common/status_macros.h
//   KVSCOPE_RETURN_IF_ERROR(gemm.Linear(x, m, k, w, n, ldw, bias, y, /*accumulate=*/false,
//                                       DType::kBF16, stream));
//
// Ownership and threads: a Gemm owns a cuBLASLt handle, a device workspace and a cache of
// per-shape plans (descriptors plus the heuristic's algorithm). It is move-only and
// thread-compatible: calls must be serialized by the caller (one Gemm per thread or per
// tensor-parallel rank), AND they must be ordered on the device: the workspace is shared by
// every call, so two Linear calls on streams that can run concurrently race on it (use one
// Gemm per stream). Create it with the target device current; it must be destroyed with no
// call of it still executing on the device.
#ifndef KVSCOPE_KERNELS_CUDA_GEMM_H_
#define KVSCOPE_KERNELS_CUDA_GEMM_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/dtype.h"

namespace kvscope::kernels::cuda {

class Gemm {
 public:
  // 32 MiB: NVIDIA's recommended cuBLASLt workspace on Hopper.
  static constexpr size_t kDefaultWorkspaceBytes = size_t{32} << 20;

  // A handle plus `workspace_bytes` of device memory. ResourceExhausted if the workspace
  // cannot be allocated; the cuBLAS error's code otherwise.
  static absl::StatusOr<Gemm> Create(size_t workspace_bytes = kDefaultWorkspaceBytes);

  Gemm(Gemm&& other) noexcept;
  Gemm& operator=(Gemm&& other) noexcept;
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;
  ~Gemm();

  // y = x · wᵀ (+ bias) (+ y if accumulate). Device pointers, all stored as `dtype`:
  //   x:    [m, k], row stride k
  //   w:    [n, k], row stride ldw >= k (a column slice of a wider matrix needs no copy)
  //   bias: [n] or null
  //   y:    [m, n], row stride n; must not overlap x, w or bias
  // k == 0 gives y = bias (or 0) (+ y). InvalidArgument without a launch for negative sizes,
  // ldw < max(k, 1), null pointers with work to do or an unsupported dtype. Internal if
  // cuBLASLt offers no algorithm for the shape. Asynchronous on `stream`.
  absl::Status Linear(const void* x, int64_t m, int64_t k, const void* w, int64_t n,
                      int64_t ldw, const void* bias, void* y, bool accumulate, DType dtype,
                      cudaStream_t stream);

 private:
  struct Impl;
  explicit Gemm(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvscope::kernels::cuda

#endif  // KVSCOPE_KERNELS_CUDA_GEMM_H_

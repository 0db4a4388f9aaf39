// File: kernels/cuda/cuda_status.h
//
// The one way CUDA, cuBLAS and NCCL errors become an absl::Status:
//
//   KVSCOPE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(...));   // any of the three libraries
//   my_kernel<<<grid, block, 0, stream>>>(...);
//   KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());      // after every launch
//
// The Status names the failing expression, the library's own error name and text, and the
// file:line, and maps the error onto a canonical code: out of memory -> ResourceExhausted,
// bad arguments -> InvalidArgument, no device / driver too old -> FailedPrecondition,
// everything else (launch failures, illegal addresses, NCCL system errors) -> Internal.
// Host-only header (no device code); include it from .cc and .cu files alike.
#ifndef KVSCOPE_KERNELS_CUDA_CUDA_STATUS_H_
#define KVSCOPE_KERNELS_CUDA_CUDA_STATUS_H_

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "absl/status/status.h"

#if KVSCOPE_WITH_NCCL
#include <nccl.h>
#endif

namespace kvscope::kernels::cuda {

inline bool IsSuccess(cudaError_t e) { return e == cudaSuccess; }
inline bool IsSuccess(cublasStatus_t e) { return e == CUBLAS_STATUS_SUCCESS; }

absl::Status ErrorToStatus(cudaError_t error, const char* expr, const char* file, int line);
absl::Status ErrorToStatus(cublasStatus_t error, const char* expr, const char* file, int line);

#if KVSCOPE_WITH_NCCL
inline bool IsSuccess(ncclResult_t e) { return e == ncclSuccess; }
absl::Status ErrorToStatus(ncclResult_t error, const char* expr, const char* file, int line);
#endif

}  // namespace kvscope::kernels::cuda

#define KVSCOPE_CUDA_RETURN_IF_ERROR(expr)                                             \
  do {                                                                                 \
    const auto kvscope_cuda_rc_ = (expr);                                              \
    if (!::kvscope::kernels::cuda::IsSuccess(kvscope_cuda_rc_)) {                      \
      return ::kvscope::kernels::cuda::ErrorToStatus(kvscope_cuda_rc_, #expr, __FILE__, \
                                                     __LINE__);                        \
    }                                                                                  \
  } while (0)

#endif  // KVSCOPE_KERNELS_CUDA_CUDA_STATUS_H_

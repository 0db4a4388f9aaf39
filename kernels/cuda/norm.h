// File: kernels/cuda/norm.h
//
// CUDA RmsNorm and LayerNorm (kernels/ops.h semantics), each also fused with the residual
// add that precedes it in a pre-norm transformer block (vLLM's fused_add_rms_norm):
//
//   residual += x;  out = norm(residual)
//
// Conventions (as kernels/cuda/elementwise.h): device pointers; every buffer, weight and bias
// included, stored as `dtype`; rows contiguous ([rows, cols], row stride cols); float32
// statistics and arithmetic, each output rounded once; asynchronous on `stream`, no
// synchronization; InvalidArgument without a launch for negative shapes, cols == 0 with
// rows > 0, a non-finite or negative eps, or null pointers. Thread-compatible (no state).
//
// Numerics: one thread block per row, per-thread float32 partial sums combined by warp
// shuffles and one shared-memory step. LayerNorm takes two passes (mean, then centered
// squares), as the CPU reference, so there is no cancellation. Against the CPU reference
// (double accumulation) the normalized error is ~1e-7 for float32.
#ifndef KVSCOPE_KERNELS_CUDA_NORM_H_
#define KVSCOPE_KERNELS_CUDA_NORM_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "common/dtype.h"

namespace kvscope::kernels::cuda {

// out = x / sqrt(mean(x^2) + eps) * weight, per row. x, out: [rows, cols]; weight: [cols].
// In place allowed (out == x).
absl::Status RmsNorm(const void* x, const void* weight, float eps, int64_t rows, int64_t cols,
                     void* out, DType dtype, cudaStream_t stream);

// residual += x (stored, i.e. rounded to dtype); out = RmsNorm(residual). Exactly the result
// of AddInPlace(residual, x) followed by RmsNorm(residual, ..., out): the statistics are taken
// over the stored (rounded) residual. residual, x, out: [rows, cols]; weight: [cols].
// out may alias x (then x is consumed); out must not alias residual.
absl::Status AddRmsNorm(void* residual, const void* x, const void* weight, float eps,
                        int64_t rows, int64_t cols, void* out, DType dtype,
                        cudaStream_t stream);

// out = (x - mean) / sqrt(var + eps) * weight + bias, per row (biased variance, as
// torch.nn.LayerNorm). bias: [cols] or null. In place allowed.
absl::Status LayerNorm(const void* x, const void* weight, const void* bias, float eps,
                       int64_t rows, int64_t cols, void* out, DType dtype, cudaStream_t stream);

// residual += x; out = LayerNorm(residual), with the aliasing rules of AddRmsNorm.
absl::Status AddLayerNorm(void* residual, const void* x, const void* weight, const void* bias,
                          float eps, int64_t rows, int64_t cols, void* out, DType dtype,
                          cudaStream_t stream);

}  // namespace kvscope::kernels::cuda

#endif  // KVSCOPE_KERNELS_CUDA_NORM_H_

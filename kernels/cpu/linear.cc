// File: kernels/cpu/linear.cc
//
// CPU implementation of Linear (kernels/ops.h) through OpenBLAS: y = x · wᵀ (+ bias) (+ y).
// OpenBLAS threads internally; concurrent calls from several threads are supported by
// OpenBLAS (it serializes access to its thread pool).
#include <cassert>
#include <cblas.h>

#include <algorithm>
#include <cstdint>

#include "kernels/ops.h"

namespace kvscope::kernels {

void Linear(const float* x, int64_t m, int64_t k, const float* w, int64_t n, int64_t ldw,
            const float* bias, float* y, bool accumulate) {
  assert(m >= 0 && k >= 0 && n >= 0 && ldw >= std::max<int64_t>(k, 1));
  if (m == 0 || n == 0) return;
  if (k == 0) {
    // BLAS with k == 0 only scales y; make the empty sum explicit.
    if (!accumulate) std::fill(y, y + m * n, 0.0f);
  } else if (m == 1) {
    // NOTE(kernels): gemv with beta == 0 scales y by 0 in some OpenBLAS versions, which keeps
    // NaN/Inf from uninitialized memory; zero y explicitly and always use beta = 1.
    if (!accumulate) std::fill(y, y + n, 0.0f);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<blasint>(n), static_cast<blasint>(k),
                1.0f, w, static_cast<blasint>(ldw), x, 1, 1.0f, y, 1);
  } else {
    // beta == 0: OpenBLAS's gemm writes zeros first (does not read y).
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(m),
                static_cast<blasint>(n), static_cast<blasint>(k), 1.0f, x,
                static_cast<blasint>(k), w, static_cast<blasint>(ldw),
                accumulate ? 1.0f : 0.0f, y, static_cast<blasint>(n));
  }
  if (bias != nullptr) {
    AddBias(y, bias, m, n);
  }
}

}  // namespace kvscope::kernels

// File: kernels/cpu/linear.cc
//
// CPU implementation of Linear (kernels/ops.h) through OpenBLAS: y = x · wᵀ (+ bias) (+ y).
//
// NOTE(kernels): all CPU parallelism goes through OpenMP. OpenBLAS's own pthread pool next
// to spinning OpenMP workers oversubscribes the cores (measured: decode several times slower
// at tp=1 than at tp=2 on 2 cores). So the output features are split across the calling
// thread's OpenMP team, and each thread runs a single-threaded BLAS call on its column block
// (OpenBLAS is set to one thread on first use). Each output element is computed by one thread,
// so results do not depend on the thread count beyond BLAS's own blocking.
#include <cassert>
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "kernels/ops.h"

extern "C" void openblas_set_num_threads(int num_threads);

namespace kvscope::kernels {
namespace {

// y[:, 0:n] = x · w[0:n]ᵀ (+ y), rows of y `ldy` apart; single-threaded BLAS.
void Block(const float* x, int64_t m, int64_t k, const float* w, int64_t n, int64_t ldw, float* y,
           int64_t ldy, bool accumulate) {
  if (m == 1) {
    // NOTE(kernels): gemv with beta == 0 scales y by 0 in some OpenBLAS versions, which keeps
    // NaN/Inf from uninitialized memory; zero y explicitly and always use beta = 1.
    if (!accumulate) std::fill(y, y + n, 0.0f);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<blasint>(n), static_cast<blasint>(k),
                1.0f, w, static_cast<blasint>(ldw), x, 1, 1.0f, y, 1);
    return;
  }
  // beta == 0: OpenBLAS's gemm writes zeros first (does not read y).
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(m),
              static_cast<blasint>(n), static_cast<blasint>(k), 1.0f, x, static_cast<blasint>(k),
              w, static_cast<blasint>(ldw), accumulate ? 1.0f : 0.0f, y,
              static_cast<blasint>(ldy));
}

}  // namespace

void Linear(const float* x, int64_t m, int64_t k, const float* w, int64_t n, int64_t ldw,
            const float* bias, float* y, bool accumulate) {
  assert(m >= 0 && k >= 0 && n >= 0 && ldw >= std::max<int64_t>(k, 1));
  static const bool blas_single_threaded = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)blas_single_threaded;
  if (m == 0 || n == 0) return;
  if (k == 0) {
    // BLAS with k == 0 only scales y; make the empty sum explicit.
    if (!accumulate) std::fill(y, y + m * n, 0.0f);
  } else {
    // Split the output features in blocks of 16 across the team when the work is worth it.
    const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
    const int64_t work = m * n * k;
    const int64_t blocks = std::min<int64_t>(threads, (n + 15) / 16);
    if (blocks <= 1 || work < (1 << 16)) {
      Block(x, m, k, w, n, ldw, y, n, accumulate);
    } else {
#pragma omp parallel for num_threads(static_cast<int>(blocks)) schedule(static)
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t per = ((n + blocks - 1) / blocks + 15) / 16 * 16;
        const int64_t begin = std::min(n, b * per);
        const int64_t end = std::min(n, begin + per);
        if (begin < end) {
          Block(x, m, k, w + begin * ldw, end - begin, ldw, y + begin, n, accumulate);
        }
      }
    }
  }
  if (bias != nullptr) {
    AddBias(y, bias, m, n);
  }
}

}  // namespace kvscope::kernels

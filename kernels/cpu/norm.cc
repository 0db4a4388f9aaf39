// File: kernels/cpu/norm.cc
//
// CPU reference implementations of RmsNorm and LayerNorm (kernels/ops.h). Row statistics are
// accumulated in double and each output is computed in double and rounded once, so results
// are within ~1 ulp of the exact value. Parallel over rows.
#include <cassert>
#include <cmath>
#include <cstdint>

#include "kernels/ops.h"

namespace kvscope::kernels {
namespace {

constexpr int64_t kParallelMinElements = int64_t{1} << 14;

}  // namespace

void RmsNorm(const float* x, const float* weight, float eps, int64_t rows, int64_t cols,
             float* out) {
  assert(rows >= 0 && cols > 0);
#pragma omp parallel for schedule(static) if (rows > 1 && rows * cols >= kParallelMinElements)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* o = out + r * cols;
    double sum_sq = 0.0;
    for (int64_t c = 0; c < cols; ++c) sum_sq += static_cast<double>(xr[c]) * xr[c];
    const double inv_rms =
        1.0 / std::sqrt(sum_sq / static_cast<double>(cols) + static_cast<double>(eps));
    // In place is safe: the statistics are complete before the first write.
    for (int64_t c = 0; c < cols; ++c) {
      o[c] = static_cast<float>(static_cast<double>(xr[c]) * inv_rms * weight[c]);
    }
  }
}

void LayerNorm(const float* x, const float* weight, const float* bias, float eps, int64_t rows,
               int64_t cols, float* out) {
  assert(rows >= 0 && cols > 0);
#pragma omp parallel for schedule(static) if (rows > 1 && rows * cols >= kParallelMinElements)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* o = out + r * cols;
    // Two passes (mean, then centered squares) to avoid cancellation in the variance.
    double sum = 0.0;
    for (int64_t c = 0; c < cols; ++c) sum += xr[c];
    const double mean = sum / static_cast<double>(cols);
    double sum_sq = 0.0;
    for (int64_t c = 0; c < cols; ++c) {
      const double d = xr[c] - mean;
      sum_sq += d * d;
    }
    const double inv_std =
        1.0 / std::sqrt(sum_sq / static_cast<double>(cols) + static_cast<double>(eps));
    for (int64_t c = 0; c < cols; ++c) {
      double y = (static_cast<double>(xr[c]) - mean) * inv_std * weight[c];
      if (bias != nullptr) y += bias[c];
      o[c] = static_cast<float>(y);
    }
  }
}

}  // namespace kvscope::kernels

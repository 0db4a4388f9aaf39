// File: kernels/cpu/elementwise.cc
//
// CPU reference implementations of the elementwise ops in kernels/ops.h: Embedding, SiluMul,
// Relu, AddInPlace, AddBias. Parallel over rows (or flat chunks) with OpenMP when the work is
// large enough to pay for a team; no global state, so concurrent calls on disjoint buffers are
// safe.
#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/ops.h"

namespace kvscope::kernels {
namespace {

// Below this many floats an OpenMP team costs more than it saves.
constexpr int64_t kParallelMinElements = int64_t{1} << 15;

}  // namespace

absl::Status Embedding(const float* table, int64_t vocab, int64_t hidden, const int32_t* ids,
                       int64_t n, float* out) {
  if (vocab < 0 || hidden < 0 || n < 0) {
    return absl::InvalidArgumentError(absl::StrCat("Embedding: negative shape (vocab ", vocab,
                                                   ", hidden ", hidden, ", n ", n, ")"));
  }
  // Validate every id before writing anything, so a failed call leaves `out` untouched.
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat("Embedding: token id ", ids[i],
                                                     " at position ", i, " is outside [0, ",
                                                     vocab, ")"));
    }
  }
  const size_t row_bytes = static_cast<size_t>(hidden) * sizeof(float);
#pragma omp parallel for schedule(static) if (n * hidden >= kParallelMinElements)
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(out + i * hidden, table + static_cast<int64_t>(ids[i]) * hidden, row_bytes);
  }
  return absl::OkStatus();
}

void SiluMul(const float* gate, int64_t gate_stride, const float* up, int64_t up_stride,
             int64_t rows, int64_t cols, float* out, int64_t out_stride) {
  assert(rows >= 0 && cols >= 0);
  assert(gate_stride >= cols && up_stride >= cols && out_stride >= cols);
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMinElements)
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gate + r * gate_stride;
    const float* u = up + r * up_stride;
    float* o = out + r * out_stride;
    for (int64_t c = 0; c < cols; ++c) {
      // NOTE(kernels): computed in double and rounded once, so the reference is within half
      // an ulp of the exact value (in-place on gate is safe: g[c] is read before o[c] is
      // written).
      const double x = g[c];
      o[c] = static_cast<float>(x / (1.0 + std::exp(-x)) * static_cast<double>(u[c]));
    }
  }
}

void Relu(float* x, int64_t n) {
  assert(n >= 0);
#pragma omp parallel for schedule(static) if (n >= kParallelMinElements)
  for (int64_t i = 0; i < n; ++i) {
    // NaN stays NaN (as torch.relu), hence not std::max.
    if (x[i] < 0.0f) x[i] = 0.0f;
  }
}

void AddInPlace(float* y, const float* x, int64_t n) {
  assert(n >= 0);
#pragma omp parallel for schedule(static) if (n >= kParallelMinElements)
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void AddBias(float* x, const float* bias, int64_t rows, int64_t cols) {
  assert(rows >= 0 && cols >= 0);
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMinElements)
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * cols;
    for (int64_t c = 0; c < cols; ++c) row[c] += bias[c];
  }
}

}  // namespace kvscope::kernels

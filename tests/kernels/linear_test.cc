// File: tests/kernels/linear_test.cc
//
// Linear (BLAS) against the double reference: odd shapes, column slices (ldw > k), bias,
// accumulate, and no reads of y when not accumulating.
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "tests/kernels/reference_ops.h"

namespace kvscope::kernels {
namespace {

using reference::RandomFloats;

// |y - ref| <= 1e-6 * (1 + Σ_k |x w|) + |bias| + |y0| terms, per element: the float32
// rounding of a k-term dot product is bounded relative to the sum of magnitudes.
::testing::AssertionResult LinearClose(const std::vector<float>& y, const std::vector<float>& x,
                                       int64_t m, int64_t k, const float* w, int64_t n,
                                       int64_t ldw, const std::vector<float>& bias,
                                       const std::vector<float>& y0) {
  const std::vector<double> want = reference::Linear(x, m, k, w, n, ldw, bias, y0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double mag = 1.0;
      for (int64_t kk = 0; kk < k; ++kk) mag += std::abs(double{x[i * k + kk]} * w[j * ldw + kk]);
      if (!bias.empty()) mag += std::abs(bias[j]);
      if (!y0.empty()) mag += std::abs(y0[i * n + j]);
      const double err = std::abs(y[i * n + j] - want[i * n + j]);
      if (!(err <= 1e-6 * mag)) {
        return ::testing::AssertionFailure() << "y[" << i << "][" << j << "] = " << y[i * n + j]
                                             << ", expected " << want[i * n + j];
      }
    }
  }
  return ::testing::AssertionSuccess();
}

TEST(LinearTest, MatchesReference) {
  std::mt19937 rng(40);
  for (int64_t m : {1, 3, 7, 33, 65}) {
    for (int64_t k : {1, 5, 67, 129, 257}) {
      for (int64_t n : {1, 5, 67, 129}) {
        for (bool slice : {false, true}) {
          for (bool with_bias : {false, true}) {
            for (bool accumulate : {false, true}) {
              SCOPED_TRACE(testing::Message() << "m " << m << " k " << k << " n " << n
                                              << " slice " << slice << " bias " << with_bias
                                              << " accumulate " << accumulate);
              const std::vector<float> x = RandomFloats(rng, m * k);
              // A column slice [n, k] starting at column 2 of a [n, k + 5] matrix.
              const int64_t ldw = slice ? k + 5 : k;
              const std::vector<float> wfull = RandomFloats(rng, n * ldw);
              const float* w = wfull.data() + (slice ? 2 : 0);
              const std::vector<float> bias = with_bias ? RandomFloats(rng, n) : std::vector<float>{};
              std::vector<float> y0;
              std::vector<float> y;
              if (accumulate) {
                y0 = RandomFloats(rng, m * n);
                y = y0;
              } else {
                // Garbage (NaN) in y must not leak into the result.
                y.assign(m * n, std::numeric_limits<float>::quiet_NaN());
              }
              Linear(x.data(), m, k, w, n, ldw, with_bias ? bias.data() : nullptr, y.data(),
                     accumulate);
              ASSERT_TRUE(LinearClose(y, x, m, k, w, n, ldw, bias, y0));
            }
          }
        }
      }
    }
  }
}

TEST(LinearTest, LargeThreadedGemm) {
  std::mt19937 rng(41);
  const int64_t m = 96, k = 513, n = 320;
  const std::vector<float> x = RandomFloats(rng, m * k);
  const std::vector<float> w = RandomFloats(rng, n * k);
  const std::vector<float> bias = RandomFloats(rng, n);
  std::vector<float> y(m * n);
  Linear(x.data(), m, k, w.data(), n, k, bias.data(), y.data());
  EXPECT_TRUE(LinearClose(y, x, m, k, w.data(), n, k, bias, {}));
}

}  // namespace
}  // namespace kvscope::kernels

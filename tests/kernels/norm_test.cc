// File: tests/kernels/norm_test.cc
//
// RmsNorm and LayerNorm against the double references, in place and out of place.
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "tests/kernels/reference_ops.h"

namespace kvscope::kernels {
namespace {

using reference::AllClose;
using reference::RandomFloats;

constexpr int64_t kRows[] = {1, 3, 7, 33};
constexpr int64_t kCols[] = {1, 5, 67, 129, 257, 1025};

TEST(RmsNormTest, MatchesReference) {
  std::mt19937 rng(20);
  for (int64_t rows : kRows) {
    for (int64_t cols : kCols) {
      SCOPED_TRACE(testing::Message() << rows << "x" << cols);
      const std::vector<float> x = RandomFloats(rng, rows * cols, -3.0f, 3.0f);
      const std::vector<float> w = RandomFloats(rng, cols, 0.5f, 1.5f);
      const std::vector<double> want = reference::RmsNorm(x, w, 1e-6, rows, cols);
      std::vector<float> out(rows * cols);
      RmsNorm(x.data(), w.data(), 1e-6f, rows, cols, out.data());
      EXPECT_TRUE(AllClose(out, want, 1e-6, 1e-7));
      std::vector<float> in_place = x;
      RmsNorm(in_place.data(), w.data(), 1e-6f, rows, cols, in_place.data());
      EXPECT_EQ(in_place, out);
    }
  }
}

TEST(RmsNormTest, ConstantRow) {
  const int64_t cols = 129;
  const std::vector<float> x(cols, -2.0f);
  const std::vector<float> w(cols, 3.0f);
  std::vector<float> out(cols);
  RmsNorm(x.data(), w.data(), 1e-5f, 1, cols, out.data());
  const double expected = -2.0 / std::sqrt(4.0 + double{1e-5f}) * 3.0;
  for (float v : out) EXPECT_NEAR(v, expected, 1e-6);
}

TEST(LayerNormTest, MatchesReferenceWithAndWithoutBias) {
  std::mt19937 rng(21);
  for (int64_t rows : kRows) {
    for (int64_t cols : kCols) {
      SCOPED_TRACE(testing::Message() << rows << "x" << cols);
      // An offset mean stresses the variance computation.
      const std::vector<float> x = RandomFloats(rng, rows * cols, 10.0f, 14.0f);
      const std::vector<float> w = RandomFloats(rng, cols, 0.5f, 1.5f);
      const std::vector<float> b = RandomFloats(rng, cols);
      std::vector<float> out(rows * cols);
      LayerNorm(x.data(), w.data(), b.data(), 1e-5f, rows, cols, out.data());
      EXPECT_TRUE(AllClose(out, reference::LayerNorm(x, w, b, 1e-5, rows, cols), 1e-5, 1e-6));
      LayerNorm(x.data(), w.data(), nullptr, 1e-5f, rows, cols, out.data());
      EXPECT_TRUE(AllClose(out, reference::LayerNorm(x, w, {}, 1e-5, rows, cols), 1e-5, 1e-6));
      std::vector<float> in_place = x;
      LayerNorm(in_place.data(), w.data(), nullptr, 1e-5f, rows, cols, in_place.data());
      EXPECT_EQ(in_place, out);
    }
  }
}

TEST(LayerNormTest, UnitWeightGivesZeroMeanUnitVariance) {
  std::mt19937 rng(22);
  const int64_t cols = 257;
  const std::vector<float> x = RandomFloats(rng, cols, -100.0f, 300.0f);
  std::vector<float> out(cols);
  LayerNorm(x.data(), std::vector<float>(cols, 1.0f).data(), nullptr, 0.0f, 1, cols, out.data());
  double mean = 0.0, var = 0.0;
  for (float v : out) mean += v;
  mean /= cols;
  for (float v : out) var += (v - mean) * (v - mean);
  var /= cols;
  EXPECT_NEAR(mean, 0.0, 1e-6);
  EXPECT_NEAR(var, 1.0, 1e-6);
}

}  // namespace
}  // namespace kvscope::kernels

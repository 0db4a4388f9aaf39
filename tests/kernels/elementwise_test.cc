// File: tests/kernels/elementwise_test.cc
//
// Embedding, SiluMul, Relu, AddInPlace, AddBias against the double references.
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "tests/kernels/reference_ops.h"

namespace kvscope::kernels {
namespace {

using ::testing::HasSubstr;
using reference::AllClose;
using reference::RandomFloats;

constexpr int64_t kRows[] = {1, 3, 7, 33};
constexpr int64_t kCols[] = {1, 5, 67, 129, 257, 1025};

TEST(EmbeddingTest, GathersRowsBitExact) {
  std::mt19937 rng(10);
  const int64_t vocab = 37, hidden = 67;
  const std::vector<float> table = RandomFloats(rng, vocab * hidden);
  const std::vector<int32_t> ids = {0, 36, 5, 5, 17};
  std::vector<float> out(ids.size() * hidden, -1.0f);
  ASSERT_TRUE(Embedding(table.data(), vocab, hidden, ids.data(), ids.size(), out.data()).ok());
  for (size_t i = 0; i < ids.size(); ++i) {
    for (int64_t c = 0; c < hidden; ++c) {
      ASSERT_EQ(out[i * hidden + c], table[ids[i] * hidden + c]) << i << "," << c;
    }
  }
  // Large enough to run in parallel.
  std::vector<int32_t> many(600);
  for (size_t i = 0; i < many.size(); ++i) many[i] = (i * 7) % vocab;
  std::vector<float> big(many.size() * hidden);
  ASSERT_TRUE(Embedding(table.data(), vocab, hidden, many.data(), many.size(), big.data()).ok());
  for (size_t i = 0; i < many.size(); ++i) {
    ASSERT_EQ(big[i * hidden + hidden - 1], table[many[i] * hidden + hidden - 1]);
  }
}

TEST(EmbeddingTest, RejectsOutOfRangeIdNamingPositionAndId) {
  const int64_t vocab = 16, hidden = 4;
  const std::vector<float> table(vocab * hidden, 1.0f);
  std::vector<float> out(4 * hidden, -7.0f);
  const std::vector<int32_t> too_big = {1, 2, 3, 99};
  absl::Status st = Embedding(table.data(), vocab, hidden, too_big.data(), 4, out.data());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("position 3"));
  EXPECT_THAT(st.message(), HasSubstr("99"));
  for (float v : out) EXPECT_EQ(v, -7.0f);  // nothing written
  const std::vector<int32_t> negative = {-1};
  st = Embedding(table.data(), vocab, hidden, negative.data(), 1, out.data());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("position 0"));
  EXPECT_THAT(st.message(), HasSubstr("-1"));
  const std::vector<int32_t> edge = {16};
  EXPECT_FALSE(Embedding(table.data(), vocab, hidden, edge.data(), 1, out.data()).ok());
}

TEST(SiluMulTest, MatchesReferenceWithStridedViews) {
  std::mt19937 rng(11);
  for (int64_t rows : kRows) {
    for (int64_t cols : kCols) {
      SCOPED_TRACE(testing::Message() << rows << "x" << cols);
      // A fused [rows, 2*cols] gate|up buffer, output with its own padding.
      const std::vector<float> fused = RandomFloats(rng, rows * 2 * cols, -8.0f, 8.0f);
      const int64_t out_stride = cols + 3;
      std::vector<float> out(rows * out_stride, 42.0f);
      SiluMul(fused.data(), 2 * cols, fused.data() + cols, 2 * cols, rows, cols, out.data(),
              out_stride);
      std::vector<float> got;
      std::vector<double> want;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; ++c) {
          got.push_back(out[r * out_stride + c]);
          want.push_back(reference::Silu(fused[r * 2 * cols + c]) * fused[r * 2 * cols + cols + c]);
        }
        for (int64_t c = cols; c < out_stride; ++c) ASSERT_EQ(out[r * out_stride + c], 42.0f);
      }
      EXPECT_TRUE(AllClose(got, want, 1e-6, 1e-7));
    }
  }
}

TEST(SiluMulTest, InPlaceOnGate) {
  std::mt19937 rng(12);
  const int64_t rows = 3, cols = 129;
  std::vector<float> fused = RandomFloats(rng, rows * 2 * cols, -4.0f, 4.0f);
  const std::vector<float> orig = fused;
  SiluMul(fused.data(), 2 * cols, fused.data() + cols, 2 * cols, rows, cols, fused.data(),
          2 * cols);
  std::vector<float> got;
  std::vector<double> want;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      got.push_back(fused[r * 2 * cols + c]);
      want.push_back(reference::Silu(orig[r * 2 * cols + c]) * orig[r * 2 * cols + cols + c]);
      ASSERT_EQ(fused[r * 2 * cols + cols + c], orig[r * 2 * cols + cols + c]);  // up untouched
    }
  }
  EXPECT_TRUE(AllClose(got, want, 1e-6, 1e-7));
}

TEST(ReluTest, ClampsNegativesOnly) {
  std::mt19937 rng(13);
  for (int64_t n : {1, 5, 257, 70001}) {
    std::vector<float> x = RandomFloats(rng, n);
    const std::vector<float> orig = x;
    Relu(x.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(x[i], orig[i] > 0 ? orig[i] : 0.0f) << i;
  }
  std::vector<float> special = {-0.0f, std::numeric_limits<float>::quiet_NaN(), -INFINITY};
  Relu(special.data(), 3);
  EXPECT_EQ(special[0], 0.0f);
  EXPECT_TRUE(std::isnan(special[1]));
  EXPECT_EQ(special[2], 0.0f);
}

TEST(AddInPlaceTest, AddsElementwise) {
  std::mt19937 rng(14);
  for (int64_t n : {1, 5, 257, 70001}) {
    std::vector<float> y = RandomFloats(rng, n);
    const std::vector<float> x = RandomFloats(rng, n);
    const std::vector<float> y0 = y;
    AddInPlace(y.data(), x.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(y[i], y0[i] + x[i]) << i;
  }
}

TEST(AddBiasTest, AddsToEveryRow) {
  std::mt19937 rng(15);
  for (int64_t rows : kRows) {
    for (int64_t cols : kCols) {
      std::vector<float> x = RandomFloats(rng, rows * cols);
      const std::vector<float> bias = RandomFloats(rng, cols);
      const std::vector<float> x0 = x;
      AddBias(x.data(), bias.data(), rows, cols);
      for (int64_t i = 0; i < rows * cols; ++i) ASSERT_EQ(x[i], x0[i] + bias[i % cols]) << i;
    }
  }
}

}  // namespace
}  // namespace kvscope::kernels

// File: tests/kernels/reference_ops_test.cc
//
// Closed-form checks of the double-precision references in reference_ops.h, so that the
// parity tests of the real ops compare against something known to be right.
#include "tests/kernels/reference_ops.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace kvscope::kernels::reference {
namespace {

constexpr double kPi = 3.14159265358979323846;

TEST(ReferenceOpsTest, RopeAtPositionZeroIsIdentity) {
  std::mt19937 rng(1);
  const int64_t heads = 3, head_dim = 16;
  const std::vector<float> x = RandomFloats(rng, heads * head_dim);
  std::vector<float> inv_freq(head_dim / 2);
  for (int i = 0; i < head_dim / 2; ++i) inv_freq[i] = std::pow(10000.0f, -2.0f * i / head_dim);
  const std::vector<double> out = Rope(x, 1, heads, head_dim, heads * head_dim, {0}, inv_freq,
                                       head_dim, 1.0);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(out[i], double{x[i]}) << i;
}

TEST(ReferenceOpsTest, RopePreservesPairNormAndRotatesByTheAngle) {
  std::mt19937 rng(2);
  const int64_t head_dim = 8;
  const std::vector<float> x = RandomFloats(rng, head_dim);
  const std::vector<float> inv_freq = {1.0f, 0.5f, 0.25f, 0.125f};
  const std::vector<double> out = Rope(x, 1, 1, head_dim, head_dim, {3}, inv_freq, head_dim, 1.0);
  for (int i = 0; i < 4; ++i) {
    const double before = std::hypot(double{x[i]}, double{x[i + 4]});
    const double after = std::hypot(out[i], out[i + 4]);
    EXPECT_NEAR(after, before, 1e-12);
    const double turned = std::atan2(out[i + 4], out[i]) - std::atan2(double{x[i + 4]}, double{x[i]});
    EXPECT_NEAR(std::remainder(turned - 3.0 * inv_freq[i], 2 * kPi), 0.0, 1e-12) << i;
  }
  // A quarter turn maps (1, 0) to (0, 1).
  const std::vector<double> quarter =
      Rope({1.0f, 0.0f}, 1, 1, 2, 2, {1}, {static_cast<float>(kPi / 2)}, 2, 1.0);
  EXPECT_NEAR(quarter[0], 0.0, 1e-7);
  EXPECT_NEAR(quarter[1], 1.0, 1e-7);
}

TEST(ReferenceOpsTest, RmsNormOfConstantVector) {
  const int64_t cols = 5;
  const std::vector<float> x(cols, 3.0f);
  const std::vector<float> w = {1.0f, 2.0f, 0.5f, -1.0f, 0.0f};
  const std::vector<double> out = RmsNorm(x, w, 1e-6, 1, cols);
  const double expected = 3.0 / std::sqrt(9.0 + 1e-6);
  for (int64_t c = 0; c < cols; ++c) EXPECT_NEAR(out[c], expected * w[c], 1e-15);
}

TEST(ReferenceOpsTest, LayerNormHasZeroMeanUnitVariance) {
  std::mt19937 rng(3);
  const int64_t cols = 67;
  const std::vector<float> x = RandomFloats(rng, cols, -5.0f, 7.0f);
  const std::vector<double> out = LayerNorm(x, std::vector<float>(cols, 1.0f), {}, 0.0, 1, cols);
  double mean = 0.0, var = 0.0;
  for (double v : out) mean += v;
  mean /= cols;
  for (double v : out) var += (v - mean) * (v - mean);
  var /= cols;
  EXPECT_NEAR(mean, 0.0, 1e-12);
  EXPECT_NEAR(var, 1.0, 1e-12);
}

TEST(ReferenceOpsTest, SoftmaxOfEqualScoresIsUniform) {
  for (double p : Softmax(std::vector<double>(7, 123.0))) EXPECT_NEAR(p, 1.0 / 7, 1e-15);
}

TEST(ReferenceOpsTest, AttentionWithOneCachedTokenReturnsItsValue) {
  std::mt19937 rng(4);
  const int head_dim = 8;
  LogicalSeq seq;
  seq.entries.resize(1);
  seq.entries[0].push_back({0, RandomFloats(rng, head_dim), RandomFloats(rng, head_dim)});
  const AttentionResult r =
      Attention(RandomFloats(rng, 2 * head_dim), 1, 2, head_dim, {0}, {5}, {seq}, 1, 0.3);
  for (int h = 0; h < 2; ++h) {
    for (int d = 0; d < head_dim; ++d) {
      EXPECT_NEAR(r.out[h * head_dim + d], seq.entries[0][0].v[d], 1e-15);
    }
    EXPECT_EQ(r.probs[0][h][0], 1.0);
  }
}

TEST(ReferenceOpsTest, LinearWithIdentityWeightCopiesInput) {
  const std::vector<float> x = {1.0f, -2.0f, 3.0f, 4.0f, 5.0f, 6.0f};
  const std::vector<float> w = {1, 0, 0, 9, 0, 1, 0, 9, 0, 0, 1, 9};  // ldw 4
  const std::vector<double> y = Linear(x, 2, 3, w.data(), 3, 4, {}, {});
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(y[i], double{x[i]});
}

TEST(ReferenceOpsTest, SampleDistributionClosedForms) {
  // Equal logits, top_p = 0.5: the two lowest indices, half each.
  std::vector<double> d = SampleDistribution({1, 1, 1, 1}, 1.0, 0, 0.5);
  EXPECT_EQ(d, (std::vector<double>{0.5, 0.5, 0.0, 0.0}));
  // top_k = 1 is one-hot on the (lowest) argmax.
  d = SampleDistribution({0, 3, 3, 1}, 0.7, 1, 1.0);
  EXPECT_EQ(d, (std::vector<double>{0.0, 1.0, 0.0, 0.0}));
  // No truncation: plain softmax.
  d = SampleDistribution({0.0f, std::log(3.0f)}, 1.0, 0, 1.0);
  EXPECT_NEAR(d[0], 0.25, 1e-7);
  EXPECT_NEAR(d[1], 0.75, 1e-7);
  EXPECT_EQ(SampleFrom({0.25, 0.0, 0.75}, 0.2), 0);
  EXPECT_EQ(SampleFrom({0.25, 0.0, 0.75}, 0.25), 2);
}

}  // namespace
}  // namespace kvscope::kernels::reference

// File: tests/kernels/sampling_test.cc
//
// Argmax and SampleToken: ties, greedy limits, exact agreement with the reference
// distribution for fixed u, and draw statistics.
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

std::vector<float> NormalLogits(std::mt19937& rng, int64_t vocab, float sigma) {
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(vocab);
  for (float& x : v) x = dist(rng);
  return v;
}

TEST(ArgmaxTest, LowestIndexOnTies) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> logits = {
      1, 5, 5, 2,                   // tie -> 1
      -INFINITY, -INFINITY, -INFINITY, -INFINITY,  // all equal -> 0
      nan, 3, nan, 3,               // NaN ignored -> 1
      0, 0, 0, 7,                   // -> 3
  };
  std::vector<int32_t> ids(4, -1);
  Argmax(logits.data(), 4, 4, ids.data());
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 0, 1, 3}));
}

TEST(ArgmaxTest, ManyRowsMatchLoop) {
  std::mt19937 rng(60);
  const int64_t rows = 33, vocab = 5003;
  std::vector<float> logits = NormalLogits(rng, rows * vocab, 1.0f);
  for (int64_t r = 0; r < rows; ++r) logits[r * vocab + (r * 97) % vocab] = 10.0f;
  std::vector<int32_t> ids(rows);
  Argmax(logits.data(), rows, vocab, ids.data());
  for (int64_t r = 0; r < rows; ++r) EXPECT_EQ(ids[r], (r * 97) % vocab);
}

TEST(SampleTokenTest, GreedyLimits) {
  std::mt19937 rng(61);
  std::uniform_real_distribution<double> unif(0.0, 1.0);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> logits = NormalLogits(rng, 1000, 2.0f);
    logits[17 + trial] = logits[500 + trial] = 20.0f;  // tie: lower index wins
    const int32_t best = 17 + trial;
    int32_t argmax = -1;
    Argmax(logits.data(), 1, 1000, &argmax);
    ASSERT_EQ(argmax, best);
    const double u = unif(rng);
    EXPECT_EQ(SampleToken(logits.data(), 1000, 0.0f, 0, 1.0f, u), best);    // temperature 0
    EXPECT_EQ(SampleToken(logits.data(), 1000, -1.0f, 50, 0.5f, u), best);  // negative
    EXPECT_EQ(SampleToken(logits.data(), 1000, 1.5f, 1, 1.0f, u), best);    // top_k 1
    EXPECT_EQ(SampleToken(logits.data(), 1000, 1.5f, 0, 1e-6f, u), best);   // tiny top_p
    EXPECT_EQ(SampleToken(logits.data(), 1000, 1.5f, 0, 0.0f, u), best);    // top_p 0
  }
}

TEST(SampleTokenTest, TiesAtTheTopKBoundaryKeepLowerIndices) {
  const std::vector<float> logits = {1, 3, 3, 3, 0};
  for (double u : {0.0, 0.25, 0.49, 0.5, 0.75, 0.999999}) {
    const int32_t tok = SampleToken(logits.data(), 5, 1.0f, 2, 1.0f, u);
    EXPECT_EQ(tok, u < 0.5 ? 1 : 2) << u;
  }
  // Equal logits, top_p 0.5: exactly two tokens carry half the mass; 0.50001 needs three.
  const std::vector<float> flat = {2, 2, 2, 2};
  EXPECT_EQ(SampleToken(flat.data(), 4, 1.0f, 0, 0.5f, 0.99), 1);
  EXPECT_EQ(SampleToken(flat.data(), 4, 1.0f, 0, 0.50001f, 0.99), 2);
}

TEST(SampleTokenTest, MatchesReferenceForFixedU) {
  std::mt19937 rng(62);
  std::uniform_real_distribution<double> unif(0.0, 1.0);
  struct Config {
    int64_t vocab;
    float temperature;
    int32_t top_k;
    float top_p;
  };
  const Config configs[] = {
      {1, 1.0f, 0, 1.0f},       {5, 0.7f, 0, 1.0f},      {67, 1.0f, 10, 1.0f},
      {67, 1.3f, 0, 0.9f},      {257, 0.8f, 40, 0.95f},  {257, 1.0f, 300, 0.5f},
      {5003, 1.0f, 0, 0.8f},    {5003, 0.6f, 1000, 0.99f}, {152064, 1.0f, 0, 0.9f},
      {152064, 0.7f, 50, 1.0f}, {152064, 1.0f, 0, 1.0f},
  };
  for (const Config& c : configs) {
    SCOPED_TRACE(testing::Message() << "vocab " << c.vocab << " T " << c.temperature
                                    << " top_k " << c.top_k << " top_p " << c.top_p);
    const std::vector<float> logits = NormalLogits(rng, c.vocab, 3.0f);
    const std::vector<double> dist =
        reference::SampleDistribution(logits, c.temperature, c.top_k, c.top_p);
    const int draws = c.vocab > 10000 ? 20 : 500;
    for (int i = 0; i < draws; ++i) {
      const double u = unif(rng);
      const int32_t tok = SampleToken(logits.data(), c.vocab, c.temperature, c.top_k, c.top_p, u);
      ASSERT_EQ(tok, reference::SampleFrom(dist, u)) << "u " << u;
      ASSERT_EQ(tok, SampleToken(logits.data(), c.vocab, c.temperature, c.top_k, c.top_p, u));
    }
  }
}

TEST(SampleTokenTest, DrawFrequenciesMatchTruncatedDistribution) {
  std::mt19937 rng(63);
  const int64_t vocab = 50;
  const std::vector<float> logits = NormalLogits(rng, vocab, 1.5f);
  struct Config {
    float temperature;
    int32_t top_k;
    float top_p;
  };
  for (const Config& c : {Config{1.0f, 0, 1.0f}, Config{0.7f, 20, 0.9f}, Config{1.3f, 0, 0.6f}}) {
    SCOPED_TRACE(testing::Message() << "T " << c.temperature << " top_k " << c.top_k
                                    << " top_p " << c.top_p);
    const std::vector<double> dist =
        reference::SampleDistribution(logits, c.temperature, c.top_k, c.top_p);
    std::mt19937_64 gen(1234);
    std::uniform_real_distribution<double> unif(0.0, 1.0);
    const int kDraws = 200000;
    std::vector<int> counts(vocab, 0);
    for (int i = 0; i < kDraws; ++i) {
      ++counts[SampleToken(logits.data(), vocab, c.temperature, c.top_k, c.top_p, unif(gen))];
    }
    double max_dev = 0.0;
    for (int64_t i = 0; i < vocab; ++i) {
      if (dist[i] == 0.0) {
        EXPECT_EQ(counts[i], 0) << "dropped token " << i << " drawn";
      }
      max_dev = std::max(max_dev, std::abs(counts[i] / double{kDraws} - dist[i]));
    }
    EXPECT_LT(max_dev, 0.005);
  }
}

TEST(SampleTokenTest, EdgeValuesOfU) {
  const std::vector<float> logits = {0.0f, 1.0f, -INFINITY, 2.0f};
  EXPECT_EQ(SampleToken(logits.data(), 4, 1.0f, 0, 1.0f, 0.0), 0);
  EXPECT_EQ(SampleToken(logits.data(), 4, 1.0f, 0, 1.0f, std::nextafter(1.0, 0.0)), 3);
  EXPECT_EQ(SampleToken(logits.data(), 4, 1.0f, 0, 1.0f, 1.0), 3);   // clamped to last
  EXPECT_EQ(SampleToken(logits.data(), 4, 1.0f, 0, 1.0f, -0.5), 0);  // clamped to first
  // All -inf: falls back to argmax (index 0).
  const std::vector<float> dead(3, -INFINITY);
  EXPECT_EQ(SampleToken(dead.data(), 3, 1.0f, 0, 0.9f, 0.7), 0);
}

}  // namespace
}  // namespace kvscope::kernels

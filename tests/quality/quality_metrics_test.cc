// The pure quality metrics of engine/quality.h on hand-built distributions.
#include <cmath>
#include <limits>
#include <vector>

#include "engine/quality.h"
#include "gtest/gtest.h"

namespace kvscope::engine {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

TEST(KlDivergenceTest, IdenticalDistributionsGiveZero) {
  const std::vector<float> p = {0.5f, -1.0f, 3.0f, 2.0f, -7.5f};
  EXPECT_EQ(KlDivergence(p.data(), p.data(), 5), 0.0);
  // Logits that differ by a constant are the same distribution.
  std::vector<float> shifted = p;
  for (float& x : shifted) x += 10.0f;
  EXPECT_NEAR(KlDivergence(p.data(), shifted.data(), 5), 0.0, 1e-12);
}

TEST(KlDivergenceTest, TwoTokenDistributionsByHand) {
  // p = (1/2, 1/2); q = (1/4, 3/4) from logits (0, ln 3).
  const std::vector<float> p = {0.0f, 0.0f};
  const std::vector<float> q = {0.0f, static_cast<float>(std::log(3.0))};
  // KL(p‖q) = 1/2 ln(2) + 1/2 ln(2/3) = 1/2 ln(4/3).
  EXPECT_NEAR(KlDivergence(p.data(), q.data(), 2), 0.5 * std::log(4.0 / 3.0), 1e-7);
  // KL(q‖p) = 1/4 ln(1/2) + 3/4 ln(3/2): KL is not symmetric.
  EXPECT_NEAR(KlDivergence(q.data(), p.data(), 2),
              0.25 * std::log(0.5) + 0.75 * std::log(1.5), 1e-7);
}

TEST(KlDivergenceTest, DegenerateAndLargeLogits) {
  // p puts everything on token 0: KL = -ln q_0. q = (0.5, 0.5).
  const float ninf = -std::numeric_limits<float>::infinity();
  const std::vector<float> p = {0.0f, ninf};
  const std::vector<float> q = {1.0f, 1.0f};
  EXPECT_NEAR(KlDivergence(p.data(), q.data(), 2), std::log(2.0), 1e-12);
  // q gives zero probability where p does not: infinite.
  EXPECT_EQ(KlDivergence(q.data(), p.data(), 2), kInf);
  // Huge logits do not overflow (log-sum-exp): p = (1/2, 1/2), q = (1/4, 3/4).
  const std::vector<float> big_p = {1000.0f, 1000.0f};
  const std::vector<float> big_q = {2000.0f, 2000.0f + static_cast<float>(std::log(3.0))};
  EXPECT_NEAR(KlDivergence(big_p.data(), big_q.data(), 2), 0.5 * std::log(4.0 / 3.0), 1e-4);
}

TEST(KlDivergenceTest, NeverNegative) {
  std::vector<float> p(64), q(64);
  for (int i = 0; i < 64; ++i) {
    p[i] = static_cast<float>(std::sin(i * 0.7));
    q[i] = p[i] + 1e-7f * static_cast<float>(i % 3);
  }
  EXPECT_GE(KlDivergence(p.data(), q.data(), 64), 0.0);
}

TEST(Top1AgreeTest, ComparesArgmaxWithLowestIndexOnTies) {
  const std::vector<float> a = {0.1f, 2.0f, 1.0f};
  const std::vector<float> b = {-5.0f, 0.0f, -1.0f};
  const std::vector<float> c = {0.0f, 1.0f, 3.0f};
  EXPECT_TRUE(Top1Agree(a.data(), b.data(), 3));
  EXPECT_FALSE(Top1Agree(a.data(), c.data(), 3));
  const std::vector<float> tie = {1.0f, 1.0f, 0.0f};
  EXPECT_EQ(ArgmaxLogit(tie.data(), 3), 0);
  EXPECT_EQ(ArgmaxLogit(c.data(), 3), 2);
}

TEST(NegLogProbTest, UniformAndTwoToken) {
  const std::vector<float> uniform(8, 3.0f);
  EXPECT_NEAR(NegLogProb(uniform.data(), 8, 5), std::log(8.0), 1e-12);
  const std::vector<float> q = {0.0f, static_cast<float>(std::log(3.0))};
  EXPECT_NEAR(NegLogProb(q.data(), 2, 1), -std::log(0.75), 1e-7);
}

TEST(AggregateQualityTest, MeanPercentilesAndAgreement) {
  const QualityStats s = AggregateQuality({1.0, 2.0, 3.0, 4.0}, {true, false, true, true});
  EXPECT_EQ(s.steps, 4);
  EXPECT_DOUBLE_EQ(s.mean_kl, 2.5);
  EXPECT_DOUBLE_EQ(s.p50_kl, 2.5);
  EXPECT_NEAR(s.p90_kl, 3.7, 1e-12);
  EXPECT_NEAR(s.p99_kl, 3.97, 1e-12);
  EXPECT_DOUBLE_EQ(s.top1_agreement, 0.75);
  const QualityStats empty = AggregateQuality({}, {});
  EXPECT_EQ(empty.steps, 0);
  EXPECT_EQ(empty.mean_kl, 0.0);
  EXPECT_EQ(empty.top1_agreement, 0.0);
}

TEST(CompareLogitsTest, RowByRow) {
  const std::vector<std::vector<float>> p = {{0.0f, 0.0f}, {1.0f, 0.0f}};
  const std::vector<std::vector<float>> q = {{0.0f, static_cast<float>(std::log(3.0))},
                                             {1.0f, 0.0f}};
  auto s = CompareLogits(p, q);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->steps, 2);
  EXPECT_NEAR(s->mean_kl, 0.25 * std::log(4.0 / 3.0), 1e-7);
  // Step 0: p ties (argmax 0), q picks 1; step 1 agrees.
  EXPECT_DOUBLE_EQ(s->top1_agreement, 0.5);
  EXPECT_FALSE(CompareLogits(p, {q[0]}).ok());
  EXPECT_FALSE(CompareLogits({{0.0f}}, {{0.0f, 1.0f}}).ok());
}

TEST(LossyStrategyTest, Names) {
  EXPECT_TRUE(IsLossyStrategy("h2o"));
  EXPECT_TRUE(IsLossyStrategy("streaming"));
  EXPECT_TRUE(IsLossyStrategy("infinigen"));
  EXPECT_FALSE(IsLossyStrategy("paged"));
  EXPECT_FALSE(IsLossyStrategy("contiguous"));
}

}  // namespace
}  // namespace kvscope::engine

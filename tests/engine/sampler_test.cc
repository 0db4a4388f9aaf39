#include "engine/sampler.h"

#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace kvscope::engine {
namespace {

TEST(SamplerTest, GreedyPicksArgmax) {
  Sampler sampler({0.0f, 0, 1.0f, 5});
  const std::vector<float> logits = {0.1f, 3.0f, -1.0f, 2.9f};
  EXPECT_EQ(sampler.Next(logits.data(), 4), 1);
}

TEST(SamplerTest, SameSeedSameTokensOtherSeedOtherTokens) {
  const std::vector<float> logits = {1.0f, 1.1f, 0.9f, 1.05f, 0.95f, 1.2f};
  auto draw = [&](uint64_t seed) {
    Sampler s({1.0f, 0, 1.0f, seed});
    std::vector<int32_t> out;
    for (int i = 0; i < 50; ++i) out.push_back(s.Next(logits.data(), 6));
    return out;
  };
  EXPECT_EQ(draw(11), draw(11));
  EXPECT_NE(draw(11), draw(12));
}

TEST(SamplerTest, TopKOneIsGreedyAndTopKLimitsSupport) {
  const std::vector<float> logits = {0.0f, 2.0f, 1.0f, 1.9f, -3.0f};
  Sampler k1({2.0f, 1, 1.0f, 3});
  Sampler k2({5.0f, 2, 1.0f, 3});
  for (int i = 0; i < 200; ++i) {
    EXPECT_EQ(k1.Next(logits.data(), 5), 1);
    const int32_t t = k2.Next(logits.data(), 5);
    EXPECT_TRUE(t == 1 || t == 3) << t;
  }
}

TEST(SamplerTest, ValidatesParameters) {
  EXPECT_TRUE(ValidateSamplingParams({0.7f, 10, 0.9f, 1}).ok());
  EXPECT_FALSE(ValidateSamplingParams({-1.0f, 0, 1.0f, 1}).ok());
  EXPECT_FALSE(ValidateSamplingParams({1.0f, -2, 1.0f, 1}).ok());
  EXPECT_FALSE(ValidateSamplingParams({1.0f, 0, 0.0f, 1}).ok());
  EXPECT_FALSE(ValidateSamplingParams({1.0f, 0, 1.01f, 1}).ok());
}

}  // namespace
}  // namespace kvscope::engine

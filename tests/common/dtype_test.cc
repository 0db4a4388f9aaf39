#include "common/dtype.h"

#include <cmath>
#include <cstring>
#include <random>

#include "gtest/gtest.h"

namespace kvscope {
namespace {

TEST(DTypeTest, KnownBitPatterns) {
  EXPECT_EQ(Bf16ToF32(0x3f80), 1.0f);
  EXPECT_EQ(Bf16ToF32(0xc000), -2.0f);
  EXPECT_EQ(F16ToF32(0x3c00), 1.0f);
  EXPECT_EQ(F16ToF32(0xc000), -2.0f);
  EXPECT_EQ(F16ToF32(0x7bff), 65504.0f);
  EXPECT_EQ(F16ToF32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_TRUE(std::isinf(F16ToF32(0x7c00)));
  EXPECT_TRUE(std::isnan(F16ToF32(0x7e00)));
  EXPECT_EQ(F32ToBf16(1.0f), 0x3f80);
  EXPECT_EQ(F32ToF16(1.0f), 0x3c00);
  EXPECT_EQ(F32ToF16(1e6f), 0x7c00);  // overflow to infinity
}

TEST(DTypeTest, RoundTripsAreExactForRepresentableValues) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float b = Bf16ToF32(static_cast<uint16_t>(bits));
    if (!std::isnan(b)) {
      EXPECT_EQ(F32ToBf16(b), bits);
    }
    const float h = F16ToF32(static_cast<uint16_t>(bits));
    if (!std::isnan(h)) {
      ASSERT_EQ(F32ToF16(h), bits) << std::hex << bits;
    }
  }
}

TEST(DTypeTest, RoundingIsToNearest) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-100.0f, 100.0f);
  for (int i = 0; i < 10000; ++i) {
    const float x = dist(rng);
    const float b = Bf16ToF32(F32ToBf16(x));
    EXPECT_LE(std::fabs(b - x), std::fabs(x) * (1.0f / 256.0f));
    const float h = F16ToF32(F32ToF16(x));
    EXPECT_LE(std::fabs(h - x), std::fabs(x) * (1.0f / 2048.0f) + 1e-7f);
  }
}

TEST(DTypeTest, ParseAndConvert) {
  EXPECT_EQ(*ParseDType("BF16"), DType::kBF16);
  EXPECT_EQ(*ParseDType("F16"), DType::kF16);
  EXPECT_EQ(*ParseDType("F32"), DType::kF32);
  auto bad = ParseDType("I64");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("I64"), std::string::npos);
  const uint16_t bf16[3] = {0x3f80, 0x4000, 0xbf80};
  float out[3];
  ConvertToF32(DType::kBF16, bf16, 3, out);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], 2.0f);
  EXPECT_EQ(out[2], -1.0f);
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
}

}  // namespace
}  // namespace kvscope

// File: tests/kernels/rope_test.cc
//
// Rope against the double reference: full and partial rotary dims, strided token rows,
// large positions (float32 angle convention) and attention_scaling.
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

std::vector<float> InvFreq(int64_t rot_dim, float base) {
  std::vector<float> f(rot_dim / 2);
  for (int64_t i = 0; i < rot_dim / 2; ++i) {
    f[i] = static_cast<float>(1.0 / std::pow(double{base}, 2.0 * i / rot_dim));
  }
  return f;
}

TEST(RopeTest, MatchesReference) {
  std::mt19937 rng(30);
  std::uniform_int_distribution<int32_t> pos_dist(0, 32767);
  for (int64_t head_dim : {8, 16, 24, 64, 80, 128}) {
    for (int64_t rot_dim : {head_dim, head_dim / 2 - (head_dim / 2) % 2}) {
      for (int64_t tokens : {1, 3, 33}) {
        for (float scaling : {1.0f, 1.2f}) {
          SCOPED_TRACE(testing::Message() << "head_dim " << head_dim << " rot_dim " << rot_dim
                                          << " tokens " << tokens << " scaling " << scaling);
          const int64_t heads = 3;
          const int64_t stride = heads * head_dim + 5;  // e.g. q inside a fused qkv row
          std::vector<float> x = RandomFloats(rng, tokens * stride);
          std::vector<int32_t> positions(tokens);
          for (auto& p : positions) p = pos_dist(rng);
          positions[0] = 0;
          const std::vector<float> inv_freq = InvFreq(rot_dim, 10000.0f);
          const std::vector<double> want = reference::Rope(x, tokens, heads, head_dim, stride,
                                                           positions, inv_freq, rot_dim, scaling);
          Rope(x.data(), tokens, heads, head_dim, stride, positions.data(), inv_freq.data(),
               rot_dim, scaling);
          EXPECT_TRUE(AllClose(x, want, 2e-6, 1e-6));
          // Untouched: dims >= rot_dim and the row padding, bit-exact.
          for (int64_t t = 0; t < tokens; ++t) {
            for (int64_t i = heads * head_dim; i < stride; ++i) {
              ASSERT_EQ(x[t * stride + i], static_cast<float>(want[t * stride + i]));
            }
            for (int64_t h = 0; h < heads; ++h) {
              for (int64_t d = rot_dim; d < head_dim; ++d) {
                const int64_t i = t * stride + h * head_dim + d;
                ASSERT_EQ(x[i], static_cast<float>(want[i]));
              }
            }
          }
        }
      }
    }
  }
}

TEST(RopeTest, PositionZeroIsIdentity) {
  std::mt19937 rng(31);
  const int64_t heads = 2, head_dim = 64;
  std::vector<float> x = RandomFloats(rng, heads * head_dim);
  const std::vector<float> orig = x;
  const int32_t pos = 0;
  const std::vector<float> inv_freq = InvFreq(head_dim, 10000.0f);
  Rope(x.data(), 1, heads, head_dim, heads * head_dim, &pos, inv_freq.data(), head_dim, 1.0f);
  EXPECT_EQ(x, orig);
}

TEST(RopeTest, PreservesPairNorm) {
  std::mt19937 rng(32);
  const int64_t head_dim = 128;
  std::vector<float> x = RandomFloats(rng, head_dim);
  const std::vector<float> orig = x;
  const int32_t pos = 12345;
  const std::vector<float> inv_freq = InvFreq(head_dim, 1000000.0f);
  Rope(x.data(), 1, 1, head_dim, head_dim, &pos, inv_freq.data(), head_dim, 1.0f);
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    EXPECT_NEAR(std::hypot(x[i], x[i + 64]), std::hypot(orig[i], orig[i + 64]), 1e-6) << i;
  }
}

// The angle is float(position) * inv_freq rounded to float32, as PyTorch computes it; at large
// positions that differs from the double-precision angle by far more than the tolerance.
TEST(RopeTest, UsesFloat32Angle) {
  const int32_t pos = 30004;
  const float inv_freq = 0.7f;
  std::vector<float> x = {1.0f, 0.0f};
  Rope(x.data(), 1, 1, 2, 2, &pos, &inv_freq, 2, 1.0f);
  const float angle32 = static_cast<float>(pos) * inv_freq;
  const double angle64 = double{pos} * double{inv_freq};
  EXPECT_NEAR(x[0], std::cos(double{angle32}), 1e-7);
  EXPECT_NEAR(x[1], std::sin(double{angle32}), 1e-7);
  EXPECT_GT(std::abs(std::cos(angle64) - std::cos(double{angle32})), 1e-4);  // test is sharp
}

}  // namespace
}  // namespace kvscope::kernels

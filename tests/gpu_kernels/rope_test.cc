// File: tests/gpu_kernels/rope_test.cc
//
// kernels/cuda/rope.h against the CPU Rope (kernels/ops.h) for every dtype: full and partial
// rotation, padded token rows (a q slice of a fused qkv row), an odd head_dim, large
// positions, and frequency tables of the default, linear and llama3 kinds (built here the way
// engine::RopeInvFreq builds them: float64, rounded to float32) with attention_scaling != 1.
// The whole buffer is compared, so writes outside the rotated dimensions show.
#include "kernels/cuda/rope.h"

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "tests/gpu_kernels/gpu_test_util.h"

namespace kvscope::kernels::cuda {
namespace {

using testing::Download;
using testing::DTypeLabel;
using testing::NormalizedError;
using testing::NormTolerance;
using testing::RoundTo;
using testing::ToDouble;
using testing::Upload;
using testing::UploadRaw;

constexpr DType kAllDTypes[] = {DType::kF32, DType::kF16, DType::kBF16};

void SyncOrFail() { ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess); }

enum class Scaling { kDefault, kLinear, kLlama3 };

// inv_freq[i] = base^(-2i/rot_dim), then the scaling's adjustment (transformers'
// _compute_default / _compute_linear (factor 4) / _compute_llama3 (factor 8, low 1, high 4,
// original context 8192) rope parameters).
std::vector<float> InvFreq(int64_t rot_dim, double base, Scaling scaling) {
  std::vector<float> out(rot_dim / 2);
  for (int64_t i = 0; i < rot_dim / 2; ++i) {
    double f = 1.0 / std::pow(base, static_cast<double>(2 * i) / static_cast<double>(rot_dim));
    if (scaling == Scaling::kLinear) f /= 4.0;
    if (scaling == Scaling::kLlama3) {
      const double factor = 8.0, low = 1.0, high = 4.0, original = 8192.0;
      const double wavelen = 2.0 * M_PI / f;
      if (wavelen > original / low) {
        f /= factor;
      } else if (wavelen >= original / high) {
        const double smooth = (original / wavelen - low) / (high - low);
        f = (1.0 - smooth) * f / factor + smooth * f;
      }
    }
    out[i] = static_cast<float>(f);
  }
  return out;
}

struct Case {
  int64_t tokens, heads, head_dim, rot_dim, pad;
  Scaling scaling;
  float attention_scaling;
};

TEST(RopeTest, MatchesCpu) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  const Case cases[] = {
      {7, 3, 64, 64, 0, Scaling::kDefault, 1.0f},
      {13, 5, 128, 128, 37, Scaling::kLlama3, 1.0f},     // padded rows
      {9, 2, 80, 32, 3, Scaling::kLinear, 1.0f},        // partial rotation
      {5, 3, 65, 64, 1, Scaling::kDefault, 1.25f},      // odd head_dim, scaled cos/sin
      {1, 1, 2, 2, 0, Scaling::kDefault, 1.0f},
      {33, 4, 256, 256, 0, Scaling::kLlama3, 1.0f},
      {6, 2, 96, 0, 0, Scaling::kDefault, 1.0f},        // rot_dim 0: nothing changes
  };
  std::mt19937 rng(21);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int32_t> position(0, 40000);
  for (DType dtype : kAllDTypes) {
    for (const Case& c : cases) {
      SCOPED_TRACE(::testing::Message() << DTypeLabel(dtype) << " tokens " << c.tokens
                                        << " heads " << c.heads << " head_dim " << c.head_dim
                                        << " rot_dim " << c.rot_dim << " pad " << c.pad);
      const int64_t stride = c.heads * c.head_dim + c.pad;
      std::vector<float> x(c.tokens * stride);
      for (float& v : x) v = normal(rng);
      x = RoundTo(x, dtype);
      std::vector<int32_t> positions(c.tokens);
      for (int32_t& p : positions) p = position(rng);
      positions[0] = 0;  // the identity rotation (up to attention_scaling)
      if (c.tokens > 1) positions[1] = 131071;
      std::vector<float> inv_freq = InvFreq(c.rot_dim, 500000.0, c.scaling);
      if (inv_freq.empty()) inv_freq.push_back(0.0f);  // a valid device pointer

      std::vector<float> expected = x;
      kernels::Rope(expected.data(), c.tokens, c.heads, c.head_dim, stride, positions.data(),
                    inv_freq.data(), c.rot_dim, c.attention_scaling);
      DeviceBuffer d_x = Upload(x, dtype);
      DeviceBuffer d_pos = UploadRaw(positions);
      DeviceBuffer d_freq = UploadRaw(inv_freq);
      ASSERT_TRUE(Rope(d_x.data(), c.tokens, c.heads, c.head_dim, stride, d_pos.as<int32_t>(),
                       d_freq.as<float>(), c.rot_dim, c.attention_scaling, dtype, nullptr)
                      .ok());
      SyncOrFail();
      const std::vector<float> got = Download(d_x, x.size(), dtype);
      EXPECT_LE(NormalizedError(got, ToDouble(expected)), NormTolerance(dtype));
      if (dtype == DType::kF32) {
        // The precision contract makes float32 agree to a few ulp.
        EXPECT_LE(NormalizedError(got, ToDouble(expected)), 1e-6);
      }
      // Dimensions >= rot_dim and the row padding are untouched, bit for bit.
      for (int64_t t = 0; t < c.tokens; ++t) {
        for (int64_t h = 0; h < c.heads; ++h) {
          for (int64_t d = c.rot_dim; d < c.head_dim; ++d) {
            const int64_t i = t * stride + h * c.head_dim + d;
            ASSERT_EQ(got[i], x[i]) << "token " << t << " head " << h << " dim " << d;
          }
        }
        for (int64_t i = t * stride + c.heads * c.head_dim; i < (t + 1) * stride; ++i) {
          ASSERT_EQ(got[i], x[i]) << "padding of token " << t;
        }
      }
    }
  }
}

TEST(RopeTest, BadArgumentsAreRefused) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  DeviceBuffer buf = testing::Poisoned(4096, 4);
  auto* x = buf.data();
  const auto* pos = buf.as<int32_t>();
  const auto* freq = buf.as<float>();
  const auto kBad = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(Rope(x, 2, 2, 64, 128, pos, freq, 63, 1.0f, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(Rope(x, 2, 2, 64, 128, pos, freq, 66, 1.0f, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(Rope(x, 2, 2, 64, 127, pos, freq, 64, 1.0f, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(Rope(x, -2, 2, 64, 128, pos, freq, 64, 1.0f, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(Rope(x, 2, -2, 64, 128, pos, freq, 64, 1.0f, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(Rope(x, 2, 2, 64, 128, pos, freq, -2, 1.0f, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(Rope(x, 2, 2, 64, 128, pos, freq, 64, 1.0f, static_cast<DType>(42), nullptr).code(),
            kBad);
  EXPECT_EQ(Rope(x, 2, 2, 64, 128, nullptr, freq, 64, 1.0f, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(Rope(x, 1, 1, 8192, 8192, pos, freq, 8192, 1.0f, DType::kF32, nullptr).code(),
            kBad);  // above kMaxRopeRotDim
  SyncOrFail();
  for (float f : Download(buf, 4096, DType::kF32)) ASSERT_TRUE(std::isnan(f));  // untouched
}

// Argument checks happen on the host before anything touches the device, so this runs on
// machines without a GPU too (the pointers are never dereferenced).
TEST(RopeTest, ArgumentChecksNeedNoDevice) {
  void* x = reinterpret_cast<void*>(uintptr_t{1} << 20);
  const auto* pos = static_cast<const int32_t*>(x);
  const auto* freq = static_cast<const float*>(x);
  const auto kBad = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(Rope(x, 2, 2, 64, 128, pos, freq, 31, 1.0f, DType::kBF16, nullptr).code(), kBad);
  EXPECT_EQ(Rope(x, 2, 2, 64, 128, pos, freq, 130, 1.0f, DType::kBF16, nullptr).code(), kBad);
  EXPECT_EQ(Rope(x, 2, 2, 64, 100, pos, freq, 64, 1.0f, DType::kBF16, nullptr).code(), kBad);
  EXPECT_EQ(Rope(x, 2, 2, 64, 128, pos, freq, 64, 1.0f, static_cast<DType>(7), nullptr).code(),
            kBad);
  EXPECT_TRUE(Rope(nullptr, 0, 2, 64, 128, nullptr, nullptr, 64, 1.0f, DType::kF32, nullptr)
                  .ok());
}

}  // namespace
}  // namespace kvscope::kernels::cuda

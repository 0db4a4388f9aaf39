// File: tests/gpu_kernels/sampling_test.cc
//
// kernels/cuda/sampling.h against the CPU Argmax and SampleToken (kernels/ops.h): identical
// token choices on many random rows and u values, for every dtype (the CPU sees the logits
// rounded to the dtype), including rows full of ties (quantized logits), NaN / -inf / +inf
// entries, greedy rows, and the top_k / top_p edge values (0, 1, k >= vocab, negative,
// top_p <= 0, top_p >= 1, tiny top_p, uniform rows where the top-p cut is exact), u at 0 and
// at / above 1, and a 256K vocabulary.
//
// The kernel sums masses exactly where the CPU rounds float64 sums; the two can differ only
// when u * total (or top_p * total) falls within ~1e-12 of a boundary, which random u values
// here do not hit (see kernels/cuda/sampling.h).
#include "kernels/cuda/sampling.h"

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

using testing::DownloadRaw;
using testing::DTypeLabel;
using testing::Poisoned;
using testing::RoundTo;
using testing::Upload;
using testing::UploadRaw;

constexpr DType kAllDTypes[] = {DType::kF32, DType::kF16, DType::kBF16};

void SyncOrFail() { ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess); }

// Random logits [rows, vocab] whose rows exercise different regimes (by row index).
std::vector<float> MakeLogits(int64_t rows, int64_t vocab, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int64_t> col(0, vocab - 1);
  std::vector<float> logits(rows * vocab);
  for (int64_t r = 0; r < rows; ++r) {
    float* row = logits.data() + r * vocab;
    const int kind = static_cast<int>(r % 8);
    for (int64_t i = 0; i < vocab; ++i) {
      float v = normal(rng) * (kind == 1 ? 6.0f : 2.0f);  // kind 1: peaked distributions
      if (kind == 2) v = std::round(v * 2.0f) / 2.0f;     // many ties
      if (kind == 3) v = std::round(v);                   // many more ties
      if (kind == 4) v = 0.0f;                            // uniform
      row[i] = v;
    }
    if (kind == 5) {  // special values
      for (int j = 0; j < 5; ++j) row[col(rng)] = NAN;
      for (int j = 0; j < 5; ++j) row[col(rng)] = -INFINITY;
      row[col(rng)] = -0.0f;
    }
    if (kind == 6) {  // the maximum tied at two places
      float mx = row[0];
      for (int64_t i = 0; i < vocab; ++i) mx = std::max(mx, row[i]);
      row[col(rng)] = mx;
      row[col(rng)] = mx;
    }
    if (kind == 7 && r % 16 == 7) row[col(rng)] = INFINITY;  // +inf wins outright
  }
  return logits;
}

TEST(ArgmaxTest, MatchesCpuIncludingTiesAndNaN) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(31);
  for (const auto& [rows, vocab] :
       {std::pair<int64_t, int64_t>{41, 5003}, {3, 1}, {2, 262144}, {64, 32000}}) {
    std::vector<float> logits = MakeLogits(rows, vocab, rng);
    if (rows >= 2 && vocab > 1) {
      for (int64_t i = 0; i < vocab; ++i) logits[i] = NAN;           // all NaN: 0
      for (int64_t i = 0; i < vocab; ++i) logits[vocab + i] = -INFINITY;  // all -inf: 0
      logits[vocab + vocab - 1] = NAN;
    }
    for (DType dtype : kAllDTypes) {
      SCOPED_TRACE(::testing::Message() << DTypeLabel(dtype) << " " << rows << "x" << vocab);
      const std::vector<float> rounded = RoundTo(logits, dtype);  // more ties in 16 bits
      std::vector<int32_t> expected(rows);
      kernels::Argmax(rounded.data(), rows, vocab, expected.data());
      DeviceBuffer d_logits = Upload(rounded, dtype);
      DeviceBuffer d_ids = Poisoned(rows, sizeof(int32_t));
      ASSERT_TRUE(Argmax(d_logits.data(), rows, vocab, d_ids.as<int32_t>(), dtype, nullptr).ok());
      SyncOrFail();
      EXPECT_EQ(DownloadRaw<int32_t>(d_ids, rows), expected);
    }
  }
}

// Runs SampleTokens on the rounded logits for `params` and several u vectors, and compares
// every choice with SampleToken.
void ExpectSameChoices(const std::vector<float>& logits, int64_t rows, int64_t vocab,
                       const std::vector<SamplingParams>& params, int draws, std::mt19937& rng,
                       DType dtype) {
  const std::vector<float> rounded = RoundTo(logits, dtype);
  DeviceBuffer d_logits = Upload(rounded, dtype);
  DeviceBuffer d_params = UploadRaw(params);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  int mismatches = 0;
  for (int draw = 0; draw < draws; ++draw) {
    std::vector<double> u(rows);
    for (int64_t r = 0; r < rows; ++r) {
      u[r] = uniform(rng);
      if (draw == 0 && r % 5 == 0) u[r] = 0.0;                 // first interval
      if (draw == 0 && r % 5 == 1) u[r] = 0.5;
      if (draw == 1 && r % 7 == 0) u[r] = 1.0;                 // out of range: last token
      if (draw == 1 && r % 7 == 1) u[r] = -0.5;                // out of range: as 0
      if (draw == 1 && r % 7 == 2) u[r] = NAN;                 // as 0
    }
    DeviceBuffer d_u = UploadRaw(u);
    DeviceBuffer d_ids = Poisoned(rows, sizeof(int32_t));
    ASSERT_TRUE(SampleTokens(d_logits.data(), rows, vocab, d_params.as<SamplingParams>(),
                             d_u.as<double>(), d_ids.as<int32_t>(), dtype, nullptr)
                    .ok());
    SyncOrFail();
    const std::vector<int32_t> got = DownloadRaw<int32_t>(d_ids, rows);
    for (int64_t r = 0; r < rows; ++r) {
      const SamplingParams& p = params[r];
      const int32_t want = kernels::SampleToken(rounded.data() + r * vocab, vocab,
                                                p.temperature, p.top_k, p.top_p, u[r]);
      if (got[r] != want && ++mismatches <= 20) {
        ADD_FAILURE() << DTypeLabel(dtype) << " row " << r << " (kind " << r % 8
                      << ") vocab " << vocab << " temperature " << p.temperature << " top_k "
                      << p.top_k << " top_p " << p.top_p << " u " << u[r] << ": device "
                      << got[r] << ", cpu " << want;
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(SampleTokensTest, MatchesCpuOnManyRowsAndParameters) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(32);
  const float temperatures[] = {1.0f, 0.7f, 1.9f, 0.0f, 0.05f, -1.0f};
  const float top_ps[] = {1.0f, 0.9f, 0.5f, 0.0f, 1e-6f, 0.999f, -0.5f, 1.5f, 0.3f};
  for (const auto& [rows, vocab] : {std::pair<int64_t, int64_t>{240, 1013},
                                    {64, 2}, {40, 1}, {96, 32003}}) {
    const std::vector<float> logits = MakeLogits(rows, vocab, rng);
    const int32_t top_ks[] = {0, 1, 2, 5, 50, static_cast<int32_t>(vocab) - 1,
                              static_cast<int32_t>(vocab), static_cast<int32_t>(vocab) + 5, -3};
    std::vector<SamplingParams> params(rows);
    for (int64_t r = 0; r < rows; ++r) {
      // Cycle through the parameter lists with co-prime periods, so that every kind of row
      // (period 8) meets every value.
      params[r].temperature = temperatures[(r / 8) % 6];
      params[r].top_k = top_ks[(r / 3) % 9];
      params[r].top_p = top_ps[(r / 5) % 9];
    }
    for (DType dtype : kAllDTypes) {
      SCOPED_TRACE(::testing::Message() << DTypeLabel(dtype) << " " << rows << "x" << vocab);
      ExpectSameChoices(logits, rows, vocab, params, /*draws=*/vocab > 10000 ? 4 : 12, rng,
                        dtype);
    }
  }
}

TEST(SampleTokensTest, UniformRowsCutTopPExactly) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  // All logits equal: every p is 1, sums are exact integers on both sides, so top_p * vocab
  // landing exactly on an integer tests the ">=" of the cut and the id order of ties.
  std::mt19937 rng(33);
  const int64_t vocab = 1000, rows = 8;
  const std::vector<float> logits(rows * vocab, 1.5f);
  std::vector<SamplingParams> params(rows);
  const float top_ps[] = {0.5f, 0.25f, 0.125f, 0.001f, 0.0f, 0.75f, 0.5f, 0.5f};
  const int32_t top_ks[] = {0, 0, 0, 0, 0, 0, 10, 999};
  for (int64_t r = 0; r < rows; ++r) params[r] = {1.0f, top_ks[r], top_ps[r]};
  for (DType dtype : kAllDTypes) {
    ExpectSameChoices(logits, rows, vocab, params, 20, rng, dtype);
  }
}

TEST(SampleTokensTest, LargeVocabulary) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(34);
  const int64_t vocab = 256000, rows = 8;
  const std::vector<float> logits = MakeLogits(rows, vocab, rng);
  std::vector<SamplingParams> params(rows);
  const SamplingParams choices[] = {{0.8f, 0, 1.0f},  {1.0f, 50, 1.0f}, {1.0f, 0, 0.9f},
                                    {0.6f, 40, 0.95f}, {1.3f, 0, 0.5f},  {1.0f, 1000, 0.8f},
                                    {0.0f, 0, 1.0f},  {1.0f, 255999, 0.99f}};
  for (int64_t r = 0; r < rows; ++r) params[r] = choices[r];
  ExpectSameChoices(logits, rows, vocab, params, 4, rng, DType::kF32);
  ExpectSameChoices(logits, rows, vocab, params, 2, rng, DType::kBF16);
}

TEST(SampleTokensTest, IsDeterministic) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(35);
  const int64_t vocab = 50000, rows = 16;
  const std::vector<float> logits = MakeLogits(rows, vocab, rng);
  std::vector<SamplingParams> params(rows, SamplingParams{1.0f, 0, 0.9f});
  std::vector<double> u(rows);
  for (int64_t r = 0; r < rows; ++r) u[r] = (r + 0.5) / rows;
  DeviceBuffer d_logits = Upload(logits, DType::kF32);
  DeviceBuffer d_params = UploadRaw(params);
  DeviceBuffer d_u = UploadRaw(u);
  std::vector<int32_t> first;
  for (int run = 0; run < 5; ++run) {
    DeviceBuffer d_ids = Poisoned(rows, sizeof(int32_t));
    ASSERT_TRUE(SampleTokens(d_logits.data(), rows, vocab, d_params.as<SamplingParams>(),
                             d_u.as<double>(), d_ids.as<int32_t>(), DType::kF32, nullptr)
                    .ok());
    SyncOrFail();
    const std::vector<int32_t> ids = DownloadRaw<int32_t>(d_ids, rows);
    if (run == 0) {
      first = ids;
    } else {
      EXPECT_EQ(ids, first);
    }
  }
}

TEST(SamplingTest, BadArgumentsAreRefused) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  DeviceBuffer buf = Poisoned(256, 8);
  const void* logits = buf.data();
  auto* ids = buf.as<int32_t>();
  const auto* params = buf.as<SamplingParams>();
  const auto* u = buf.as<double>();
  const auto kBad = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(Argmax(logits, -1, 8, ids, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(Argmax(logits, 2, 0, ids, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(Argmax(logits, 2, int64_t{1} << 31, ids, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(Argmax(logits, 2, 8, ids, static_cast<DType>(42), nullptr).code(), kBad);
  EXPECT_EQ(Argmax(nullptr, 2, 8, ids, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(SampleTokens(logits, 2, 0, params, u, ids, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(SampleTokens(logits, -2, 8, params, u, ids, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(SampleTokens(logits, 2, 8, nullptr, u, ids, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(SampleTokens(logits, 2, 8, params, nullptr, ids, DType::kF32, nullptr).code(),
            kBad);
  EXPECT_EQ(SampleTokens(logits, 2, 8, params, u, ids, static_cast<DType>(42), nullptr).code(),
            kBad);
  EXPECT_TRUE(Argmax(nullptr, 0, 8, nullptr, DType::kBF16, nullptr).ok());
  SyncOrFail();
  for (int32_t v : DownloadRaw<int32_t>(buf, 512)) ASSERT_EQ(v, -1);  // untouched
}

// Argument checks happen on the host before anything touches the device, so this runs on
// machines without a GPU too (the pointers are never dereferenced).
TEST(SamplingTest, ArgumentChecksNeedNoDevice) {
  void* p = reinterpret_cast<void*>(uintptr_t{1} << 20);
  auto* ids = static_cast<int32_t*>(p);
  const auto* params = static_cast<const SamplingParams*>(p);
  const auto* u = static_cast<const double*>(p);
  const auto kBad = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(Argmax(p, 2, 0, ids, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(Argmax(p, 2, 8, ids, static_cast<DType>(42), nullptr).code(), kBad);
  EXPECT_EQ(SampleTokens(p, 2, -8, params, u, ids, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(SampleTokens(p, 2, 8, params, u, ids, static_cast<DType>(42), nullptr).code(),
            kBad);
  EXPECT_EQ(SampleTokens(p, 2, 8, params, nullptr, ids, DType::kBF16, nullptr).code(), kBad);
  EXPECT_TRUE(SampleTokens(nullptr, 0, 8, nullptr, nullptr, nullptr, DType::kF16, nullptr).ok());
}

}  // namespace
}  // namespace kvscope::kernels::cuda

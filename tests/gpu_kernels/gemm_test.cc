// File: tests/gpu_kernels/gemm_test.cc
//
// kernels/cuda/gemm.h against the CPU Linear (kernels/ops.h) for every dtype: odd shapes,
// m == 1 (decode), a weight slice with ldw > k at an unaligned offset, bias through the
// epilogue, accumulate into y, k == 0, and the argument checks. Inputs are rounded to the
// dtype before the CPU runs; y is poisoned unless accumulating (then it holds the addend).
#include "kernels/cuda/gemm.h"

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <utility>
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
using testing::Poisoned;
using testing::RoundTo;
using testing::ToDouble;
using testing::Upload;

constexpr DType kAllDTypes[] = {DType::kF32, DType::kF16, DType::kBF16};

void SyncOrFail() { ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess); }

std::vector<float> RandomVector(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

struct Shape {
  int64_t m, k, n, ldw, w_offset;  // w starts w_offset elements into its buffer
};

TEST(GemmTest, LinearMatchesCpu) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  absl::StatusOr<Gemm> created = Gemm::Create();
  ASSERT_TRUE(created.ok()) << created.status();
  Gemm gemm = std::move(*created);  // a moved Gemm stays usable
  const Shape shapes[] = {
      {1, 1, 1, 1, 0},       {3, 17, 5, 17, 0},     {37, 129, 65, 131, 0},
      {64, 512, 96, 512, 0}, {5, 300, 33, 1000, 3}, {1, 4096, 11, 4096, 0},
      {1, 257, 1001, 257, 1}, {130, 64, 7, 96, 32},
  };
  std::mt19937 rng(41);
  for (DType dtype : kAllDTypes) {
    for (const Shape& s : shapes) {
      for (bool with_bias : {false, true}) {
        for (bool accumulate : {false, true}) {
          SCOPED_TRACE(::testing::Message()
                       << DTypeLabel(dtype) << " m " << s.m << " k " << s.k << " n " << s.n
                       << " ldw " << s.ldw << " offset " << s.w_offset
                       << (with_bias ? " bias" : "") << (accumulate ? " accumulate" : ""));
          const std::vector<float> x = RoundTo(RandomVector(s.m * s.k, rng), dtype);
          const std::vector<float> w_buf =
              RoundTo(RandomVector(s.w_offset + s.n * s.ldw, rng), dtype);
          const std::vector<float> bias = RoundTo(RandomVector(s.n, rng), dtype);
          const std::vector<float> y0 = RoundTo(RandomVector(s.m * s.n, rng), dtype);
          std::vector<float> expected = y0;
          kernels::Linear(x.data(), s.m, s.k, w_buf.data() + s.w_offset, s.n, s.ldw,
                          with_bias ? bias.data() : nullptr, expected.data(), accumulate);

          DeviceBuffer d_x = Upload(x, dtype);
          DeviceBuffer d_w = Upload(w_buf, dtype);
          DeviceBuffer d_bias = Upload(bias, dtype);
          DeviceBuffer d_y = accumulate ? Upload(y0, dtype) : Poisoned(s.m * s.n, DTypeSize(dtype));
          const void* w = d_w.as<uint8_t>() + s.w_offset * DTypeSize(dtype);
          const absl::Status st =
              gemm.Linear(d_x.data(), s.m, s.k, w, s.n, s.ldw,
                          with_bias ? d_bias.data() : nullptr, d_y.data(), accumulate, dtype,
                          nullptr);
          ASSERT_TRUE(st.ok()) << st;
          SyncOrFail();
          EXPECT_LE(NormalizedError(Download(d_y, s.m * s.n, dtype), ToDouble(expected)),
                    NormTolerance(dtype));
        }
      }
    }
  }
}

TEST(GemmTest, EmptyInnerDimensionGivesBiasOrZero) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  absl::StatusOr<Gemm> gemm = Gemm::Create(/*workspace_bytes=*/0);
  ASSERT_TRUE(gemm.ok()) << gemm.status();
  const int64_t m = 3, n = 5;
  const std::vector<float> bias = {1, 2, 3, 4, 5};
  DeviceBuffer d_bias = Upload(bias, DType::kBF16);
  DeviceBuffer d_y = Poisoned(m * n, 2);
  ASSERT_TRUE(gemm->Linear(nullptr, m, 0, nullptr, n, 1, d_bias.data(), d_y.data(), false,
                           DType::kBF16, nullptr)
                  .ok());
  SyncOrFail();
  const std::vector<float> y = Download(d_y, m * n, DType::kBF16);
  for (int64_t i = 0; i < m * n; ++i) ASSERT_EQ(y[i], bias[i % n]);
  ASSERT_TRUE(gemm->Linear(nullptr, m, 0, nullptr, n, 1, nullptr, d_y.data(), false,
                           DType::kBF16, nullptr)
                  .ok());
  SyncOrFail();
  for (float v : Download(d_y, m * n, DType::kBF16)) ASSERT_EQ(v, 0.0f);
}

TEST(GemmTest, BadArgumentsAreRefused) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  absl::StatusOr<Gemm> gemm = Gemm::Create();
  ASSERT_TRUE(gemm.ok()) << gemm.status();
  DeviceBuffer buf = Poisoned(256, 4);
  const void* p = buf.data();
  void* y = buf.data();
  const auto kBad = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(gemm->Linear(p, -1, 4, p, 4, 4, nullptr, y, false, DType::kF32, nullptr).code(),
            kBad);
  EXPECT_EQ(gemm->Linear(p, 2, -4, p, 4, 4, nullptr, y, false, DType::kF32, nullptr).code(),
            kBad);
  EXPECT_EQ(gemm->Linear(p, 2, 4, p, -4, 4, nullptr, y, false, DType::kF32, nullptr).code(),
            kBad);
  EXPECT_EQ(gemm->Linear(p, 2, 4, p, 4, 3, nullptr, y, false, DType::kF32, nullptr).code(),
            kBad);  // ldw < k
  EXPECT_EQ(gemm->Linear(p, 2, 4, p, 4, 4, nullptr, y, false, static_cast<DType>(42), nullptr)
                .code(),
            kBad);
  EXPECT_EQ(gemm->Linear(nullptr, 2, 4, p, 4, 4, nullptr, y, false, DType::kF32, nullptr)
                .code(),
            kBad);
  EXPECT_TRUE(
      gemm->Linear(nullptr, 0, 4, nullptr, 4, 4, nullptr, nullptr, false, DType::kF32, nullptr)
          .ok());
  SyncOrFail();
  for (float f : Download(buf, 256, DType::kF32)) ASSERT_TRUE(std::isnan(f));  // untouched
}

}  // namespace
}  // namespace kvscope::kernels::cuda

// File: tests/gpu_kernels/norm_test.cc
//
// kernels/cuda/norm.h against the CPU RmsNorm / LayerNorm (kernels/ops.h) for every dtype on
// odd shapes (1 column, fewer columns than a warp, more than a block's threads, not a multiple
// of anything). The fused variants are checked against the unfused sequence: the stored
// residual bit for bit (it is one float add and one rounding), the output within tolerance.
#include "kernels/cuda/norm.h"

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
constexpr std::pair<int64_t, int64_t> kShapes[] = {{1, 1}, {3, 17}, {7, 1000}, {5, 4097},
                                                   {2, 8191}, {67, 96}};
constexpr float kEps = 1e-5f;

std::vector<float> RandomVector(size_t n, std::mt19937& rng, float mean, float scale) {
  std::normal_distribution<float> dist(mean, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

void SyncOrFail() { ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess); }

// The CPU reference of the op: RmsNorm, or LayerNorm with or without bias.
enum class Op { kRms, kLayer, kLayerNoBias };

std::vector<float> CpuNorm(Op op, const std::vector<float>& x, const std::vector<float>& w,
                           const std::vector<float>& b, int64_t rows, int64_t cols) {
  std::vector<float> out(x.size());
  if (op == Op::kRms) {
    kernels::RmsNorm(x.data(), w.data(), kEps, rows, cols, out.data());
  } else {
    kernels::LayerNorm(x.data(), w.data(), op == Op::kLayer ? b.data() : nullptr, kEps, rows,
                       cols, out.data());
  }
  return out;
}

absl::Status GpuNorm(Op op, const void* x, const void* w, const void* b, int64_t rows,
                     int64_t cols, void* out, DType dtype) {
  if (op == Op::kRms) return RmsNorm(x, w, kEps, rows, cols, out, dtype, nullptr);
  return LayerNorm(x, w, op == Op::kLayer ? b : nullptr, kEps, rows, cols, out, dtype, nullptr);
}

absl::Status GpuAddNorm(Op op, void* residual, const void* x, const void* w, const void* b,
                        int64_t rows, int64_t cols, void* out, DType dtype) {
  if (op == Op::kRms) return AddRmsNorm(residual, x, w, kEps, rows, cols, out, dtype, nullptr);
  return AddLayerNorm(residual, x, w, op == Op::kLayer ? b : nullptr, kEps, rows, cols, out,
                      dtype, nullptr);
}

const char* OpLabel(Op op) {
  switch (op) {
    case Op::kRms: return "rms";
    case Op::kLayer: return "layer";
    case Op::kLayerNoBias: return "layer-nobias";
  }
  return "?";
}

TEST(NormTest, MatchesCpuOnOddShapes) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(11);
  for (DType dtype : kAllDTypes) {
    for (Op op : {Op::kRms, Op::kLayer, Op::kLayerNoBias}) {
      for (const auto& [rows, cols] : kShapes) {
        SCOPED_TRACE(::testing::Message()
                     << DTypeLabel(dtype) << " " << OpLabel(op) << " " << rows << "x" << cols);
        // An offset mean makes LayerNorm's centering matter.
        const std::vector<float> x = RoundTo(RandomVector(rows * cols, rng, 0.5f, 2.0f), dtype);
        const std::vector<float> w = RoundTo(RandomVector(cols, rng, 1.0f, 0.2f), dtype);
        const std::vector<float> b = RoundTo(RandomVector(cols, rng, 0.0f, 0.5f), dtype);
        const std::vector<float> expected = CpuNorm(op, x, w, b, rows, cols);
        DeviceBuffer d_x = Upload(x, dtype);
        DeviceBuffer d_w = Upload(w, dtype);
        DeviceBuffer d_b = Upload(b, dtype);
        DeviceBuffer d_out = Poisoned(rows * cols, DTypeSize(dtype));
        ASSERT_TRUE(
            GpuNorm(op, d_x.data(), d_w.data(), d_b.data(), rows, cols, d_out.data(), dtype)
                .ok());
        SyncOrFail();
        EXPECT_LE(NormalizedError(Download(d_out, rows * cols, dtype), ToDouble(expected)),
                  NormTolerance(dtype));
        // In place (out == x).
        ASSERT_TRUE(
            GpuNorm(op, d_x.data(), d_w.data(), d_b.data(), rows, cols, d_x.data(), dtype).ok());
        SyncOrFail();
        EXPECT_LE(NormalizedError(Download(d_x, rows * cols, dtype), ToDouble(expected)),
                  NormTolerance(dtype));
      }
    }
  }
}

TEST(NormTest, FusedResidualAddMatchesAddThenNorm) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(12);
  for (DType dtype : kAllDTypes) {
    for (Op op : {Op::kRms, Op::kLayer, Op::kLayerNoBias}) {
      for (const auto& [rows, cols] : kShapes) {
        SCOPED_TRACE(::testing::Message()
                     << DTypeLabel(dtype) << " " << OpLabel(op) << " " << rows << "x" << cols);
        const int64_t n = rows * cols;
        const std::vector<float> x = RoundTo(RandomVector(n, rng, 0.0f, 1.0f), dtype);
        const std::vector<float> residual = RoundTo(RandomVector(n, rng, 0.3f, 3.0f), dtype);
        const std::vector<float> w = RoundTo(RandomVector(cols, rng, 1.0f, 0.2f), dtype);
        const std::vector<float> b = RoundTo(RandomVector(cols, rng, 0.0f, 0.5f), dtype);
        // residual + x is one float32 add of the stored values, then one rounding to dtype.
        std::vector<float> new_residual = residual;
        kernels::AddInPlace(new_residual.data(), x.data(), n);
        new_residual = RoundTo(new_residual, dtype);
        const std::vector<float> expected = CpuNorm(op, new_residual, w, b, rows, cols);

        for (bool out_is_x : {false, true}) {
          SCOPED_TRACE(out_is_x ? "out == x" : "separate out");
          DeviceBuffer d_x = Upload(x, dtype);
          DeviceBuffer d_residual = Upload(residual, dtype);
          DeviceBuffer d_w = Upload(w, dtype);
          DeviceBuffer d_b = Upload(b, dtype);
          DeviceBuffer d_out = Poisoned(n, DTypeSize(dtype));
          void* out = out_is_x ? d_x.data() : d_out.data();
          ASSERT_TRUE(GpuAddNorm(op, d_residual.data(), d_x.data(), d_w.data(), d_b.data(),
                                 rows, cols, out, dtype)
                          .ok());
          SyncOrFail();
          EXPECT_EQ(Download(d_residual, n, dtype), new_residual);  // bit exact
          const std::vector<float> got = Download(out_is_x ? d_x : d_out, n, dtype);
          EXPECT_LE(NormalizedError(got, ToDouble(expected)), NormTolerance(dtype));
          if (!out_is_x) {
            EXPECT_EQ(Download(d_x, n, dtype), x);  // x is not written
          }
        }
      }
    }
  }
}

TEST(NormTest, ConstantRowHasTheClosedFormValue) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  // RmsNorm of a constant row c is c / sqrt(c^2 + eps) * w; LayerNorm of it is the bias.
  const int64_t cols = 1537;
  const std::vector<float> x(cols, 3.0f), w(cols, 2.0f), b(cols, 0.25f);
  DeviceBuffer d_x = Upload(x, DType::kF32);
  DeviceBuffer d_w = Upload(w, DType::kF32);
  DeviceBuffer d_b = Upload(b, DType::kF32);
  DeviceBuffer d_out = Poisoned(cols, 4);
  ASSERT_TRUE(RmsNorm(d_x.data(), d_w.data(), kEps, 1, cols, d_out.data(), DType::kF32,
                      nullptr)
                  .ok());
  SyncOrFail();
  const double rms = 3.0 / std::sqrt(9.0 + kEps) * 2.0;
  for (float v : Download(d_out, cols, DType::kF32)) ASSERT_NEAR(v, rms, 1e-6);
  ASSERT_TRUE(LayerNorm(d_x.data(), d_w.data(), d_b.data(), kEps, 1, cols, d_out.data(),
                        DType::kF32, nullptr)
                  .ok());
  SyncOrFail();
  for (float v : Download(d_out, cols, DType::kF32)) ASSERT_NEAR(v, 0.25, 1e-6);
}

TEST(NormTest, BadArgumentsAreRefused) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  DeviceBuffer buf = Poisoned(64, 4);
  DeviceBuffer other = Poisoned(64, 4);
  void* p = buf.data();
  void* q = other.data();
  const auto kBad = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(RmsNorm(p, p, kEps, -1, 4, q, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(RmsNorm(p, p, kEps, 2, 0, q, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(RmsNorm(p, p, kEps, 2, -3, q, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(RmsNorm(p, p, NAN, 2, 4, q, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(RmsNorm(p, p, -1.0f, 2, 4, q, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(RmsNorm(p, p, kEps, 2, 4, q, static_cast<DType>(42), nullptr).code(), kBad);
  EXPECT_EQ(RmsNorm(p, nullptr, kEps, 2, 4, q, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(LayerNorm(p, p, nullptr, kEps, 2, 0, q, DType::kBF16, nullptr).code(), kBad);
  EXPECT_EQ(AddRmsNorm(nullptr, p, p, kEps, 2, 4, q, DType::kF16, nullptr).code(), kBad);
  EXPECT_EQ(AddRmsNorm(q, p, p, kEps, 2, 4, q, DType::kF16, nullptr).code(), kBad);  // out==res
  EXPECT_EQ(AddLayerNorm(q, p, p, p, kEps, 2, 4, q, DType::kF16, nullptr).code(), kBad);
  EXPECT_TRUE(RmsNorm(nullptr, nullptr, kEps, 0, 4, nullptr, DType::kF32, nullptr).ok());
  SyncOrFail();
  for (float f : Download(other, 64, DType::kF32)) ASSERT_TRUE(std::isnan(f));  // untouched
}

// Argument checks happen on the host before anything touches the device, so this runs on
// machines without a GPU too (the pointers are never dereferenced).
TEST(NormTest, ArgumentChecksNeedNoDevice) {
  void* p = reinterpret_cast<void*>(uintptr_t{1} << 20);
  void* q = reinterpret_cast<void*>(uintptr_t{1} << 21);
  const auto kBad = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(RmsNorm(p, p, kEps, 2, 0, q, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(RmsNorm(p, p, INFINITY, 2, 4, q, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(LayerNorm(p, p, p, kEps, 2, 4, q, static_cast<DType>(42), nullptr).code(), kBad);
  EXPECT_EQ(AddRmsNorm(q, p, p, kEps, 2, 4, q, DType::kF16, nullptr).code(), kBad);
  EXPECT_EQ(AddLayerNorm(nullptr, p, p, p, kEps, 2, 4, q, DType::kF16, nullptr).code(), kBad);
  EXPECT_TRUE(LayerNorm(nullptr, nullptr, nullptr, kEps, 0, 4, nullptr, DType::kBF16, nullptr)
                  .ok());
}

}  // namespace
}  // namespace kvscope::kernels::cuda

// File: tests/gpu_kernels/elementwise_test.cc
//
// kernels/cuda/elementwise.h against the CPU reference (kernels/ops.h) on random inputs with
// odd sizes, for every dtype: the inputs are rounded to the dtype (RoundTo) before the CPU
// runs, outputs are poisoned before the GPU runs. Embedding is compared bit for bit,
// including the out-of-range-id contract (zero rows plus the error word).
#include "kernels/cuda/elementwise.h"

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "tests/gpu_kernels/gpu_test_util.h"

namespace kvscope::kernels::cuda {
namespace {

using testing::Download;
using testing::DownloadRaw;
using testing::DTypeLabel;
using testing::NormalizedError;
using testing::NormTolerance;
using testing::Poisoned;
using testing::RoundTo;
using testing::ToDouble;
using testing::Upload;
using testing::UploadRaw;

constexpr DType kAllDTypes[] = {DType::kF32, DType::kF16, DType::kBF16};
const DType kBadDType = static_cast<DType>(42);

std::vector<float> RandomVector(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

void SyncOrFail() { ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess); }

// The bytes of rows [r] of a [rows, cols] buffer of `dtype`.
std::vector<uint8_t> RowBytes(const std::vector<uint8_t>& all, int64_t r, int64_t cols,
                              DType dtype) {
  const size_t row = static_cast<size_t>(cols) * DTypeSize(dtype);
  return std::vector<uint8_t>(all.begin() + r * row, all.begin() + (r + 1) * row);
}

TEST(EmbeddingTest, CopiesRowsBitExact) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(1);
  const int64_t vocab = 1001, hidden = 77, n = 37;
  const std::vector<float> table = RandomVector(vocab * hidden, rng);
  std::vector<int32_t> ids(n);
  std::uniform_int_distribution<int32_t> pick(0, vocab - 1);
  for (int32_t& id : ids) id = pick(rng);
  ids[0] = 0;
  ids[1] = vocab - 1;
  ids[2] = ids[3];  // a repeated id
  for (DType dtype : kAllDTypes) {
    SCOPED_TRACE(DTypeLabel(dtype));
    const std::vector<uint8_t> table_bytes = testing::ToDType(table, dtype);
    DeviceBuffer d_table = UploadRaw(table_bytes);
    DeviceBuffer d_ids = UploadRaw(ids);
    DeviceBuffer d_out = Poisoned(n * hidden, DTypeSize(dtype));
    DeviceBuffer d_word = UploadRaw(std::vector<uint64_t>{0});
    ASSERT_TRUE(Embedding(d_table.data(), vocab, hidden, d_ids.as<int32_t>(), n, d_out.data(),
                          dtype, d_word.as<uint64_t>(), nullptr)
                    .ok());
    SyncOrFail();
    const std::vector<uint8_t> out =
        DownloadRaw<uint8_t>(d_out, n * hidden * DTypeSize(dtype));
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(RowBytes(out, i, hidden, dtype), RowBytes(table_bytes, ids[i], hidden, dtype))
          << "position " << i;
    }
    EXPECT_EQ(DownloadRaw<uint64_t>(d_word, 1)[0], 0u);
    EXPECT_TRUE(EmbeddingErrorToStatus(0, vocab).ok());
  }
}

TEST(EmbeddingTest, OutOfRangeIdsGiveZeroRowsAndAnErrorNamingTheFirst) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(2);
  const int64_t vocab = 1001, hidden = 33, n = 29;
  const std::vector<float> table = RandomVector(vocab * hidden, rng);
  std::vector<int32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>((i * 37) % vocab);
  ids[20] = INT32_MAX;
  ids[5] = static_cast<int32_t>(vocab);  // the lowest bad position
  ids[9] = -3;
  // The CPU reference's message for the same ids.
  std::vector<float> cpu_out(n * hidden);
  const absl::Status cpu =
      kernels::Embedding(table.data(), vocab, hidden, ids.data(), n, cpu_out.data());
  ASSERT_EQ(cpu.code(), absl::StatusCode::kInvalidArgument);
  for (DType dtype : kAllDTypes) {
    SCOPED_TRACE(DTypeLabel(dtype));
    const std::vector<uint8_t> table_bytes = testing::ToDType(table, dtype);
    DeviceBuffer d_table = UploadRaw(table_bytes);
    DeviceBuffer d_ids = UploadRaw(ids);
    for (bool with_word : {true, false}) {
      DeviceBuffer d_out = Poisoned(n * hidden, DTypeSize(dtype));
      DeviceBuffer d_word = UploadRaw(std::vector<uint64_t>{0});
      ASSERT_TRUE(Embedding(d_table.data(), vocab, hidden, d_ids.as<int32_t>(), n,
                            d_out.data(), dtype, with_word ? d_word.as<uint64_t>() : nullptr,
                            nullptr)
                      .ok());
      SyncOrFail();
      const std::vector<uint8_t> out =
          DownloadRaw<uint8_t>(d_out, n * hidden * DTypeSize(dtype));
      const std::vector<uint8_t> zeros(hidden * DTypeSize(dtype), 0);
      for (int64_t i = 0; i < n; ++i) {
        if (i == 5 || i == 9 || i == 20) {
          EXPECT_EQ(RowBytes(out, i, hidden, dtype), zeros) << "position " << i;
        } else {
          EXPECT_EQ(RowBytes(out, i, hidden, dtype), RowBytes(table_bytes, ids[i], hidden, dtype))
              << "position " << i;
        }
      }
      const uint64_t word = DownloadRaw<uint64_t>(d_word, 1)[0];
      if (!with_word) {
        EXPECT_EQ(word, 0u);
        continue;
      }
      const absl::Status st = EmbeddingErrorToStatus(word, vocab);
      EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_EQ(st.message(), cpu.message());  // "... token id 1001 at position 5 ..."
      EXPECT_NE(st.message().find("position 5"), std::string::npos) << st;
    }
  }
}

TEST(EmbeddingTest, BadArgumentsAreRefused) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  DeviceBuffer buf = Poisoned(64, 4);
  const auto* ids = buf.as<int32_t>();
  EXPECT_EQ(Embedding(buf.data(), -1, 4, ids, 2, buf.data(), DType::kF32, nullptr, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Embedding(buf.data(), 4, -4, ids, 2, buf.data(), DType::kF32, nullptr, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Embedding(buf.data(), 4, 4, ids, -2, buf.data(), DType::kF32, nullptr, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      Embedding(buf.data(), 4, 4, ids, 2, buf.data(), kBadDType, nullptr, nullptr).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Embedding(buf.data(), 4, 4, nullptr, 2, buf.data(), DType::kF32, nullptr, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

TEST(SiluMulTest, MatchesCpuOnStridedViews) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(3);
  for (DType dtype : kAllDTypes) {
    for (const auto& [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {13, 301}, {3, 4099}}) {
      SCOPED_TRACE(::testing::Message() << DTypeLabel(dtype) << " " << rows << "x" << cols);
      // A fused gate|up buffer with padding: gate = columns [0, cols), up = [cols, 2*cols).
      const int64_t in_stride = 2 * cols + 3;
      const int64_t out_stride = cols + 5;
      const std::vector<float> in = RoundTo(RandomVector(rows * in_stride, rng, 3.0f), dtype);
      std::vector<float> expected(rows * out_stride, NAN);  // padding stays poisoned
      kernels::SiluMul(in.data(), in_stride, in.data() + cols, in_stride, rows, cols,
                       expected.data(), out_stride);
      DeviceBuffer d_in = Upload(in, dtype);
      DeviceBuffer d_out = Poisoned(rows * out_stride, DTypeSize(dtype));
      const size_t es = DTypeSize(dtype);
      ASSERT_TRUE(SiluMul(d_in.data(), in_stride, d_in.as<uint8_t>() + cols * es, in_stride,
                          rows, cols, d_out.data(), out_stride, dtype, nullptr)
                      .ok());
      SyncOrFail();
      const std::vector<float> out = Download(d_out, rows * out_stride, dtype);
      std::vector<float> got;
      std::vector<double> want;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < out_stride; ++c) {
          if (c < cols) {
            got.push_back(out[r * out_stride + c]);
            want.push_back(expected[r * out_stride + c]);
          } else {
            EXPECT_TRUE(std::isnan(out[r * out_stride + c])) << "padding written at " << r;
          }
        }
      }
      EXPECT_LE(NormalizedError(got, want), NormTolerance(dtype));

      // In place on gate (out == gate, same stride).
      ASSERT_TRUE(SiluMul(d_in.data(), in_stride, d_in.as<uint8_t>() + cols * es, in_stride,
                          rows, cols, d_in.data(), in_stride, dtype, nullptr)
                      .ok());
      SyncOrFail();
      const std::vector<float> inplace = Download(d_in, rows * in_stride, dtype);
      got.clear();
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; ++c) got.push_back(inplace[r * in_stride + c]);
        // up and the padding are untouched.
        for (int64_t c = cols; c < in_stride; ++c) {
          ASSERT_EQ(inplace[r * in_stride + c], in[r * in_stride + c]);
        }
      }
      EXPECT_LE(NormalizedError(got, want), NormTolerance(dtype));
    }
  }
}

TEST(ReluTest, MatchesCpuExactly) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(4);
  for (DType dtype : kAllDTypes) {
    SCOPED_TRACE(DTypeLabel(dtype));
    std::vector<float> x = RoundTo(RandomVector(10007, rng), dtype);
    x[0] = -0.0f;
    x[1] = 0.0f;
    x[2] = -INFINITY;
    x[3] = INFINITY;
    std::vector<float> expected = x;
    kernels::Relu(expected.data(), static_cast<int64_t>(expected.size()));
    DeviceBuffer d_x = Upload(x, dtype);
    ASSERT_TRUE(Relu(d_x.data(), static_cast<int64_t>(x.size()), dtype, nullptr).ok());
    SyncOrFail();
    const std::vector<float> got = Download(d_x, x.size(), dtype);
    for (size_t i = 0; i < x.size(); ++i) {
      ASSERT_EQ(std::memcmp(&got[i], &expected[i], sizeof(float)), 0)
          << i << ": " << got[i] << " vs " << expected[i];
    }
  }
}

TEST(AddTest, AddInPlaceAddBiasAndAddBiasResidualMatchCpu) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(5);
  for (DType dtype : kAllDTypes) {
    SCOPED_TRACE(DTypeLabel(dtype));
    const int64_t rows = 9, cols = 333, n = rows * cols;
    const std::vector<float> x = RoundTo(RandomVector(n, rng), dtype);
    const std::vector<float> y = RoundTo(RandomVector(n, rng), dtype);
    const std::vector<float> bias = RoundTo(RandomVector(cols, rng), dtype);
    DeviceBuffer d_x = Upload(x, dtype);
    DeviceBuffer d_bias = Upload(bias, dtype);
    {
      std::vector<float> expected = y;
      kernels::AddInPlace(expected.data(), x.data(), n);
      DeviceBuffer d_y = Upload(y, dtype);
      ASSERT_TRUE(AddInPlace(d_y.data(), d_x.data(), n, dtype, nullptr).ok());
      SyncOrFail();
      EXPECT_LE(NormalizedError(Download(d_y, n, dtype), ToDouble(expected)),
                NormTolerance(dtype));
    }
    {
      std::vector<float> expected = y;
      kernels::AddBias(expected.data(), bias.data(), rows, cols);
      DeviceBuffer d_y = Upload(y, dtype);
      ASSERT_TRUE(AddBias(d_y.data(), d_bias.data(), rows, cols, dtype, nullptr).ok());
      SyncOrFail();
      EXPECT_LE(NormalizedError(Download(d_y, n, dtype), ToDouble(expected)),
                NormTolerance(dtype));
    }
    for (bool with_bias : {true, false}) {
      SCOPED_TRACE(with_bias ? "bias" : "no bias");
      std::vector<float> expected = y;  // residual += x + bias
      std::vector<float> xb = x;
      if (with_bias) kernels::AddBias(xb.data(), bias.data(), rows, cols);
      kernels::AddInPlace(expected.data(), xb.data(), n);
      DeviceBuffer d_residual = Upload(y, dtype);
      ASSERT_TRUE(AddBiasResidual(d_residual.data(), d_x.data(),
                                  with_bias ? d_bias.data() : nullptr, rows, cols, dtype,
                                  nullptr)
                      .ok());
      SyncOrFail();
      EXPECT_LE(NormalizedError(Download(d_residual, n, dtype), ToDouble(expected)),
                NormTolerance(dtype));
      EXPECT_EQ(Download(d_x, n, dtype), x);  // x is not written
    }
  }
}

TEST(ElementwiseTest, BadArgumentsAreRefusedAndEmptyShapesAreNoOps) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  DeviceBuffer buf = Poisoned(64, 4);
  void* p = buf.data();
  const auto kBad = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(SiluMul(p, 4, p, 4, -1, 4, p, 4, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(SiluMul(p, 3, p, 4, 2, 4, p, 4, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(SiluMul(p, 4, p, 4, 2, 4, p, 3, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(SiluMul(p, 4, p, 4, 2, 4, p, 4, kBadDType, nullptr).code(), kBad);
  EXPECT_EQ(Relu(p, -1, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(Relu(p, 4, kBadDType, nullptr).code(), kBad);
  EXPECT_EQ(Relu(nullptr, 4, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(AddInPlace(p, p, -5, DType::kBF16, nullptr).code(), kBad);
  EXPECT_EQ(AddBias(p, nullptr, 2, 2, DType::kF16, nullptr).code(), kBad);
  EXPECT_EQ(AddBias(p, p, 2, -2, DType::kF16, nullptr).code(), kBad);
  EXPECT_EQ(AddBiasResidual(p, nullptr, p, 2, 2, DType::kF16, nullptr).code(), kBad);
  EXPECT_EQ(AddBiasResidual(p, p, p, 2, 2, kBadDType, nullptr).code(), kBad);
  // Empty shapes launch nothing (null pointers are fine then).
  EXPECT_TRUE(Relu(nullptr, 0, DType::kF32, nullptr).ok());
  EXPECT_TRUE(AddBias(nullptr, nullptr, 0, 7, DType::kF32, nullptr).ok());
  EXPECT_TRUE(SiluMul(nullptr, 4, nullptr, 4, 0, 4, nullptr, 4, DType::kBF16, nullptr).ok());
  SyncOrFail();
  for (float f : Download(buf, 64, DType::kF32)) ASSERT_TRUE(std::isnan(f));  // untouched
}

// Argument checks happen on the host before anything touches the device, so this runs on
// machines without a GPU too (the pointers are never dereferenced).
TEST(ElementwiseTest, ArgumentChecksNeedNoDevice) {
  void* p = reinterpret_cast<void*>(uintptr_t{1} << 20);
  const auto* ids = static_cast<const int32_t*>(p);
  const auto kBad = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(Embedding(p, 4, 4, ids, -2, p, DType::kF32, nullptr, nullptr).code(), kBad);
  EXPECT_EQ(Embedding(p, 4, 4, ids, 2, p, kBadDType, nullptr, nullptr).code(), kBad);
  EXPECT_EQ(SiluMul(p, 3, p, 4, 2, 4, p, 4, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(SiluMul(p, 4, p, 4, 2, 4, p, 4, kBadDType, nullptr).code(), kBad);
  EXPECT_EQ(Relu(p, -1, DType::kF32, nullptr).code(), kBad);
  EXPECT_EQ(AddInPlace(p, p, 4, kBadDType, nullptr).code(), kBad);
  EXPECT_EQ(AddBias(p, nullptr, 2, 2, DType::kF16, nullptr).code(), kBad);
  EXPECT_EQ(AddBiasResidual(p, p, p, -2, 2, DType::kBF16, nullptr).code(), kBad);
  EXPECT_TRUE(Relu(nullptr, 0, DType::kF32, nullptr).ok());
  const absl::Status st = EmbeddingErrorToStatus(
      (static_cast<uint64_t>(INT32_MAX - 7) << 32) | static_cast<uint32_t>(-5), 100);
  EXPECT_EQ(st.message(), "Embedding: token id -5 at position 7 is outside [0, 100)");
}

}  // namespace
}  // namespace kvscope::kernels::cuda

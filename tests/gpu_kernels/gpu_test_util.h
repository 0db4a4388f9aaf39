// File: tests/gpu_kernels/gpu_test_util.h
//
// Helpers shared by the GPU kernel tests: skipping without a device, host-side conversion
// of float32 data to the device storage types, upload/download with poisoning, and the
// normalized error ||actual - expected|| / ||expected|| the tolerances are stated in.
// Header-only; thread-compatible.
#ifndef KVSCOPE_TESTS_GPU_KERNELS_GPU_TEST_UTIL_H_
#define KVSCOPE_TESTS_GPU_KERNELS_GPU_TEST_UTIL_H_

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"
#include "kernels/cuda/device_buffer.h"

namespace kvscope::kernels::cuda::testing {

// Skips the current test (with the reason) when no CUDA device is visible.
#define KVSCOPE_SKIP_WITHOUT_GPU()                                                   \
  do {                                                                               \
    if (::kvscope::kernels::cuda::VisibleDeviceCount() == 0) {                       \
      GTEST_SKIP() << "no CUDA device visible (run on the GPU machine: bench/gpu/check.sh)"; \
    }                                                                                \
  } while (0)

// Tolerance on the normalized error for outputs stored in `dtype` (float32 ~1e-6 scale
// arithmetic, half types one rounding of the output plus accumulated input roundings).
inline double NormTolerance(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 1e-5;
    case DType::kF16: return 5e-3;
    case DType::kBF16: return 1e-2;
  }
  return 0.0;
}

// float32 values -> bytes of `dtype` (round to nearest even).
inline std::vector<uint8_t> ToDType(const std::vector<float>& values, DType dtype) {
  std::vector<uint8_t> bytes(values.size() * DTypeSize(dtype));
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(bytes.data() + 4 * i, &values[i], 4);
    } else {
      const uint16_t h = dtype == DType::kBF16 ? F32ToBf16(values[i]) : F32ToF16(values[i]);
      std::memcpy(bytes.data() + 2 * i, &h, 2);
    }
  }
  return bytes;
}

// Bytes of `dtype` -> float32 values.
inline std::vector<float> FromDType(const std::vector<uint8_t>& bytes, DType dtype) {
  std::vector<float> values(bytes.size() / DTypeSize(dtype));
  ConvertToF32(dtype, bytes.data(), values.size(), values.data());
  return values;
}

// The values as the device will see them: rounded to `dtype` and widened back.
inline std::vector<float> RoundTo(const std::vector<float>& values, DType dtype) {
  return FromDType(ToDType(values, dtype), dtype);
}

// A device copy of `values` stored as `dtype`. Fails the test on a CUDA error.
inline DeviceBuffer Upload(const std::vector<float>& values, DType dtype) {
  const std::vector<uint8_t> bytes = ToDType(values, dtype);
  auto buffer = DeviceBuffer::Allocate(bytes.size());
  EXPECT_TRUE(buffer.ok()) << buffer.status();
  if (!buffer.ok()) return DeviceBuffer();
  const absl::Status st = buffer->CopyFromHost(bytes.data(), bytes.size());
  EXPECT_TRUE(st.ok()) << st;
  return std::move(*buffer);
}

template <typename T>
DeviceBuffer UploadRaw(const std::vector<T>& values) {
  auto buffer = DeviceBuffer::Allocate(values.size() * sizeof(T));
  EXPECT_TRUE(buffer.ok()) << buffer.status();
  if (!buffer.ok()) return DeviceBuffer();
  const absl::Status st = buffer->CopyFromHost(values.data(), values.size() * sizeof(T));
  EXPECT_TRUE(st.ok()) << st;
  return std::move(*buffer);
}

// A device buffer of `count` elements of `elem_bytes`, poisoned with 0xFF bytes (NaN for
// every float type, -1 for int32), so that unwritten elements fail the comparison.
inline DeviceBuffer Poisoned(size_t count, size_t elem_bytes) {
  auto buffer = DeviceBuffer::Allocate(count * elem_bytes);
  EXPECT_TRUE(buffer.ok()) << buffer.status();
  if (!buffer.ok()) return DeviceBuffer();
  const absl::Status st = buffer->Fill(0xFF);
  EXPECT_TRUE(st.ok()) << st;
  return std::move(*buffer);
}

inline std::vector<float> Download(const DeviceBuffer& buffer, size_t count, DType dtype) {
  std::vector<uint8_t> bytes(count * DTypeSize(dtype));
  const absl::Status st = buffer.CopyToHost(bytes.data(), bytes.size());
  EXPECT_TRUE(st.ok()) << st;
  return FromDType(bytes, dtype);
}

template <typename T>
std::vector<T> DownloadRaw(const DeviceBuffer& buffer, size_t count) {
  std::vector<T> values(count);
  const absl::Status st = buffer.CopyToHost(values.data(), count * sizeof(T));
  EXPECT_TRUE(st.ok()) << st;
  return values;
}

// ||actual - expected||_2 / ||expected||_2; infinity when sizes differ or any NaN/inf
// appears in `actual` (an unwritten, poisoned element).
inline double NormalizedError(const std::vector<float>& actual,
                              const std::vector<double>& expected) {
  if (actual.size() != expected.size()) return INFINITY;
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < actual.size(); ++i) {
    if (!std::isfinite(actual[i])) return INFINITY;
    const double d = static_cast<double>(actual[i]) - expected[i];
    num += d * d;
    den += expected[i] * expected[i];
  }
  if (den == 0.0) return std::sqrt(num);
  return std::sqrt(num / den);
}

inline std::vector<double> ToDouble(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

inline const char* DTypeLabel(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
  }
  return "?";
}

}  // namespace kvscope::kernels::cuda::testing

#endif  // KVSCOPE_TESTS_GPU_KERNELS_GPU_TEST_UTIL_H_

// File: tests/gpu_kernels/device_buffer_test.cc
//
// The device and pinned buffers the kernel tests and the engine build on: round trips,
// poisoning, size checks and the Status an impossible allocation gives.
#include "kernels/cuda/device_buffer.h"

#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_status.h"
#include "tests/gpu_kernels/gpu_test_util.h"

namespace kvscope::kernels::cuda {
namespace {

TEST(DeviceBufferTest, RoundTripAndPoison) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  std::vector<int32_t> values(1001);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<int32_t>(i * 7 - 300);
  DeviceBuffer buffer = testing::UploadRaw(values);
  EXPECT_EQ(testing::DownloadRaw<int32_t>(buffer, values.size()), values);
  ASSERT_TRUE(buffer.Fill(0xFF).ok());
  for (int32_t v : testing::DownloadRaw<int32_t>(buffer, values.size())) ASSERT_EQ(v, -1);
  // Poisoned floats of every type read back as NaN.
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    DeviceBuffer poisoned = testing::Poisoned(17, DTypeSize(dtype));
    for (float f : testing::Download(poisoned, 17, dtype)) ASSERT_TRUE(std::isnan(f));
  }
}

TEST(DeviceBufferTest, OversizedCopiesAreRefused) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  auto buffer = DeviceBuffer::Allocate(16);
  ASSERT_TRUE(buffer.ok());
  std::vector<uint8_t> host(32);
  EXPECT_EQ(buffer->CopyFromHost(host.data(), 32).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(buffer->CopyToHost(host.data(), 32).code(), absl::StatusCode::kInvalidArgument);
}

TEST(DeviceBufferTest, ImpossibleAllocationIsResourceExhausted) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  auto buffer = DeviceBuffer::Allocate(size_t{1} << 50);  // 1 PiB
  ASSERT_FALSE(buffer.ok());
  EXPECT_EQ(buffer.status().code(), absl::StatusCode::kResourceExhausted) << buffer.status();
  EXPECT_NE(buffer.status().message().find("cudaMalloc"), std::string::npos);
  // The failure does not poison later calls.
  EXPECT_TRUE(DeviceBuffer::Allocate(1024).ok());
}

TEST(DeviceBufferTest, MappedPinnedMemoryHasADeviceAddress) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  auto plain = PinnedBuffer::Allocate(64, /*mapped=*/false);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->DevicePointer().status().code(), absl::StatusCode::kFailedPrecondition);
  auto mapped = PinnedBuffer::Allocate(64, /*mapped=*/true);
  ASSERT_TRUE(mapped.ok());
  auto device = mapped->DevicePointer();
  ASSERT_TRUE(device.ok()) << device.status();
  EXPECT_NE(*device, nullptr);
}

TEST(CudaStatusTest, ErrorsMapOntoCanonicalCodes) {
  // Pure host-side mapping: runs without a device too.
  EXPECT_EQ(ErrorToStatus(cudaErrorMemoryAllocation, "x", "f.cc", 1).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrorToStatus(cudaErrorInvalidValue, "x", "f.cc", 1).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrorToStatus(cudaErrorNoDevice, "x", "f.cc", 1).code(),
            absl::StatusCode::kFailedPrecondition);
  const absl::Status st = ErrorToStatus(cudaErrorIllegalAddress, "launch(k)", "k.cu", 42);
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
  EXPECT_NE(st.message().find("cudaErrorIllegalAddress"), std::string::npos) << st;
  EXPECT_NE(st.message().find("launch(k)"), std::string::npos) << st;
  EXPECT_NE(st.message().find("k.cu:42"), std::string::npos) << st;
  EXPECT_EQ(ErrorToStatus(CUBLAS_STATUS_NOT_SUPPORTED, "gemm", "g.cc", 3).code(),
            absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace kvscope::kernels::cuda

// File: tests/gpu_engine/device_communicator_test.cc
//
// Device all-reduce: NCCL at TP=1 (the one-GPU machine cannot put two NCCL ranks on one
// card) and the host-staged communicator at TP=2 and 3 on one GPU, against a float64 sum of
// the ranks' inputs, in every dtype; identical bits on every rank; abort releases waiting
// ranks.
#include "engine/cuda/device_communicator.h"

#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/gpu_kernels/gpu_test_util.h"
#include "tests/kernels/reference_ops.h"

namespace kvscope::engine::cuda {
namespace {

using kernels::cuda::DeviceBuffer;
namespace gt = kernels::cuda::testing;

TEST(DeviceCommunicatorTest, UniqueIdAndArgumentChecks) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  auto id = NewNcclUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->size(), kNcclUniqueIdBytes);
  EXPECT_EQ(CreateNcclCommunicator("short", 0, 1, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateNcclCommunicator(*id, 1, 1, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(DeviceCommunicatorTest, NcclSingleRankKeepsTheData) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  auto id = NewNcclUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  auto comm = CreateNcclCommunicator(*id, 0, 1, 0);
  ASSERT_TRUE(comm.ok()) << comm.status();
  EXPECT_EQ((*comm)->kind(), "nccl");
  std::mt19937 rng(11);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const std::vector<float> values = gt::RoundTo(kernels::reference::RandomFloats(rng, 4097), dtype);
    DeviceBuffer buffer = gt::Upload(values, dtype);
    ASSERT_TRUE((*comm)->AllReduceSum(buffer.data(), 4097, dtype, nullptr).ok());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(gt::Download(buffer, 4097, dtype), values) << gt::DTypeLabel(dtype);
  }
}

TEST(DeviceCommunicatorTest, HostStagedSumsOverRanksOnOneGpu) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  for (int size : {2, 3}) {
    for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
      const int64_t n = 1031;
      std::mt19937 rng(100 + size);
      std::vector<std::vector<float>> inputs;
      std::vector<double> expected(n, 0.0);
      for (int r = 0; r < size; ++r) {
        inputs.push_back(gt::RoundTo(kernels::reference::RandomFloats(rng, n), dtype));
        for (int64_t i = 0; i < n; ++i) expected[i] += inputs[r][i];
      }
      LocalCommGroup group(size);
      std::vector<std::vector<float>> outputs(size);
      std::vector<absl::Status> statuses(size);
      std::vector<std::thread> threads;
      for (int r = 0; r < size; ++r) {
        threads.emplace_back([&, r] {
          cudaSetDevice(0);
          auto comm = CreateHostStagedCommunicator(group.ForRank(r));
          DeviceBuffer buffer = gt::Upload(inputs[r], dtype);
          cudaStream_t stream = nullptr;
          cudaStreamCreate(&stream);
          statuses[r] = comm->AllReduceSum(buffer.data(), n, dtype, stream);
          cudaStreamSynchronize(stream);
          cudaStreamDestroy(stream);
          outputs[r] = gt::Download(buffer, n, dtype);
        });
      }
      for (std::thread& t : threads) t.join();
      for (int r = 0; r < size; ++r) {
        ASSERT_TRUE(statuses[r].ok()) << statuses[r];
        EXPECT_EQ(outputs[r], outputs[0]) << "rank " << r << " differs";
      }
      EXPECT_LT(gt::NormalizedError(outputs[0], expected), gt::NormTolerance(dtype))
          << "size " << size << " " << gt::DTypeLabel(dtype);
    }
  }
}

TEST(DeviceCommunicatorTest, AbortReleasesTheOtherRanks) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  LocalCommGroup group(2);
  auto rank0 = CreateHostStagedCommunicator(group.ForRank(0));
  auto rank1 = CreateHostStagedCommunicator(group.ForRank(1));
  DeviceBuffer buffer = gt::Upload(std::vector<float>(64, 1.0f), DType::kF32);
  absl::Status waiting;
  std::thread t([&] {
    cudaSetDevice(0);
    waiting = rank0->AllReduceSum(buffer.data(), 64, DType::kF32, nullptr);
  });
  rank1->Abort();
  t.join();
  EXPECT_EQ(waiting.code(), absl::StatusCode::kAborted) << waiting;
}

}  // namespace
}  // namespace kvscope::engine::cuda

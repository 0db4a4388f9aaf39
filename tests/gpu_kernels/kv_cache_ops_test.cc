// File: tests/gpu_kernels/kv_cache_ops_test.cc
//
// KV-cache data movement on the device (kernels/cuda/kv_cache_ops.h), bit exact: WriteKv
// against kernels::WriteKv and against a byte-level expectation on a poisoned pool (every
// dtype, odd token counts, padded and unaligned token strides, -1 padding), CopyBlocks and
// SwapBlocks against host block copies, device error flags for out-of-range indices and
// InvalidArgument for bad host-side arguments.
#include "kernels/cuda/kv_cache_ops.h"

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/ops.h"
#include "tests/gpu_kernels/attention_test_util.h"
#include "tests/gpu_kernels/gpu_test_util.h"

namespace kvscope::kernels::cuda {
namespace {

using testing::TestPool;

std::vector<uint8_t> Bytes(const DeviceBuffer& buffer, size_t bytes) {
  return testing::DownloadRaw<uint8_t>(buffer, bytes);
}

int32_t ReadFlag(const DeviceBuffer& flag) {
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return testing::DownloadRaw<int32_t>(flag, 1)[0];
}

TEST(WriteKvTest, MatchesCpuBitExact) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  uint32_t seed = 1;
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int32_t head_dim : {16, 64, 80, 128, 256, 7}) {
      // Token strides: exact, padded by 8 elements (vector path), padded by 3 (narrow words).
      for (int64_t pad : {0, 8, 3}) {
        SCOPED_TRACE(absl::StrCat(testing::DTypeLabel(dtype), " d=", head_dim, " pad=", pad));
        std::mt19937 rng(seed++);
        const int32_t heads = 3, block_size = 5;
        const int64_t num_blocks = 11;
        TestPool pool = testing::RandomPool(rng, dtype, num_blocks, heads, block_size, head_dim);
        const int64_t tokens = 29;
        const int64_t stride = heads * head_dim + pad;
        std::vector<int32_t> free_slots = testing::ShuffledSlots(rng, pool.num_slots());
        std::vector<int32_t> slots(tokens);
        for (int64_t t = 0; t < tokens; ++t) {
          slots[t] = t % 7 == 3 ? -1 : free_slots[t];  // some padding tokens
        }
        std::vector<float> k = testing::RoundTo(testing::RandomValues(rng, tokens * stride), dtype);
        std::vector<float> v = testing::RoundTo(testing::RandomValues(rng, tokens * stride), dtype);

        ASSERT_TRUE(
            kernels::WriteKv(pool.HostView(), k.data(), v.data(), stride, slots.data(), tokens)
                .ok());
        DeviceBuffer dk = testing::Upload(k, dtype), dv = testing::Upload(v, dtype);
        DeviceBuffer dslots = testing::UploadRaw(slots);
        DeviceBuffer flag = testing::UploadRaw(std::vector<int32_t>{0});
        ASSERT_TRUE(WriteKv(pool.DeviceView(), dk.data(), dv.data(), stride, dslots.as<int32_t>(),
                            tokens, flag.as<int32_t>(), nullptr)
                        .ok());
        EXPECT_EQ(ReadFlag(flag), 0);
        // Bytes on the device == the CPU pool stored as dtype (untouched slots included).
        const size_t pool_bytes = pool.elems() * DTypeSize(dtype);
        EXPECT_EQ(Bytes(pool.dk, pool_bytes), testing::ToDType(pool.k, dtype));
        EXPECT_EQ(Bytes(pool.dv, pool_bytes), testing::ToDType(pool.v, dtype));

        // Poisoned pool: exactly the written rows change, byte for byte.
        ASSERT_TRUE(pool.dk.Fill(0xFF).ok());
        ASSERT_TRUE(pool.dv.Fill(0xFF).ok());
        ASSERT_TRUE(WriteKv(pool.DeviceView(), dk.data(), dv.data(), stride, dslots.as<int32_t>(),
                            tokens, nullptr, nullptr)
                        .ok());
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        std::vector<uint8_t> want(pool_bytes, 0xFF);
        const std::vector<uint8_t> kb = testing::ToDType(k, dtype);
        const size_t es = DTypeSize(dtype);
        for (int64_t t = 0; t < tokens; ++t) {
          if (slots[t] < 0) continue;
          for (int32_t h = 0; h < heads; ++h) {
            const int64_t dst = ((slots[t] / block_size) * heads + h) * block_size * head_dim +
                                (slots[t] % block_size) * head_dim;
            std::memcpy(want.data() + dst * es, kb.data() + (t * stride + h * head_dim) * es,
                        head_dim * es);
          }
        }
        EXPECT_EQ(Bytes(pool.dk, pool_bytes), want);
      }
    }
  }
}

TEST(WriteKvTest, OutOfRangeSlotsAreSkippedAndFlagged) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(5);
  TestPool pool = testing::RandomPool(rng, DType::kBF16, 3, 2, 4, 64);
  const size_t pool_bytes = pool.elems() * 2;
  const std::vector<uint8_t> before = Bytes(pool.dk, pool_bytes);
  const std::vector<int32_t> slots = {12, -2, 1 << 30};  // num_slots is 12
  DeviceBuffer dk = testing::Upload(testing::RandomValues(rng, 3 * 128), DType::kBF16);
  DeviceBuffer dslots = testing::UploadRaw(slots);
  DeviceBuffer flag = testing::UploadRaw(std::vector<int32_t>{0});
  ASSERT_TRUE(WriteKv(pool.DeviceView(), dk.data(), dk.data(), 128, dslots.as<int32_t>(), 3,
                      flag.as<int32_t>(), nullptr)
                  .ok());
  EXPECT_EQ(ReadFlag(flag), kErrorSlotOutOfRange);
  EXPECT_EQ(Bytes(pool.dk, pool_bytes), before);
}

TEST(WriteKvTest, BadArgumentsAreInvalid) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(6);
  TestPool pool = testing::RandomPool(rng, DType::kF16, 3, 2, 4, 64);
  DeviceBuffer dk = testing::Upload(testing::RandomValues(rng, 128), DType::kF16);
  DeviceBuffer dslots = testing::UploadRaw(std::vector<int32_t>{0});
  // Stride below one token's row.
  EXPECT_EQ(WriteKv(pool.DeviceView(), dk.data(), dk.data(), 127, dslots.as<int32_t>(), 1, nullptr,
                    nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  CudaKvPool bad = pool.DeviceView();
  bad.block_size = 0;
  EXPECT_EQ(
      WriteKv(bad, dk.data(), dk.data(), 128, dslots.as<int32_t>(), 1, nullptr, nullptr).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      WriteKv(pool.DeviceView(), dk.data(), dk.data(), 128, nullptr, 1, nullptr, nullptr).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      WriteKv(pool.DeviceView(), dk.data(), dk.data(), 128, nullptr, 0, nullptr, nullptr).ok());
}

TEST(CopyBlocksTest, MatchesHostCopiesBitExact) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  uint32_t seed = 10;
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int32_t head_dim : {16, 128, 7}) {
      SCOPED_TRACE(absl::StrCat(testing::DTypeLabel(dtype), " d=", head_dim));
      std::mt19937 rng(seed++);
      TestPool pool = testing::RandomPool(rng, dtype, 13, 3, 5, head_dim);
      // Disjoint sources and destinations, an odd number of pairs.
      const std::vector<int32_t> pairs = {0, 7, 3, 12, 4, 8, 11, 1, 2, 9};
      const int64_t be = pool.num_kv_heads * static_cast<int64_t>(pool.block_size) * head_dim;
      std::vector<float> k = pool.k, v = pool.v;
      for (size_t i = 0; i < pairs.size(); i += 2) {
        std::copy_n(pool.k.begin() + pairs[i] * be, be, k.begin() + pairs[i + 1] * be);
        std::copy_n(pool.v.begin() + pairs[i] * be, be, v.begin() + pairs[i + 1] * be);
      }
      DeviceBuffer dpairs = testing::UploadRaw(pairs);
      DeviceBuffer flag = testing::UploadRaw(std::vector<int32_t>{0});
      ASSERT_TRUE(
          CopyBlocks(pool.DeviceView(), dpairs.as<int32_t>(), 5, flag.as<int32_t>(), nullptr).ok());
      EXPECT_EQ(ReadFlag(flag), 0);
      const size_t bytes = pool.elems() * DTypeSize(dtype);
      EXPECT_EQ(Bytes(pool.dk, bytes), testing::ToDType(k, dtype));
      EXPECT_EQ(Bytes(pool.dv, bytes), testing::ToDType(v, dtype));
    }
  }
}

TEST(CopyBlocksTest, OutOfRangePairsAreSkippedAndFlagged) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(11);
  TestPool pool = testing::RandomPool(rng, DType::kBF16, 4, 2, 4, 64);
  const size_t bytes = pool.elems() * 2;
  const std::vector<uint8_t> before = Bytes(pool.dk, bytes);
  DeviceBuffer dpairs = testing::UploadRaw(std::vector<int32_t>{0, 4, -1, 2});
  DeviceBuffer flag = testing::UploadRaw(std::vector<int32_t>{0});
  ASSERT_TRUE(
      CopyBlocks(pool.DeviceView(), dpairs.as<int32_t>(), 2, flag.as<int32_t>(), nullptr).ok());
  EXPECT_EQ(ReadFlag(flag), kErrorBlockOutOfRange);
  EXPECT_EQ(Bytes(pool.dk, bytes), before);
  EXPECT_EQ(CopyBlocks(pool.DeviceView(), nullptr, 2, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SwapBlocksTest, RoundTripThroughPinnedMemoryBitExact) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  uint32_t seed = 20;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(testing::DTypeLabel(dtype));
    std::mt19937 rng(seed++);
    TestPool pool = testing::RandomPool(rng, dtype, 9, 2, 3, 80);
    const int64_t host_blocks = 7;
    const size_t block_bytes = pool.num_kv_heads * pool.block_size * 80 * DTypeSize(dtype);
    auto hk = PinnedBuffer::Allocate(host_blocks * block_bytes);
    auto hv = PinnedBuffer::Allocate(host_blocks * block_bytes);
    ASSERT_TRUE(hk.ok() && hv.ok());
    std::memset(hk->data(), 0xFF, host_blocks * block_bytes);
    std::memset(hv->data(), 0xFF, host_blocks * block_bytes);
    // A contiguous run (2,3,4 -> 1,2,3), a single block and a non-contiguous tail.
    const std::vector<int32_t> out_pairs = {2, 1, 3, 2, 4, 3, 8, 6, 0, 0};
    ASSERT_TRUE(SwapBlocks(pool.DeviceView(), hk->data(), hv->data(), host_blocks, out_pairs.data(),
                           5, SwapDirection::kDeviceToHost, nullptr)
                    .ok());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<uint8_t> dev_k = Bytes(pool.dk, pool.elems() * DTypeSize(dtype));
    const std::vector<uint8_t> dev_v = Bytes(pool.dv, pool.elems() * DTypeSize(dtype));
    const auto* host_k = static_cast<const uint8_t*>(hk->data());
    const auto* host_v = static_cast<const uint8_t*>(hv->data());
    for (size_t i = 0; i < out_pairs.size(); i += 2) {
      EXPECT_EQ(std::memcmp(host_k + out_pairs[i + 1] * block_bytes,
                            dev_k.data() + out_pairs[i] * block_bytes, block_bytes),
                0);
      EXPECT_EQ(std::memcmp(host_v + out_pairs[i + 1] * block_bytes,
                            dev_v.data() + out_pairs[i] * block_bytes, block_bytes),
                0);
    }
    // Untouched host blocks stay poisoned.
    for (int64_t b : {4, 5}) {
      for (size_t i = 0; i < block_bytes; ++i) ASSERT_EQ(host_k[b * block_bytes + i], 0xFF);
    }
    // Swap back in to other device blocks.
    const std::vector<int32_t> in_pairs = {1, 5, 2, 6, 3, 7};
    ASSERT_TRUE(pool.dk.Fill(0xFF).ok());
    ASSERT_TRUE(pool.dv.Fill(0xFF).ok());
    ASSERT_TRUE(SwapBlocks(pool.DeviceView(), hk->data(), hv->data(), host_blocks, in_pairs.data(),
                           3, SwapDirection::kHostToDevice, nullptr)
                    .ok());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<uint8_t> back_k = Bytes(pool.dk, pool.elems() * DTypeSize(dtype));
    for (size_t i = 0; i < in_pairs.size(); i += 2) {
      EXPECT_EQ(std::memcmp(back_k.data() + in_pairs[i + 1] * block_bytes,
                            host_k + in_pairs[i] * block_bytes, block_bytes),
                0);
    }
    for (size_t i = 0; i < block_bytes; ++i) ASSERT_EQ(back_k[i], 0xFF);  // block 0 untouched
    // Host-side validation: nothing enqueued on a bad pair.
    const std::vector<int32_t> bad = {0, 1, 9, 2};
    EXPECT_EQ(SwapBlocks(pool.DeviceView(), hk->data(), hv->data(), host_blocks, bad.data(), 2,
                         SwapDirection::kDeviceToHost, nullptr)
                  .code(),
              absl::StatusCode::kInvalidArgument);
    const std::vector<int32_t> bad_dst = {0, 7};
    EXPECT_EQ(SwapBlocks(pool.DeviceView(), hk->data(), hv->data(), host_blocks, bad_dst.data(), 1,
                         SwapDirection::kDeviceToHost, nullptr)
                  .code(),
              absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace kvscope::kernels::cuda

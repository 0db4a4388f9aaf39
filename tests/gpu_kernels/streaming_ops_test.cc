// File: tests/gpu_kernels/streaming_ops_test.cc
//
// StreamingLLM on the device (kernels/cuda/streaming_ops.h with the moves of
// evicting_ops.h) against the CPU rules (tests/gpu_kernels/strategy_reference.h, checked
// against kvcache's StreamingPolicy in tests/kvcache/strategy_reference_test.cc): the same
// victims and kept sets, bit-identical pools and positions after the window moves, and the
// rolling-position re-rotation of the sink keys within one rounding of the element type
// (cos/sin come from the device math library; every other element is bit-identical), for
// every element type and odd sizes. Outputs are poisoned before each run.
#include "kernels/cuda/streaming_ops.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/evicting_ops.h"
#include "tests/gpu_kernels/evicting_test_setup.h"
#include "tests/gpu_kernels/gpu_test_util.h"
#include "tests/gpu_kernels/strategy_reference.h"

namespace kvscope::kernels::cuda {
namespace {

namespace ref = ::kvscope::strategy_reference;
using testing::DeviceEntries;
using testing::HostEntries;
using testing::SeqShape;

constexpr int32_t kKvHeads = 3;
constexpr int32_t kBlockSize = 16;

// One unit in the last place of `dtype`, relative, and the smallest magnitude it resolves.
double RelUlp(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return std::ldexp(1.0, -23);
    case DType::kF16:
      return std::ldexp(1.0, -10);
    case DType::kBF16:
      return std::ldexp(1.0, -7);
  }
  return 0;
}
double AbsUlp(DType dtype) { return dtype == DType::kF16 ? 6e-8 : 1e-37; }

std::vector<float> InvFreq(int32_t rot_half) {
  std::vector<float> f(rot_half);
  for (int32_t i = 0; i < rot_half; ++i) {
    f[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / (2.0 * rot_half)));
  }
  return f;
}

// Applies the CPU re-rotation (evicting_kv_cache.cc:365-371) to the host pool and marks the
// rotated elements. evicted: [num_seqs][kv_heads].
void ShiftOnHost(const HostEntries& e, const std::vector<int32_t>& evicted,
                 const std::vector<float>& inv_freq, DType dtype, ref::BytePool* pool,
                 std::vector<char>* rotated) {
  const int32_t half = static_cast<int32_t>(inv_freq.size());
  std::vector<float> k = testing::FromDType(pool->k, dtype);
  rotated->assign(k.size(), 0);
  for (int32_t i = 0; i < e.num_seqs; ++i) {
    const int32_t sinks = e.total[i] - e.recent[i];
    for (int32_t h = 0; h < e.kv_heads; ++h) {
      const int32_t delta = evicted[i * e.kv_heads + h];
      if (delta <= 0 || sinks <= 0) continue;
      for (int32_t j = 0; j < e.total[i]; ++j) {
        if (e.pos[e.At(i, h, j)] >= sinks) continue;
        const size_t row = pool->RowByte(e.slots[e.At(i, h, j)], h) / pool->elem;
        ref::ShiftKeyRow(k.data() + row, inv_freq.data(), half, delta);
        for (int32_t c = 0; c < 2 * half; ++c) (*rotated)[row + c] = 1;
      }
    }
  }
  pool->k = testing::ToDType(k, dtype);
}

void ExpectKeysMatch(const testing::StrategyPool& pool, const std::vector<char>& rotated, DType dtype) {
  const std::vector<float> got = testing::Download(pool.k, rotated.size(), dtype);
  const std::vector<float> want = testing::FromDType(pool.host.k, dtype);
  int64_t bad = 0;
  for (size_t x = 0; x < want.size(); ++x) {
    const bool ok = rotated[x] ? std::fabs(got[x] - want[x]) <=
                                     RelUlp(dtype) * std::fabs(want[x]) + AbsUlp(dtype)
                               : std::memcmp(&got[x], &want[x], sizeof(float)) == 0;
    if (!ok && ++bad <= 5) {
      ADD_FAILURE() << "key element " << x << (rotated[x] ? " (rotated)" : "") << ": got " << got[x]
                    << ", want " << want[x];
    }
  }
  EXPECT_EQ(bad, 0);
}

class StreamingOpsTest : public ::testing::TestWithParam<std::tuple<DType, int32_t>> {};

TEST_P(StreamingOpsTest, DecodeWindowMoveAndSinkShift) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  const auto [dtype, head_dim] = GetParam();
  std::mt19937 rng(303 + head_dim);
  // (n = total + 1, length, total, recent): sinks 4, 1, 0 (recent only), all sinks.
  const std::vector<SeqShape> shapes = {
      {10, 30, 9, 5}, {300, 700, 299, 298}, {6, 11, 5, 5}, {4, 9, 3, 0}, {2, 3, 1, 0}};
  const int64_t num_blocks = 53;
  HostEntries host =
      testing::RandomEntries(rng, shapes, kKvHeads, /*decode=*/true, num_blocks * kBlockSize);
  DeviceEntries dev = testing::UploadEntries(host);
  testing::StrategyPool pool =
      testing::RandomStrategyPool(rng, num_blocks, kKvHeads, kBlockSize, head_dim, dtype);
  const int32_t pairs = host.num_seqs * kKvHeads;

  DeviceBuffer victims = testing::Poisoned(pairs, 4);
  ASSERT_TRUE(StreamingVictims(dev.Lists(false), dev.Step(), victims.as<int32_t>(), nullptr).ok());
  std::vector<int32_t> want(pairs);
  for (int32_t i = 0; i < host.num_seqs; ++i) {
    for (int32_t h = 0; h < kKvHeads; ++h) {
      want[i * kKvHeads + h] = ref::StreamingVictim(host.pos.data() + host.At(i, h, 0),
                                                    host.view_n[i], host.total[i], host.recent[i]);
    }
  }
  ASSERT_EQ(testing::DownloadPairs(victims, pairs), want);

  ASSERT_TRUE(ReplaceVictims(pool.ref, dev.Lists(false), dev.view_n.as<int32_t>(),
                             victims.as<int32_t>(), nullptr)
                  .ok());
  for (int32_t i = 0; i < host.num_seqs; ++i) {
    for (int32_t h = 0; h < kKvHeads; ++h) {
      const size_t base = host.At(i, h, 0);
      ref::ReplaceHead(&pool.host, h, host.slots.data() + base, host.pos.data() + base, nullptr,
                       host.view_n[i], want[i * kKvHeads + h]);
    }
  }
  ASSERT_TRUE(testing::SameElements(testing::DownloadBytes(pool.k), pool.host.k));
  ASSERT_TRUE(testing::SameElements(testing::DownloadBytes(pool.v), pool.host.v));
  ASSERT_TRUE(
      testing::SameElements(testing::DownloadRaw<int32_t>(dev.pos, host.pos.size()), host.pos));

  // positions=rolling: the sinks move one position per decode eviction.
  const int32_t rot_half = head_dim / 2 - 1;  // rot_dim < head_dim: the tail is untouched
  const std::vector<float> inv_freq = InvFreq(rot_half);
  std::vector<int32_t> sinks(host.num_seqs), evicted(pairs, 1);
  for (int32_t i = 0; i < host.num_seqs; ++i) sinks[i] = host.total[i] - host.recent[i];
  DeviceBuffer sinks_dev = testing::UploadRaw(sinks);
  DeviceBuffer evicted_dev = testing::UploadRaw(evicted);
  DeviceBuffer freq_dev = testing::UploadRaw(inv_freq);
  ASSERT_TRUE(ShiftSinkKeys(pool.ref, dev.Lists(false), dev.total.as<int32_t>(),
                            sinks_dev.as<int32_t>(), evicted_dev.as<int32_t>(),
                            freq_dev.as<float>(), rot_half, nullptr)
                  .ok());
  std::vector<char> rotated;
  ShiftOnHost(host, evicted, inv_freq, dtype, &pool.host, &rotated);
  ExpectKeysMatch(pool, rotated, dtype);
  EXPECT_TRUE(testing::SameElements(testing::DownloadBytes(pool.v), pool.host.v));
}

TEST_P(StreamingOpsTest, CompressKeepCompactAndSinkShift) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  const auto [dtype, head_dim] = GetParam();
  std::mt19937 rng(404 + head_dim);
  // (n = length, length, total, recent).
  const std::vector<SeqShape> shapes = {
      {45, 45, 12, 8}, {600, 600, 260, 256}, {9, 9, 3, 3}, {20, 20, 4, 0}, {3, 3, 2, 1}};
  const int64_t num_blocks = 47;
  HostEntries host =
      testing::RandomEntries(rng, shapes, kKvHeads, /*decode=*/false, num_blocks * kBlockSize);
  DeviceEntries dev = testing::UploadEntries(host);
  testing::StrategyPool pool =
      testing::RandomStrategyPool(rng, num_blocks, kKvHeads, kBlockSize, head_dim, dtype);
  const int32_t pairs = host.num_seqs * kKvHeads;
  const int32_t keep_stride = 611;
  DeviceBuffer keep = testing::Poisoned(static_cast<size_t>(pairs) * keep_stride, 4);
  DeviceBuffer keep_count = testing::Poisoned(pairs, 4);
  ASSERT_TRUE(StreamingSelectKeep(dev.Lists(false), dev.Step(), keep.as<int32_t>(), keep_stride,
                                  keep_count.as<int32_t>(), nullptr)
                  .ok());
  const std::vector<int32_t> got_keep =
      testing::DownloadRaw<int32_t>(keep, static_cast<size_t>(pairs) * keep_stride);
  const std::vector<int32_t> got_count = testing::DownloadPairs(keep_count, pairs);
  std::vector<std::vector<int32_t>> want(pairs);
  std::vector<int32_t> evicted(pairs);
  for (int32_t i = 0; i < host.num_seqs; ++i) {
    for (int32_t h = 0; h < kKvHeads; ++h) {
      const int32_t p = i * kKvHeads + h;
      want[p] = ref::StreamingSelectKeep(host.pos.data() + host.At(i, h, 0), host.view_n[i],
                                         host.length[i], host.total[i], host.recent[i]);
      ASSERT_EQ(got_count[p], static_cast<int32_t>(want[p].size())) << "seq " << i;
      const std::vector<int32_t> got(
          got_keep.begin() + static_cast<size_t>(p) * keep_stride,
          got_keep.begin() + static_cast<size_t>(p) * keep_stride + got_count[p]);
      ASSERT_EQ(got, want[p]) << "seq " << i << " head " << h;
      for (int32_t j = got_count[p]; j < keep_stride; ++j) {
        ASSERT_EQ(got_keep[static_cast<size_t>(p) * keep_stride + j], -1);
      }
      evicted[p] = host.view_n[i] - static_cast<int32_t>(want[p].size());
    }
  }
  ASSERT_TRUE(CompactKept(pool.ref, dev.Lists(false), keep.as<int32_t>(), keep_stride,
                          keep_count.as<int32_t>(), nullptr)
                  .ok());
  for (int32_t i = 0; i < host.num_seqs; ++i) {
    for (int32_t h = 0; h < kKvHeads; ++h) {
      const size_t base = host.At(i, h, 0);
      ref::CompactHead(&pool.host, h, host.slots.data() + base, host.pos.data() + base, nullptr,
                       want[i * kKvHeads + h]);
    }
  }
  ASSERT_TRUE(testing::SameElements(testing::DownloadBytes(pool.k), pool.host.k));
  ASSERT_TRUE(testing::SameElements(testing::DownloadBytes(pool.v), pool.host.v));
  ASSERT_TRUE(
      testing::SameElements(testing::DownloadRaw<int32_t>(dev.pos, host.pos.size()), host.pos));

  const int32_t rot_half = head_dim / 2;
  const std::vector<float> inv_freq = InvFreq(rot_half);
  std::vector<int32_t> sinks(host.num_seqs);
  for (int32_t i = 0; i < host.num_seqs; ++i) sinks[i] = host.total[i] - host.recent[i];
  DeviceBuffer sinks_dev = testing::UploadRaw(sinks);
  DeviceBuffer evicted_dev = testing::UploadRaw(evicted);
  DeviceBuffer freq_dev = testing::UploadRaw(inv_freq);
  ASSERT_TRUE(ShiftSinkKeys(pool.ref, dev.Lists(false), dev.total.as<int32_t>(),
                            sinks_dev.as<int32_t>(), evicted_dev.as<int32_t>(),
                            freq_dev.as<float>(), rot_half, nullptr)
                  .ok());
  std::vector<char> rotated;
  ShiftOnHost(host, evicted, inv_freq, dtype, &pool.host, &rotated);
  ExpectKeysMatch(pool, rotated, dtype);
  EXPECT_TRUE(testing::SameElements(testing::DownloadBytes(pool.v), pool.host.v));
}

INSTANTIATE_TEST_SUITE_P(DTypesAndHeadDims, StreamingOpsTest,
                         ::testing::Combine(::testing::Values(DType::kF32, DType::kF16,
                                                              DType::kBF16),
                                            ::testing::Values(37, 128)),
                         [](const auto& info) {
                           return std::string(testing::DTypeLabel(std::get<0>(info.param))) + "_d" +
                                  std::to_string(std::get<1>(info.param));
                         });

TEST(StreamingOpsArgsTest, BadArgumentsAreRefusedWithoutLaunching) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(8);
  HostEntries host = testing::RandomEntries(rng, {{5, 9, 4, 2}}, kKvHeads, true, 64);
  DeviceEntries dev = testing::UploadEntries(host);
  testing::StrategyPool pool = testing::RandomStrategyPool(rng, 4, kKvHeads, kBlockSize, 8, DType::kBF16);
  DeviceBuffer out = testing::Poisoned(kKvHeads * 16, 4);
  DeviceBuffer count = testing::Poisoned(kKvHeads, 4);
  DeviceBuffer ones = testing::UploadRaw(std::vector<int32_t>(kKvHeads, 1));
  DeviceBuffer freq = testing::UploadRaw(InvFreq(4));
  const auto invalid = [](const absl::Status& st) {
    return st.code() == absl::StatusCode::kInvalidArgument;
  };
  EXPECT_TRUE(invalid(StreamingVictims(dev.Lists(false), dev.Step(), nullptr, nullptr)));
  EvictStep no_view = dev.Step();
  no_view.view_n = nullptr;
  EXPECT_TRUE(invalid(StreamingVictims(dev.Lists(false), no_view, out.as<int32_t>(), nullptr)));
  EntryLists no_slots = dev.Lists(false);
  no_slots.slots = nullptr;
  EXPECT_TRUE(invalid(StreamingVictims(no_slots, dev.Step(), out.as<int32_t>(), nullptr)));
  EvictStep no_length = dev.Step();
  no_length.length = nullptr;
  EXPECT_TRUE(invalid(StreamingSelectKeep(dev.Lists(false), no_length, out.as<int32_t>(), 16,
                                          count.as<int32_t>(), nullptr)));
  EXPECT_TRUE(invalid(
      StreamingSelectKeep(dev.Lists(false), dev.Step(), out.as<int32_t>(), 16, nullptr, nullptr)));
  // rot_half must fit head_dim (8): 5 pairs do not.
  EXPECT_TRUE(
      invalid(ShiftSinkKeys(pool.ref, dev.Lists(false), dev.total.as<int32_t>(), ones.as<int32_t>(),
                            ones.as<int32_t>(), freq.as<float>(), 5, nullptr)));
  EXPECT_TRUE(invalid(ShiftSinkKeys(pool.ref, dev.Lists(false), dev.total.as<int32_t>(),
                                    ones.as<int32_t>(), ones.as<int32_t>(), nullptr, 4, nullptr)));
  CudaKvPool bad_dim = pool.ref;
  bad_dim.head_dim = 300;
  EXPECT_TRUE(
      invalid(ShiftSinkKeys(bad_dim, dev.Lists(false), dev.total.as<int32_t>(), ones.as<int32_t>(),
                            ones.as<int32_t>(), freq.as<float>(), 4, nullptr)));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  for (int32_t x : testing::DownloadRaw<int32_t>(out, kKvHeads * 16)) ASSERT_EQ(x, -1);
  for (int32_t x : testing::DownloadRaw<int32_t>(count, kKvHeads)) ASSERT_EQ(x, -1);
  EXPECT_TRUE(testing::SameElements(testing::DownloadBytes(pool.k), pool.host.k));
}

}  // namespace
}  // namespace kvscope::kernels::cuda

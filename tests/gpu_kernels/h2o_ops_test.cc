// File: tests/gpu_kernels/h2o_ops_test.cc
//
// H2O on the device (kernels/cuda/h2o_ops.h with the moves of evicting_ops.h) against the
// CPU rules (tests/gpu_kernels/strategy_reference.h, itself checked against kvcache's
// H2oPolicy in tests/kvcache/strategy_reference_test.cc): scores equal bit for bit, the same
// victims and kept sets (ties included: scores come from a small set of dyadic values), the
// same pools, positions and scores after the moves, for every element type, odd sizes, and
// lists longer than a block. Outputs are poisoned before each run.
#include "kernels/cuda/h2o_ops.h"

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
constexpr int32_t kGroup = 2;  // query heads per KV head
constexpr int32_t kHeads = kKvHeads * kGroup;
constexpr int32_t kBlockSize = 16;

// Mass in multiples of 1/64 (sums of a few stay exact, so ties survive accumulation).
std::vector<float> RandomMass(std::mt19937& rng, int32_t num_seqs, int64_t stride) {
  std::uniform_int_distribution<int> level(0, 4);
  std::vector<float> mass(static_cast<size_t>(num_seqs) * kHeads * stride);
  for (float& m : mass) m = level(rng) / 64.0f;
  return mass;
}

// The CPU accumulation (evicting_kv_cache.cc:337-343) on host entries.
void AccumulateOnHost(HostEntries* e, const std::vector<float>& mass, int64_t stride) {
  for (int32_t i = 0; i < e->num_seqs; ++i) {
    for (int32_t h = 0; h < kKvHeads; ++h) {
      for (int32_t q = h * kGroup; q < (h + 1) * kGroup; ++q) {
        const float* m = mass.data() + (static_cast<size_t>(i) * kHeads + q) * stride;
        for (int32_t j = 0; j < e->view_n[i]; ++j) e->score[e->At(i, h, j)] += m[j];
      }
    }
  }
}

std::vector<SeqShape> DecodeShapes() {
  // (n = total + 1, length, total, recent): small, window covering everything, zero recent,
  // and a list longer than one block of threads.
  return {{8, 20, 7, 3}, {5, 5, 4, 4}, {12, 40, 11, 0}, {301, 977, 300, 41}, {2, 9, 1, 1}};
}

std::vector<SeqShape> CompressShapes() {
  // (n = length, length, total, recent).
  return {{23, 23, 9, 4}, {7, 7, 6, 0}, {531, 531, 200, 37}, {40, 40, 5, 5}, {3, 3, 2, 1}};
}

int64_t MaxN(const std::vector<SeqShape>& shapes) {
  int64_t m = 1;
  for (const SeqShape& s : shapes) m = std::max<int64_t>(m, s.n);
  return m;
}

class H2oOpsTest : public ::testing::TestWithParam<std::tuple<DType, int32_t>> {};

TEST_P(H2oOpsTest, DecodeAccumulateVictimAndReplace) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  const auto [dtype, head_dim] = GetParam();
  std::mt19937 rng(101 + head_dim);
  const std::vector<SeqShape> shapes = DecodeShapes();
  const int64_t num_blocks = 61;
  HostEntries host =
      testing::RandomEntries(rng, shapes, kKvHeads, /*decode=*/true, num_blocks * kBlockSize);
  DeviceEntries dev = testing::UploadEntries(host);
  testing::StrategyPool pool =
      testing::RandomStrategyPool(rng, num_blocks, kKvHeads, kBlockSize, head_dim, dtype);
  const int64_t mass_stride = MaxN(shapes) + 2;
  const std::vector<float> mass = RandomMass(rng, host.num_seqs, mass_stride);
  DeviceBuffer mass_dev = testing::UploadRaw(mass);

  ASSERT_TRUE(AccumulateH2oScores(mass_dev.as<float>(), kHeads, mass_stride, dev.Lists(),
                                  dev.view_n.as<int32_t>(), nullptr)
                  .ok());
  AccumulateOnHost(&host, mass, mass_stride);
  // Bit-exact: the same double additions in the same order; untouched entries unchanged.
  EXPECT_TRUE(testing::SameElements(testing::DownloadRaw<double>(dev.score, host.score.size()),
                                    host.score));

  const int32_t pairs = host.num_seqs * kKvHeads;
  DeviceBuffer victims = testing::Poisoned(pairs, sizeof(int32_t));
  ASSERT_TRUE(H2oVictims(dev.Lists(), dev.Step(), victims.as<int32_t>(), nullptr).ok());
  const std::vector<int32_t> got_victims = testing::DownloadPairs(victims, pairs);
  std::vector<int32_t> want_victims(pairs);
  for (int32_t i = 0; i < host.num_seqs; ++i) {
    for (int32_t h = 0; h < kKvHeads; ++h) {
      const size_t base = host.At(i, h, 0);
      want_victims[i * kKvHeads + h] =
          ref::H2oVictim(host.pos.data() + base, host.score.data() + base, host.view_n[i],
                         host.length[i], host.recent[i]);
    }
  }
  ASSERT_EQ(got_victims, want_victims);

  ASSERT_TRUE(ReplaceVictims(pool.ref, dev.Lists(), dev.view_n.as<int32_t>(), victims.as<int32_t>(),
                             nullptr)
                  .ok());
  for (int32_t i = 0; i < host.num_seqs; ++i) {
    for (int32_t h = 0; h < kKvHeads; ++h) {
      const size_t base = host.At(i, h, 0);
      ref::ReplaceHead(&pool.host, h, host.slots.data() + base, host.pos.data() + base,
                       host.score.data() + base, host.view_n[i], want_victims[i * kKvHeads + h]);
    }
  }
  EXPECT_TRUE(testing::SameElements(testing::DownloadBytes(pool.k), pool.host.k));
  EXPECT_TRUE(testing::SameElements(testing::DownloadBytes(pool.v), pool.host.v));
  EXPECT_TRUE(
      testing::SameElements(testing::DownloadRaw<int32_t>(dev.pos, host.pos.size()), host.pos));
  EXPECT_TRUE(testing::SameElements(testing::DownloadRaw<double>(dev.score, host.score.size()),
                                    host.score));
}

TEST_P(H2oOpsTest, CompressSelectKeepAndCompact) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  const auto [dtype, head_dim] = GetParam();
  std::mt19937 rng(202 + head_dim);
  const std::vector<SeqShape> shapes = CompressShapes();
  const int64_t num_blocks = 97;
  HostEntries host =
      testing::RandomEntries(rng, shapes, kKvHeads, /*decode=*/false, num_blocks * kBlockSize);
  DeviceEntries dev = testing::UploadEntries(host);
  testing::StrategyPool pool =
      testing::RandomStrategyPool(rng, num_blocks, kKvHeads, kBlockSize, head_dim, dtype);
  const int32_t pairs = host.num_seqs * kKvHeads;
  const int32_t keep_stride = static_cast<int32_t>(MaxN(shapes)) + 1;
  DeviceBuffer keep = testing::Poisoned(static_cast<size_t>(pairs) * keep_stride, 4);
  DeviceBuffer keep_count = testing::Poisoned(pairs, 4);
  ASSERT_TRUE(H2oSelectKeep(dev.Lists(), dev.Step(), keep.as<int32_t>(), keep_stride,
                            keep_count.as<int32_t>(), nullptr)
                  .ok());
  const std::vector<int32_t> got_keep =
      testing::DownloadRaw<int32_t>(keep, static_cast<size_t>(pairs) * keep_stride);
  const std::vector<int32_t> got_count = testing::DownloadPairs(keep_count, pairs);
  std::vector<std::vector<int32_t>> want(pairs);
  for (int32_t i = 0; i < host.num_seqs; ++i) {
    for (int32_t h = 0; h < kKvHeads; ++h) {
      const int32_t p = i * kKvHeads + h;
      const size_t base = host.At(i, h, 0);
      want[p] = ref::H2oSelectKeep(host.pos.data() + base, host.score.data() + base, host.view_n[i],
                                   host.length[i], host.total[i], host.recent[i]);
      ASSERT_EQ(got_count[p], static_cast<int32_t>(want[p].size())) << "seq " << i << " head " << h;
      const std::vector<int32_t> got(
          got_keep.begin() + static_cast<size_t>(p) * keep_stride,
          got_keep.begin() + static_cast<size_t>(p) * keep_stride + got_count[p]);
      ASSERT_EQ(got, want[p]) << "seq " << i << " head " << h;
      // Past the count nothing was written.
      for (int32_t j = got_count[p]; j < keep_stride; ++j) {
        ASSERT_EQ(got_keep[static_cast<size_t>(p) * keep_stride + j], -1);
      }
    }
  }

  ASSERT_TRUE(CompactKept(pool.ref, dev.Lists(), keep.as<int32_t>(), keep_stride,
                          keep_count.as<int32_t>(), nullptr)
                  .ok());
  for (int32_t i = 0; i < host.num_seqs; ++i) {
    for (int32_t h = 0; h < kKvHeads; ++h) {
      const size_t base = host.At(i, h, 0);
      ref::CompactHead(&pool.host, h, host.slots.data() + base, host.pos.data() + base,
                       host.score.data() + base, want[i * kKvHeads + h]);
    }
  }
  EXPECT_TRUE(testing::SameElements(testing::DownloadBytes(pool.k), pool.host.k));
  EXPECT_TRUE(testing::SameElements(testing::DownloadBytes(pool.v), pool.host.v));
  EXPECT_TRUE(
      testing::SameElements(testing::DownloadRaw<int32_t>(dev.pos, host.pos.size()), host.pos));
  EXPECT_TRUE(testing::SameElements(testing::DownloadRaw<double>(dev.score, host.score.size()),
                                    host.score));
}

INSTANTIATE_TEST_SUITE_P(DTypesAndHeadDims, H2oOpsTest,
                         ::testing::Combine(::testing::Values(DType::kF32, DType::kF16,
                                                              DType::kBF16),
                                            ::testing::Values(37, 128)),
                         [](const auto& info) {
                           return std::string(testing::DTypeLabel(std::get<0>(info.param))) + "_d" +
                                  std::to_string(std::get<1>(info.param));
                         });

TEST(H2oOpsArgsTest, BadArgumentsAreRefusedWithoutLaunching) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(7);
  HostEntries host = testing::RandomEntries(rng, {{5, 9, 4, 2}}, kKvHeads, true, 64);
  DeviceEntries dev = testing::UploadEntries(host);
  DeviceBuffer out = testing::Poisoned(kKvHeads * 16, 4);
  DeviceBuffer count = testing::Poisoned(kKvHeads, 4);
  DeviceBuffer mass = testing::Poisoned(kHeads * 16, 4);
  const auto invalid = [](const absl::Status& st) {
    return st.code() == absl::StatusCode::kInvalidArgument;
  };
  EntryLists no_scores = dev.Lists(/*with_scores=*/false);
  EXPECT_TRUE(invalid(AccumulateH2oScores(mass.as<float>(), kHeads, 16, no_scores,
                                          dev.view_n.as<int32_t>(), nullptr)));
  EXPECT_TRUE(invalid(AccumulateH2oScores(mass.as<float>(), kHeads + 1, 16, dev.Lists(),
                                          dev.view_n.as<int32_t>(), nullptr)));
  EXPECT_TRUE(invalid(
      AccumulateH2oScores(nullptr, kHeads, 16, dev.Lists(), dev.view_n.as<int32_t>(), nullptr)));
  EXPECT_TRUE(invalid(H2oVictims(no_scores, dev.Step(), out.as<int32_t>(), nullptr)));
  EXPECT_TRUE(invalid(H2oVictims(dev.Lists(), dev.Step(), nullptr, nullptr)));
  EvictStep no_length = dev.Step();
  no_length.length = nullptr;
  EXPECT_TRUE(invalid(H2oVictims(dev.Lists(), no_length, out.as<int32_t>(), nullptr)));
  EntryLists no_heads = dev.Lists();
  no_heads.num_kv_heads = 0;
  EXPECT_TRUE(invalid(H2oVictims(no_heads, dev.Step(), out.as<int32_t>(), nullptr)));
  EXPECT_TRUE(invalid(
      H2oSelectKeep(dev.Lists(), dev.Step(), out.as<int32_t>(), 0, count.as<int32_t>(), nullptr)));
  EvictStep no_total = dev.Step();
  no_total.total = nullptr;
  EXPECT_TRUE(invalid(
      H2oSelectKeep(dev.Lists(), no_total, out.as<int32_t>(), 16, count.as<int32_t>(), nullptr)));
  testing::StrategyPool pool = testing::RandomStrategyPool(rng, 4, kKvHeads, kBlockSize, 8, DType::kF32);
  CudaKvPool wrong_heads = pool.ref;
  wrong_heads.num_kv_heads = kKvHeads + 1;
  EXPECT_TRUE(invalid(ReplaceVictims(wrong_heads, dev.Lists(), dev.view_n.as<int32_t>(),
                                     out.as<int32_t>(), nullptr)));
  CudaKvPool no_v = pool.ref;
  no_v.v = nullptr;
  EXPECT_TRUE(
      invalid(CompactKept(no_v, dev.Lists(), out.as<int32_t>(), 16, count.as<int32_t>(), nullptr)));
  // Nothing ran: the outputs and the pool are as they were.
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  for (int32_t x : testing::DownloadRaw<int32_t>(out, kKvHeads * 16)) ASSERT_EQ(x, -1);
  for (int32_t x : testing::DownloadRaw<int32_t>(count, kKvHeads)) ASSERT_EQ(x, -1);
  EXPECT_TRUE(testing::SameElements(testing::DownloadRaw<double>(dev.score, host.score.size()),
                                    host.score));
  EXPECT_TRUE(testing::SameElements(testing::DownloadBytes(pool.k), pool.host.k));
  // Zero sequences: nothing to do, OK.
  EntryLists empty = dev.Lists();
  empty.num_seqs = 0;
  EXPECT_TRUE(H2oVictims(empty, dev.Step(), out.as<int32_t>(), nullptr).ok());
}

}  // namespace
}  // namespace kvscope::kernels::cuda

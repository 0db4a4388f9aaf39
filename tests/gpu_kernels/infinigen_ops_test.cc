// File: tests/gpu_kernels/infinigen_ops_test.cc
//
// InfiniGen on the device (kernels/cuda/infinigen_ops.h) against the CPU rules
// (tests/gpu_kernels/strategy_reference.h, checked against kvcache's SpeculatedCount and
// TopKAscending in tests/kvcache/strategy_reference_test.cc): partial-key columns copied bit
// for bit, partial scores equal to the CPU's double sums bit for bit, the same count n' and
// the same selections (ties included: one case draws queries and keys from a few values so
// that many scores are equal), and both gathers (copy engine, zero copy) bit-exact with the
// CPU's byte accounting, for every element type and odd sizes. Outputs are poisoned first.
#include "kernels/cuda/infinigen_ops.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_buffer.h"
#include "tests/gpu_kernels/evicting_test_setup.h"
#include "tests/gpu_kernels/gpu_test_util.h"
#include "tests/gpu_kernels/strategy_reference.h"

namespace kvscope::kernels::cuda {
namespace {

namespace ref = ::kvscope::strategy_reference;

constexpr int32_t kKvHeads = 3;
constexpr int32_t kGroup = 2;
constexpr int32_t kHeads = kKvHeads * kGroup;
constexpr int32_t kBlockSize = 16;

bool AllPoison(const uint8_t* bytes, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (bytes[i] != 0xFF) return false;
  }
  return true;
}

class InfinigenOpsTest : public ::testing::TestWithParam<std::tuple<DType, int32_t>> {};

TEST_P(InfinigenOpsTest, WritePartialKeysCopiesTheColumns) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  const auto [dtype, head_dim] = GetParam();
  std::mt19937 rng(505 + head_dim);
  const int64_t num_blocks = 9;
  const int32_t pd = head_dim / 5 + 1;  // 8 or 26 columns
  testing::StrategyPool pool =
      testing::RandomStrategyPool(rng, num_blocks, kKvHeads, kBlockSize, head_dim, dtype);
  const int64_t rows = num_blocks * kBlockSize;
  std::vector<int32_t> slots = {5, -1, 77, 0, 143, -1, 31};
  std::vector<int32_t> columns(kKvHeads * pd);
  for (int32_t& c : columns) c = static_cast<int32_t>(rng() % head_dim);
  DeviceBuffer slots_dev = testing::UploadRaw(slots);
  DeviceBuffer cols_dev = testing::UploadRaw(columns);
  const size_t elem = DTypeSize(dtype);
  DeviceBuffer pk = testing::Poisoned(static_cast<size_t>(rows) * kKvHeads * pd, elem);
  ASSERT_TRUE(WritePartialKeys(pool.ref, slots_dev.as<int32_t>(),
                               static_cast<int32_t>(slots.size()), cols_dev.as<int32_t>(), pd,
                               pk.data(), nullptr)
                  .ok());
  std::vector<uint8_t> want(pk.bytes(), 0xFF);
  for (int32_t slot : slots) {
    if (slot < 0) continue;
    for (int32_t h = 0; h < kKvHeads; ++h) {
      for (int32_t c = 0; c < pd; ++c) {
        std::memcpy(want.data() + ((static_cast<size_t>(slot) * kKvHeads + h) * pd + c) * elem,
                    pool.host.k.data() + pool.host.RowByte(slot, h) + columns[h * pd + c] * elem,
                    elem);
      }
    }
  }
  EXPECT_TRUE(testing::SameElements(testing::DownloadBytes(pk), want));

  // dst_rows: read at slots, stored at other rows (-1 skips a token that has a slot).
  const std::vector<int32_t> dst_rows = {140, 3, -1, 64, 2, 9, 100};
  DeviceBuffer rows_dev = testing::UploadRaw(dst_rows);
  DeviceBuffer moved = testing::Poisoned(static_cast<size_t>(rows) * kKvHeads * pd, elem);
  ASSERT_TRUE(WritePartialKeys(pool.ref, slots_dev.as<int32_t>(),
                               static_cast<int32_t>(slots.size()), cols_dev.as<int32_t>(), pd,
                               moved.data(), nullptr, rows_dev.as<int32_t>())
                  .ok());
  std::vector<uint8_t> want_moved(moved.bytes(), 0xFF);
  for (size_t t = 0; t < slots.size(); ++t) {
    if (slots[t] < 0 || dst_rows[t] < 0) continue;
    for (int32_t h = 0; h < kKvHeads; ++h) {
      for (int32_t c = 0; c < pd; ++c) {
        std::memcpy(
            want_moved.data() + ((static_cast<size_t>(dst_rows[t]) * kKvHeads + h) * pd + c) * elem,
            pool.host.k.data() + pool.host.RowByte(slots[t], h) + columns[h * pd + c] * elem, elem);
      }
    }
  }
  EXPECT_TRUE(testing::SameElements(testing::DownloadBytes(moved), want_moved));
}

// Speculation over 4 sequences with 0, 1, 57 and 700 candidates.
void RunSpeculation(DType dtype, int32_t head_dim, bool few_values, uint32_t seed) {
  std::mt19937 rng(seed);
  const int32_t pd = head_dim / 5 + 1;
  const std::vector<int32_t> num_cands = {0, 1, 57, 700};
  const std::vector<int32_t> max_num_kv = {4, 3, 20, 64};
  const int32_t num_seqs = static_cast<int32_t>(num_cands.size());
  const int64_t cand_stride = 703;
  const int32_t partial_rows = 1024;
  const double alpha = few_values ? 3.0 : 0.75;  // few values: a cut inside the bulk
  // Values: a few exact ones (many equal dot products) or continuous.
  const float levels[] = {-1.0f, -0.5f, 0.0f, 0.5f, 1.0f};
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  auto draw = [&]() { return few_values ? levels[rng() % 5] : u(rng); };
  std::vector<float> q(static_cast<size_t>(num_seqs) * kHeads * pd),
      pkf(static_cast<size_t>(partial_rows) * kKvHeads * pd);
  for (float& x : q) x = draw();
  for (float& x : pkf) x = draw();
  const std::vector<uint8_t> pk_bytes = testing::ToDType(pkf, dtype);
  const std::vector<float> pk_seen = testing::FromDType(pk_bytes, dtype);
  std::vector<int32_t> cand(static_cast<size_t>(num_seqs) * kKvHeads * cand_stride, -1);
  for (int32_t r = 0; r < num_seqs; ++r) {
    for (int32_t kh = 0; kh < kKvHeads; ++kh) {
      std::vector<int32_t> all(partial_rows);
      std::iota(all.begin(), all.end(), 0);
      std::shuffle(all.begin(), all.end(), rng);
      std::copy_n(all.begin(), num_cands[r],
                  cand.begin() + (static_cast<size_t>(r) * kKvHeads + kh) * cand_stride);
    }
  }
  DeviceBuffer q_dev = testing::UploadRaw(q);
  DeviceBuffer pk_dev = testing::UploadRaw(pk_bytes);
  DeviceBuffer cand_dev = testing::UploadRaw(cand);
  DeviceBuffer n_dev = testing::UploadRaw(num_cands);
  DeviceBuffer max_dev = testing::UploadRaw(max_num_kv);
  DeviceBuffer scores =
      testing::Poisoned(static_cast<size_t>(num_seqs) * kHeads * cand_stride, sizeof(double));
  ASSERT_TRUE(InfinigenPartialScores(q_dev.as<float>(), pk_dev.data(), dtype, kKvHeads, pd,
                                     cand_dev.as<int32_t>(), cand_stride, n_dev.as<int32_t>(),
                                     num_seqs, kHeads, scores.as<double>(), nullptr)
                  .ok());
  const std::vector<double> got_scores =
      testing::DownloadRaw<double>(scores, static_cast<size_t>(num_seqs) * kHeads * cand_stride);

  DeviceBuffer counts = testing::Poisoned(num_seqs, 4);
  ASSERT_TRUE(InfinigenSpeculatedCount(scores.as<double>(), cand_stride, n_dev.as<int32_t>(),
                                       num_seqs, kHeads, alpha, max_dev.as<int32_t>(),
                                       counts.as<int32_t>(), nullptr)
                  .ok());
  const std::vector<int32_t> got_counts = testing::DownloadRaw<int32_t>(counts, num_seqs);

  const int32_t sel_stride = 70;  // >= every max_num_kv
  DeviceBuffer selected =
      testing::Poisoned(static_cast<size_t>(num_seqs) * kKvHeads * sel_stride, 4);
  ASSERT_TRUE(InfinigenTopK(scores.as<double>(), cand_stride, n_dev.as<int32_t>(),
                            counts.as<int32_t>(), num_seqs, kHeads, kKvHeads,
                            selected.as<int32_t>(), sel_stride, nullptr)
                  .ok());
  const std::vector<int32_t> got_sel = testing::DownloadRaw<int32_t>(
      selected, static_cast<size_t>(num_seqs) * kKvHeads * sel_stride);

  int32_t ties_seen = 0;
  for (int32_t r = 0; r < num_seqs; ++r) {
    const int32_t n = num_cands[r];
    // The CPU's dense [heads][n] scores (infinigen_kv_cache.cc:178-189).
    std::vector<double> dense(static_cast<size_t>(kHeads) * n);
    for (int32_t h = 0; h < kHeads; ++h) {
      const int32_t kh = h / kGroup;
      for (int32_t j = 0; j < n; ++j) {
        const int32_t row = cand[(static_cast<size_t>(r) * kKvHeads + kh) * cand_stride + j];
        dense[static_cast<size_t>(h) * n + j] =
            ref::PartialDot(q.data() + (static_cast<size_t>(r) * kHeads + h) * pd,
                            pk_seen.data() + (static_cast<size_t>(row) * kKvHeads + kh) * pd, pd);
      }
      for (int64_t j = 0; j < cand_stride; ++j) {
        const double got = got_scores[(static_cast<size_t>(r) * kHeads + h) * cand_stride + j];
        if (j < n) {
          ASSERT_EQ(got, dense[static_cast<size_t>(h) * n + j]) << "r " << r << " h " << h;
        } else {
          uint64_t bits;
          std::memcpy(&bits, &got, 8);
          ASSERT_EQ(bits, ~uint64_t{0}) << "score past the candidates written";
        }
      }
    }
    const int32_t count = ref::SpeculatedCount(dense.data(), kHeads, n, alpha, max_num_kv[r]);
    ASSERT_EQ(got_counts[r], count) << "r " << r;
    for (int32_t kh = 0; kh < kKvHeads; ++kh) {
      const std::vector<double> agg = ref::GroupMax(dense.data(), n, kh, kGroup);
      const std::vector<int32_t> want = ref::TopKAscending(agg.data(), n, count);
      const size_t base = (static_cast<size_t>(r) * kKvHeads + kh) * sel_stride;
      const std::vector<int32_t> got(got_sel.begin() + base, got_sel.begin() + base + count);
      ASSERT_EQ(got, want) << "r " << r << " kv head " << kh;
      for (int32_t j = count; j < sel_stride; ++j) ASSERT_EQ(got_sel[base + j], -1);
      if (count > 0 && count < n) {
        std::vector<double> sorted = agg;
        std::sort(sorted.begin(), sorted.end(), std::greater<double>());
        if (sorted[count - 1] == sorted[count]) ++ties_seen;  // a tie at the cut
      }
    }
  }
  if (few_values) {
    EXPECT_GT(ties_seen, 0) << "the tie case produced no tie at the cut";
  }
}

TEST_P(InfinigenOpsTest, SpeculationMatchesCpuWithTies) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  const auto [dtype, head_dim] = GetParam();
  RunSpeculation(dtype, head_dim, /*few_values=*/true, 606 + head_dim);
}

TEST_P(InfinigenOpsTest, SpeculationMatchesCpuContinuous) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  const auto [dtype, head_dim] = GetParam();
  RunSpeculation(dtype, head_dim, /*few_values=*/false, 707 + head_dim);
}

TEST_P(InfinigenOpsTest, GatherBothWaysIsBitExact) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  const auto [dtype, head_dim] = GetParam();
  std::mt19937 rng(808 + head_dim);
  const size_t elem = DTypeSize(dtype);
  const int64_t host_blocks = 37, dst_blocks = 11;
  const size_t host_count = static_cast<size_t>(host_blocks) * kKvHeads * kBlockSize * head_dim;
  // The host pool in mapped pinned memory (zero copy reads it; the copy engine packs it).
  auto host_k = PinnedBuffer::Allocate(host_count * elem, /*mapped=*/true);
  auto host_v = PinnedBuffer::Allocate(host_count * elem, /*mapped=*/true);
  ASSERT_TRUE(host_k.ok() && host_v.ok());
  std::uniform_real_distribution<float> u(-3.0f, 3.0f);
  std::vector<float> kf(host_count), vf(host_count);
  for (float& x : kf) x = u(rng);
  for (float& x : vf) x = u(rng);
  const std::vector<uint8_t> kb = testing::ToDType(kf, dtype), vb = testing::ToDType(vf, dtype);
  std::memcpy(host_k->data(), kb.data(), kb.size());
  std::memcpy(host_v->data(), vb.data(), vb.size());
  const CudaKvPool host_pool{host_k->data(), host_v->data(), host_blocks, kKvHeads,
                            kBlockSize,     head_dim,       dtype};
  auto mk = host_k->DevicePointer();
  auto mv = host_v->DevicePointer();
  ASSERT_TRUE(mk.ok() && mv.ok());
  const CudaKvPool mapped_pool{*mk, *mv, host_blocks, kKvHeads, kBlockSize, head_dim, dtype};

  // 203 rows: random sources (repeats allowed), distinct (dst slot, head) targets.
  const int64_t dst_slots = dst_blocks * kBlockSize;
  std::vector<int32_t> targets(dst_slots * kKvHeads);
  std::iota(targets.begin(), targets.end(), 0);
  std::shuffle(targets.begin(), targets.end(), rng);
  std::vector<GatherRow> rows(203);
  for (size_t r = 0; r < rows.size(); ++r) {
    rows[r].src_slot = static_cast<int32_t>(rng() % (host_blocks * kBlockSize));
    rows[r].dst_slot = targets[r] / kKvHeads;
    rows[r].head = targets[r] % kKvHeads;
  }
  const size_t dst_count = static_cast<size_t>(dst_blocks) * kKvHeads * kBlockSize * head_dim;
  ref::BytePool host_ref;
  host_ref.k = kb;
  host_ref.v = vb;
  host_ref.num_kv_heads = kKvHeads;
  host_ref.block_size = kBlockSize;
  host_ref.head_dim = head_dim;
  host_ref.elem = static_cast<int32_t>(elem);
  ref::BytePool dst_ref = host_ref;
  dst_ref.k.assign(dst_count * elem, 0xFF);
  dst_ref.v.assign(dst_count * elem, 0xFF);
  const size_t row_bytes = static_cast<size_t>(head_dim) * elem;
  for (const GatherRow& row : rows) {
    std::memcpy(dst_ref.k.data() + dst_ref.RowByte(row.dst_slot, row.head),
                host_ref.k.data() + host_ref.RowByte(row.src_slot, row.head), row_bytes);
    std::memcpy(dst_ref.v.data() + dst_ref.RowByte(row.dst_slot, row.head),
                host_ref.v.data() + host_ref.RowByte(row.src_slot, row.head), row_bytes);
  }
  const int64_t want_bytes = static_cast<int64_t>(rows.size()) * 2 * head_dim * elem;

  // (a) Copy engine.
  {
    DeviceBuffer dk = testing::Poisoned(dst_count, elem), dv = testing::Poisoned(dst_count, elem);
    const CudaKvPool dst{dk.data(), dv.data(), dst_blocks, kKvHeads, kBlockSize, head_dim, dtype};
    const size_t need = GatherPackedBytes(static_cast<int64_t>(rows.size()), head_dim, dtype);
    auto staging = PinnedBuffer::Allocate(need);
    auto packed = DeviceBuffer::Allocate(need);
    ASSERT_TRUE(staging.ok() && packed.ok());
    int64_t h2d = 5;
    ASSERT_TRUE(GatherCopyEngine(host_pool, rows.data(), static_cast<int64_t>(rows.size()),
                                 staging->data(), staging->bytes(), packed->data(), packed->bytes(),
                                 dst, nullptr, &h2d)
                    .ok());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(h2d, 5 + want_bytes);
    EXPECT_TRUE(testing::SameElements(testing::DownloadBytes(dk), dst_ref.k));
    EXPECT_TRUE(testing::SameElements(testing::DownloadBytes(dv), dst_ref.v));
  }
  // (b) Zero copy.
  {
    DeviceBuffer dk = testing::Poisoned(dst_count, elem), dv = testing::Poisoned(dst_count, elem);
    const CudaKvPool dst{dk.data(), dv.data(), dst_blocks, kKvHeads, kBlockSize, head_dim, dtype};
    DeviceBuffer rows_dev = testing::UploadRaw(rows);
    int64_t h2d = 0;
    ASSERT_TRUE(GatherZeroCopy(mapped_pool, rows_dev.as<GatherRow>(),
                               static_cast<int64_t>(rows.size()), dst, nullptr, &h2d)
                    .ok());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(h2d, want_bytes);
    EXPECT_TRUE(testing::SameElements(testing::DownloadBytes(dk), dst_ref.k));
    EXPECT_TRUE(testing::SameElements(testing::DownloadBytes(dv), dst_ref.v));
  }
}

INSTANTIATE_TEST_SUITE_P(DTypesAndHeadDims, InfinigenOpsTest,
                         ::testing::Combine(::testing::Values(DType::kF32, DType::kF16,
                                                              DType::kBF16),
                                            ::testing::Values(37, 128)),
                         [](const auto& info) {
                           return std::string(testing::DTypeLabel(std::get<0>(info.param))) + "_d" +
                                  std::to_string(std::get<1>(info.param));
                         });

TEST(InfinigenOpsArgsTest, BadArgumentsAreRefusedWithoutLaunching) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  const auto invalid = [](const absl::Status& st) {
    return st.code() == absl::StatusCode::kInvalidArgument;
  };
  DeviceBuffer out = testing::Poisoned(64, 8);
  DeviceBuffer ints = testing::UploadRaw(std::vector<int32_t>(16, 1));
  DeviceBuffer q = testing::UploadRaw(std::vector<float>(64, 1.0f));
  // Heads not a multiple of KV heads; partial_dim 0; null scores.
  EXPECT_TRUE(
      invalid(InfinigenPartialScores(q.as<float>(), q.data(), DType::kF32, 3, 4, ints.as<int32_t>(),
                                     4, ints.as<int32_t>(), 1, 4, out.as<double>(), nullptr)));
  EXPECT_TRUE(
      invalid(InfinigenPartialScores(q.as<float>(), q.data(), DType::kF32, 2, 0, ints.as<int32_t>(),
                                     4, ints.as<int32_t>(), 1, 4, out.as<double>(), nullptr)));
  EXPECT_TRUE(
      invalid(InfinigenPartialScores(q.as<float>(), q.data(), DType::kF32, 2, 4, ints.as<int32_t>(),
                                     4, ints.as<int32_t>(), 1, 4, nullptr, nullptr)));
  EXPECT_TRUE(invalid(InfinigenSpeculatedCount(out.as<double>(), 4, ints.as<int32_t>(), 1, 2, -1.0,
                                               ints.as<int32_t>(), out.as<int32_t>(), nullptr)));
  EXPECT_TRUE(invalid(InfinigenSpeculatedCount(out.as<double>(), 4, ints.as<int32_t>(), 1, 2, NAN,
                                               ints.as<int32_t>(), out.as<int32_t>(), nullptr)));
  EXPECT_TRUE(invalid(InfinigenTopK(out.as<double>(), 4, ints.as<int32_t>(), ints.as<int32_t>(), 1,
                                    4, 3, out.as<int32_t>(), 8, nullptr)));
  EXPECT_TRUE(invalid(InfinigenTopK(out.as<double>(), 4, ints.as<int32_t>(), ints.as<int32_t>(), 1,
                                    4, 2, out.as<int32_t>(), 0, nullptr)));

  // Gathers: a row outside the pools, too little staging, mismatched pools, null rows.
  std::mt19937 rng(9);
  testing::StrategyPool src = testing::RandomStrategyPool(rng, 2, 2, kBlockSize, 8, DType::kBF16);
  DeviceBuffer dk = testing::Poisoned(2 * 2 * kBlockSize * 8, 2);
  DeviceBuffer dv = testing::Poisoned(2 * 2 * kBlockSize * 8, 2);
  const CudaKvPool dst{dk.data(), dv.data(), 2, 2, kBlockSize, 8, DType::kBF16};
  CudaKvPool host_pool = dst;
  host_pool.k = src.host.k.data();
  host_pool.v = src.host.v.data();
  auto staging = PinnedBuffer::Allocate(4096);
  auto packed = DeviceBuffer::Allocate(4096);
  ASSERT_TRUE(staging.ok() && packed.ok());
  int64_t h2d = 0;
  const std::vector<GatherRow> outside = {{0, 1, 0}, {32, 0, 1}};  // src slot 32 of 32
  EXPECT_TRUE(invalid(GatherCopyEngine(host_pool, outside.data(), 2, staging->data(), 4096,
                                       packed->data(), 4096, dst, nullptr, &h2d)));
  const std::vector<GatherRow> bad_head = {{0, 1, 2}};
  EXPECT_TRUE(invalid(GatherCopyEngine(host_pool, bad_head.data(), 1, staging->data(), 4096,
                                       packed->data(), 4096, dst, nullptr, &h2d)));
  const std::vector<GatherRow> fine = {{3, 4, 1}};
  EXPECT_TRUE(invalid(GatherCopyEngine(host_pool, fine.data(), 1, staging->data(), 8,
                                       packed->data(), 4096, dst, nullptr, &h2d)));
  CudaKvPool other_type = dst;
  other_type.dtype = DType::kF16;
  EXPECT_TRUE(invalid(GatherCopyEngine(host_pool, fine.data(), 1, staging->data(), 4096,
                                       packed->data(), 4096, other_type, nullptr, &h2d)));
  EXPECT_TRUE(invalid(GatherZeroCopy(host_pool, nullptr, 1, dst, nullptr, &h2d)));
  CudaKvPool other_dim = dst;
  other_dim.head_dim = 16;
  EXPECT_TRUE(
      invalid(GatherZeroCopy(host_pool, packed->as<GatherRow>(), 1, other_dim, nullptr, &h2d)));
  EXPECT_TRUE(invalid(WritePartialKeys(dst, ints.as<int32_t>(), 1, ints.as<int32_t>(), 9,
                                       out.data(), nullptr)));  // partial_dim > head_dim
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(h2d, 0);
  const std::vector<uint8_t> dk_bytes = testing::DownloadBytes(dk);
  EXPECT_TRUE(AllPoison(dk_bytes.data(), dk_bytes.size()));
  const std::vector<uint8_t> out_bytes = testing::DownloadBytes(out);
  EXPECT_TRUE(AllPoison(out_bytes.data(), out_bytes.size()));
  // No rows: nothing to do, nothing counted.
  EXPECT_TRUE(
      GatherCopyEngine(host_pool, nullptr, 0, nullptr, 0, nullptr, 0, dst, nullptr, &h2d).ok());
  EXPECT_EQ(h2d, 0);
}

}  // namespace
}  // namespace kvscope::kernels::cuda

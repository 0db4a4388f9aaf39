// File: tests/gpu_kernels/attention_prefill_test.cc
//
// PrefillAttention (kernels/cuda/attention_prefill.h) against the CPU reference: the chunked
// prefill flow (new tokens written with cuda::WriteKv next to a cached prefix, the pool then
// compared bit for bit with kernels::WriteKv, then attended), several sequences with odd
// prefix and chunk lengths, GQA ratios 1/2/4/8, tensor-core kernels (bf16/fp16 with head_dim
// 64/128/256) and the general path (f32, head_dim 16 and 80, or forced), shared and per-head
// lists, poisoned outputs, error flags and InvalidArgument.
#include "kernels/cuda/attention_prefill.h"

#include <cmath>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cuda/kv_cache_ops.h"
#include "kernels/ops.h"
#include "tests/gpu_kernels/attention_test_util.h"
#include "tests/gpu_kernels/gpu_test_util.h"

namespace kvscope::kernels::cuda {
namespace {

using testing::DeviceSeqs;
using testing::TestPool;
using testing::TestSeq;

struct PrefillCase {
  DType dtype = DType::kBF16;
  int32_t head_dim = 128;
  int32_t num_kv_heads = 2;
  int32_t group = 4;
  int32_t block_size = 16;
  // (cached prefix length, new tokens) per sequence.
  std::vector<std::pair<int32_t, int32_t>> seqs = {{0, 77}, {33, 1}, {130, 65}};
  bool per_head = false;
  bool force_general = false;
  uint32_t seed = 1;
};

std::string Describe(const PrefillCase& c) {
  return absl::StrCat(testing::DTypeLabel(c.dtype), " d=", c.head_dim, " kvh=", c.num_kv_heads,
                      " group=", c.group, " per_head=", c.per_head, " general=", c.force_general,
                      " seed=", c.seed);
}

void RunPrefill(const PrefillCase& c) {
  SCOPED_TRACE(Describe(c));
  std::mt19937 rng(c.seed);
  const int32_t num_seqs = static_cast<int32_t>(c.seqs.size());
  const int32_t num_heads = c.num_kv_heads * c.group;
  const int32_t d = c.head_dim;
  const int32_t extra = c.per_head ? 9 : 0;
  int64_t total = 0;
  for (auto [prefix, fresh] : c.seqs) total += prefix + fresh + extra;
  const int64_t num_blocks = (total * 5 / 4) / c.block_size + 3;
  TestPool pool = testing::RandomPool(rng, c.dtype, num_blocks, c.num_kv_heads, c.block_size, d);
  std::vector<int32_t> free_slots = testing::ShuffledSlots(rng, pool.num_slots());

  std::vector<TestSeq> seqs;
  std::vector<int32_t> seq_q_start = {0}, token_seq, token_pos, new_slots;
  int32_t max_q = 0;
  for (int32_t s = 0; s < num_seqs; ++s) {
    const auto [prefix, fresh] = c.seqs[s];
    const int32_t n = prefix + fresh;
    TestSeq seq = testing::RandomSeq(rng, free_slots, n, c.num_kv_heads, c.per_head, extra);
    if (!c.per_head) {
      // The chunk's tokens are positions prefix..n-1: write them, then attend.
      for (int32_t i = 0; i < fresh; ++i) {
        token_seq.push_back(s);
        token_pos.push_back(prefix + i);
        new_slots.push_back(seq.slots[prefix + i]);
      }
    } else {
      // Per-head lists (an evicting strategy): queries at the newest positions that every
      // head can still serve.
      int32_t lo = 0;
      for (int32_t h = 0; h < c.num_kv_heads; ++h) {
        int32_t mn = INT32_MAX;
        for (int32_t j = 0; j < n; ++j) mn = std::min(mn, seq.positions[h * seq.head_stride + j]);
        lo = std::max(lo, mn);
      }
      const int32_t newest = n + extra - 1;
      for (int32_t i = 0; i < fresh; ++i) {
        token_seq.push_back(s);
        token_pos.push_back(std::max(lo, newest - fresh + 1 + i));
      }
    }
    seq_q_start.push_back(seq_q_start.back() + fresh);
    max_q = std::max(max_q, fresh);
    seqs.push_back(std::move(seq));
  }
  const int64_t tokens = seq_q_start.back();
  const int64_t row = static_cast<int64_t>(num_heads) * d;
  const int64_t kv_row = static_cast<int64_t>(c.num_kv_heads) * d;

  // The chunk's K/V: written on both sides, then the pools must agree bit for bit.
  if (!new_slots.empty()) {
    const int64_t new_tokens = static_cast<int64_t>(new_slots.size());
    std::vector<float> nk =
        testing::RoundTo(testing::RandomValues(rng, new_tokens * kv_row), c.dtype);
    std::vector<float> nv =
        testing::RoundTo(testing::RandomValues(rng, new_tokens * kv_row), c.dtype);
    ASSERT_TRUE(kernels::WriteKv(pool.HostView(), nk.data(), nv.data(), kv_row, new_slots.data(),
                                 new_tokens)
                    .ok());
    DeviceBuffer dk = testing::Upload(nk, c.dtype), dv = testing::Upload(nv, c.dtype);
    DeviceBuffer dslots = testing::UploadRaw(new_slots);
    ASSERT_TRUE(cuda::WriteKv(pool.DeviceView(), dk.data(), dv.data(), kv_row, dslots.as<int32_t>(),
                              new_tokens, nullptr, nullptr)
                    .ok());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<float> host_k = pool.k, host_v = pool.v;
    pool.Download();
    ASSERT_EQ(pool.k, host_k);
    ASSERT_EQ(pool.v, host_v);
  }

  const int64_t q_stride = row + 16;
  const int64_t out_stride = row + 8;
  std::vector<float> q =
      testing::RoundTo(testing::RandomValues(rng, tokens * q_stride, -2.f, 2.f), c.dtype);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));

  std::vector<SeqKvView> host_views;
  for (const TestSeq& s : seqs) host_views.push_back(s.HostView());
  std::vector<float> ref(tokens * out_stride, 0.f);
  ASSERT_TRUE(Attention(q.data(), q_stride, tokens, num_heads, d, token_seq.data(),
                        token_pos.data(), pool.HostView(), host_views.data(), num_seqs, scale,
                        ref.data(), out_stride, nullptr, 0)
                  .ok());

  DeviceBuffer dq = testing::Upload(q, c.dtype);
  DeviceBuffer dout = testing::Poisoned(tokens * out_stride, DTypeSize(c.dtype));
  DeviceBuffer dstart = testing::UploadRaw(seq_q_start);
  DeviceBuffer dpos = testing::UploadRaw(token_pos);
  DeviceSeqs dseqs = testing::UploadSeqs(seqs);
  DeviceBuffer dflag = testing::UploadRaw(std::vector<int32_t>{0});
  PrefillOptions options;
  options.force_general = c.force_general;
  const absl::Status st =
      PrefillAttention(dq.data(), q_stride, tokens, num_heads, dstart.as<int32_t>(),
                       dpos.as<int32_t>(), pool.DeviceView(), dseqs.data(), num_seqs, max_q, scale,
                       dout.data(), out_stride, dflag.as<int32_t>(), options, nullptr);
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(testing::DownloadRaw<int32_t>(dflag, 1)[0], 0);
  const std::vector<float> got =
      testing::Rows(testing::Download(dout, tokens * out_stride, c.dtype), tokens, row, out_stride);
  const double err =
      testing::NormalizedError(got, testing::ToDouble(testing::Rows(ref, tokens, row, out_stride)));
  EXPECT_LE(err, testing::NormTolerance(c.dtype));
}

TEST(PrefillAttentionTest, TensorCoreKernelsMatchCpu) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  uint32_t seed = 1;
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    for (int32_t head_dim : {64, 128, 256}) {
      for (int32_t group : {1, 2, 4, 8}) {
        PrefillCase c;
        c.dtype = dtype;
        c.head_dim = head_dim;
        c.group = group;
        c.num_kv_heads = group == 8 ? 1 : 2;
        c.block_size = head_dim == 256 ? 5 : 16;
        c.seed = seed++;
        RunPrefill(c);
      }
    }
  }
}

TEST(PrefillAttentionTest, GeneralPathMatchesCpu) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  uint32_t seed = 100;
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int32_t head_dim : {16, 80, 128}) {
      PrefillCase c;
      c.dtype = dtype;
      c.head_dim = head_dim;
      c.group = 2;
      c.num_kv_heads = 3;
      c.force_general = head_dim == 128;  // 16 and 80 take it anyway
      c.seed = seed++;
      RunPrefill(c);
    }
  }
}

TEST(PrefillAttentionTest, PerHeadListsMatchCpu) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  uint32_t seed = 200;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (bool general : {false, true}) {
      PrefillCase c;
      c.dtype = dtype;
      c.head_dim = 64;
      c.per_head = true;
      c.force_general = general;
      c.seqs = {{40, 23}, {3, 3}, {100, 70}};
      c.seed = seed++;
      RunPrefill(c);
    }
  }
}

TEST(PrefillAttentionTest, LongChunkOverLongPrefix) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    PrefillCase c;
    c.dtype = dtype;
    c.head_dim = 128;
    c.group = 4;
    c.num_kv_heads = 2;
    c.seqs = {{1001, 301}, {0, 513}};
    c.seed = 300;
    RunPrefill(c);
  }
}

// Rows outside [seq_q_start[0], seq_q_start[num_seqs]) belong to no sequence: both paths
// leave them untouched (poisoned) and raise no flag; the owned rows match the CPU.
TEST(PrefillAttentionTest, RowsOwnedByNoSequenceAreLeftUntouched) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  for (bool general : {false, true}) {
    SCOPED_TRACE(general ? "general" : "tensor cores");
    std::mt19937 rng(11);
    const int32_t d = 64, num_heads = 2, row = num_heads * d;
    TestPool pool = testing::RandomPool(rng, DType::kBF16, 4, 1, 8, d);
    std::vector<int32_t> free_slots = testing::ShuffledSlots(rng, pool.num_slots());
    std::vector<TestSeq> seqs = {testing::RandomSeq(rng, free_slots, 10, 1, false)};
    DeviceSeqs dseqs = testing::UploadSeqs(seqs);
    // Rows 1..3 are the sequence's queries (positions 7, 8, 9); rows 0 and 4 are not owned.
    const std::vector<int32_t> token_pos = {0, 7, 8, 9, 0};
    std::vector<float> q = testing::RoundTo(testing::RandomValues(rng, 5 * row), DType::kBF16);
    DeviceBuffer dq = testing::Upload(q, DType::kBF16);
    DeviceBuffer dout = testing::Poisoned(5 * row, 2);
    DeviceBuffer dstart = testing::UploadRaw(std::vector<int32_t>{1, 4});
    DeviceBuffer dpos = testing::UploadRaw(token_pos);
    DeviceBuffer dflag = testing::UploadRaw(std::vector<int32_t>{0});
    PrefillOptions options;
    options.force_general = general;
    ASSERT_TRUE(PrefillAttention(dq.data(), row, 5, num_heads, dstart.as<int32_t>(),
                                 dpos.as<int32_t>(), pool.DeviceView(), dseqs.data(), 1, 3, 0.125f,
                                 dout.data(), row, dflag.as<int32_t>(), options, nullptr)
                    .ok());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(testing::DownloadRaw<int32_t>(dflag, 1)[0], 0);
    const std::vector<float> got = testing::Download(dout, 5 * row, DType::kBF16);
    for (int32_t i = 0; i < row; ++i) {
      ASSERT_TRUE(std::isnan(got[i])) << "row 0 written at " << i;
      ASSERT_TRUE(std::isnan(got[4 * row + i])) << "row 4 written at " << i;
    }
    std::vector<SeqKvView> host_views = {seqs[0].HostView()};
    const std::vector<int32_t> token_seq = {0, 0, 0};
    std::vector<float> ref(3 * row);
    ASSERT_TRUE(Attention(q.data() + row, row, 3, num_heads, d, token_seq.data(),
                          token_pos.data() + 1, pool.HostView(), host_views.data(), 1, 0.125f,
                          ref.data(), row, nullptr, 0)
                    .ok());
    const std::vector<float> owned(got.begin() + row, got.begin() + 4 * row);
    EXPECT_LE(testing::NormalizedError(owned, testing::ToDouble(ref)),
              testing::NormTolerance(DType::kBF16));
  }
}

TEST(PrefillAttentionTest, BadArgumentsAndNoVisibleKey) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(9);
  TestPool pool = testing::RandomPool(rng, DType::kBF16, 4, 1, 8, 64);
  std::vector<int32_t> free_slots = testing::ShuffledSlots(rng, pool.num_slots());
  std::vector<TestSeq> seqs = {testing::RandomSeq(rng, free_slots, 10, 1, false)};
  for (int32_t& p : seqs[0].positions) p += 1000;  // all in the future of the queries
  DeviceSeqs dseqs = testing::UploadSeqs(seqs);
  DeviceBuffer dq = testing::Upload(testing::RandomValues(rng, 3 * 2 * 64), DType::kBF16);
  DeviceBuffer dout = testing::Poisoned(3 * 2 * 64, 2);
  DeviceBuffer dstart = testing::UploadRaw(std::vector<int32_t>{0, 3});
  DeviceBuffer dpos = testing::UploadRaw(std::vector<int32_t>{0, 1, 2});
  DeviceBuffer dflag = testing::UploadRaw(std::vector<int32_t>{0});
  const PrefillOptions options;
  auto run = [&](int32_t num_heads, int64_t q_stride, const int32_t* start) {
    return PrefillAttention(dq.data(), q_stride, 3, num_heads, start, dpos.as<int32_t>(),
                            pool.DeviceView(), dseqs.data(), 1, 3, 0.125f, dout.data(), 128,
                            dflag.as<int32_t>(), options, nullptr);
  };
  EXPECT_EQ(run(2, 127, dstart.as<int32_t>()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run(2, 128, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run(0, 128, dstart.as<int32_t>()).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  for (float x : testing::Download(dout, 3 * 2 * 64, DType::kBF16)) ASSERT_TRUE(std::isnan(x));
  EXPECT_EQ(testing::DownloadRaw<int32_t>(dflag, 1)[0], 0);
  // Valid call, but no query sees a key: zeros and the flag.
  ASSERT_TRUE(run(2, 128, dstart.as<int32_t>()).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(testing::DownloadRaw<int32_t>(dflag, 1)[0], kErrorNoVisibleKey);
  for (float x : testing::Download(dout, 3 * 2 * 64, DType::kBF16)) EXPECT_EQ(x, 0.f);
}

}  // namespace
}  // namespace kvscope::kernels::cuda

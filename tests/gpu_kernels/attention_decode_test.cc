// File: tests/gpu_kernels/attention_decode_test.cc
//
// PagedAttention (kernels/cuda/attention_decode.h) against the CPU reference
// kernels::Attention on the same inputs rounded to the storage type: every dtype, head_dim
// 16/64/80/128/256 (specialised and generic kernels), GQA ratios 1/2/4/8/16, shared and
// per-head slot lists, one or several query tokens per sequence with causal masking by
// position, split-K forced off, forced on and automatic, attn_mass accumulation, poisoned
// outputs, device-side error flags and host-side InvalidArgument.
#include "kernels/cuda/attention_decode.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/ops.h"
#include "tests/gpu_kernels/attention_test_util.h"
#include "tests/gpu_kernels/gpu_test_util.h"

namespace kvscope::kernels::cuda {
namespace {

using testing::DeviceSeqs;
using testing::TestPool;
using testing::TestSeq;

struct Case {
  DType dtype = DType::kBF16;
  int32_t head_dim = 64;
  int32_t num_kv_heads = 2;
  int32_t group = 4;
  int32_t block_size = 16;
  std::vector<int32_t> num_cached = {37, 1, 200};
  int32_t queries_per_seq = 1;  // > 1: extra queries at earlier positions (causal masking)
  bool per_head = false;
  int32_t num_splits = 1;
  bool with_mass = false;
  int64_t pool_offset = 0;  // 1: misaligned pool (generic kernel for every head_dim)
  uint32_t seed = 1;
};

std::string Describe(const Case& c) {
  return absl::StrCat(testing::DTypeLabel(c.dtype), " d=", c.head_dim, " kvh=", c.num_kv_heads,
                      " group=", c.group, " bs=", c.block_size, " q/seq=", c.queries_per_seq,
                      " per_head=", c.per_head, " splits=", c.num_splits, " mass=", c.with_mass,
                      " offset=", c.pool_offset, " seed=", c.seed);
}

// Runs one case on the device and the CPU and compares out (and attn_mass).
void RunCase(const Case& c) {
  SCOPED_TRACE(Describe(c));
  std::mt19937 rng(c.seed);
  const int32_t num_seqs = static_cast<int32_t>(c.num_cached.size());
  const int32_t num_heads = c.num_kv_heads * c.group;
  const int32_t d = c.head_dim;
  const int32_t extra = 5;  // per-head lists choose among n + extra positions
  int64_t total = 0;
  int32_t max_cached = 0;
  for (int32_t n : c.num_cached) {
    total += n + extra;
    max_cached = std::max(max_cached, n);
  }
  // An odd number of blocks with spare room, so that slots scatter.
  const int64_t num_blocks = (total * 3 / 2) / c.block_size + 3;
  TestPool pool =
      testing::RandomPool(rng, c.dtype, num_blocks, c.num_kv_heads, c.block_size, d, c.pool_offset);
  std::vector<int32_t> free_slots = testing::ShuffledSlots(rng, pool.num_slots());
  std::vector<TestSeq> seqs;
  for (int32_t n : c.num_cached) {
    seqs.push_back(testing::RandomSeq(rng, free_slots, n, c.num_kv_heads, c.per_head, extra));
  }

  // Query tokens: per sequence, one at its newest position (sees everything) and
  // queries_per_seq - 1 more at random earlier positions that still see a key of every head.
  std::vector<int32_t> token_seq, token_pos;
  for (int32_t s = 0; s < num_seqs; ++s) {
    const int32_t newest = c.num_cached[s] - 1 + (c.per_head ? extra : 0);
    token_seq.push_back(s);
    token_pos.push_back(newest);
    for (int32_t i = 1; i < c.queries_per_seq; ++i) {
      // The smallest position every head lists is a safe lower bound.
      int32_t lo = 0;
      const int32_t lists = c.per_head ? c.num_kv_heads : 1;
      for (int32_t h = 0; h < lists; ++h) {
        int32_t mn = INT32_MAX;
        for (int32_t j = 0; j < seqs[s].num_cached; ++j) {
          mn = std::min(mn, seqs[s].positions[h * seqs[s].head_stride + j]);
        }
        lo = std::max(lo, mn);
      }
      std::uniform_int_distribution<int32_t> pos(lo, newest);
      token_seq.push_back(s);
      token_pos.push_back(pos(rng));
    }
  }
  const int64_t tokens = static_cast<int64_t>(token_seq.size());
  const int64_t row = static_cast<int64_t>(num_heads) * d;
  const int64_t q_stride = row + 8;    // padded rows
  const int64_t out_stride = row + 3;  // odd padding
  std::vector<float> q =
      testing::RoundTo(testing::RandomValues(rng, tokens * q_stride, -2.f, 2.f), c.dtype);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<float> mass0;
  if (c.with_mass) {
    mass0 = testing::RandomValues(rng, static_cast<size_t>(num_seqs) * num_heads * max_cached, 0.f,
                                  3.f);
  }

  // CPU reference.
  std::vector<SeqKvView> host_views;
  for (const TestSeq& s : seqs) host_views.push_back(s.HostView());
  std::vector<float> ref_out(tokens * out_stride, 0.f);
  std::vector<float> ref_mass = mass0;
  ASSERT_TRUE(Attention(q.data(), q_stride, tokens, num_heads, d, token_seq.data(),
                        token_pos.data(), pool.HostView(), host_views.data(), num_seqs, scale,
                        ref_out.data(), out_stride, c.with_mass ? ref_mass.data() : nullptr,
                        max_cached)
                  .ok());

  // Device.
  DeviceBuffer dq = testing::Upload(q, c.dtype);
  DeviceBuffer dout = testing::Poisoned(tokens * out_stride, DTypeSize(c.dtype));
  DeviceBuffer dseq = testing::UploadRaw(token_seq);
  DeviceBuffer dpos = testing::UploadRaw(token_pos);
  DeviceSeqs dseqs = testing::UploadSeqs(seqs);
  DeviceBuffer dmass;
  if (c.with_mass) dmass = testing::Upload(mass0, DType::kF32);
  DeviceBuffer dflag = testing::UploadRaw(std::vector<int32_t>{0});
  AttentionOptions options;
  options.num_splits = c.num_splits;
  const size_t ws_bytes = AttentionWorkspaceBytes(tokens, num_heads, c.num_kv_heads, d, max_cached,
                                                  c.with_mass, options);
  DeviceBuffer ws;
  if (ws_bytes > 0) ws = testing::Poisoned(ws_bytes, 1);
  const absl::Status st =
      PagedAttention(dq.data(), q_stride, tokens, num_heads, dseq.as<int32_t>(), dpos.as<int32_t>(),
                     pool.DeviceView(), dseqs.data(), num_seqs, max_cached, scale, dout.data(),
                     out_stride, c.with_mass ? dmass.as<float>() : nullptr, ws.data(), ws_bytes,
                     dflag.as<int32_t>(), options, /*stream=*/nullptr);
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_TRUE(cudaDeviceSynchronize() == cudaSuccess);

  EXPECT_EQ(testing::DownloadRaw<int32_t>(dflag, 1)[0], 0);
  const std::vector<float> got =
      testing::Rows(testing::Download(dout, tokens * out_stride, c.dtype), tokens, row, out_stride);
  const std::vector<float> want = testing::Rows(ref_out, tokens, row, out_stride);
  const double err = testing::NormalizedError(got, testing::ToDouble(want));
  EXPECT_LE(err, testing::NormTolerance(c.dtype));
  if (c.with_mass) {
    const std::vector<float> got_mass = testing::Download(dmass, mass0.size(), DType::kF32);
    // The probabilities come from the same rounded inputs in float32: tight for every dtype.
    EXPECT_LE(testing::NormalizedError(got_mass, testing::ToDouble(ref_mass)), 1e-5);
  }
}

TEST(PagedAttentionTest, MatchesCpuAcrossDtypesHeadDimsAndGroups) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  uint32_t seed = 1;
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int32_t head_dim : {16, 64, 80, 128, 256}) {
      // Every head tile of the kernel (1, 4, 8 query heads per CTA), full and partly used.
      for (int32_t group : {1, 2, 3, 4, 6, 8}) {
        Case c;
        c.dtype = dtype;
        c.head_dim = head_dim;
        c.group = group;
        c.num_kv_heads = group >= 6 ? 1 : 3;
        c.num_cached = {37, 1, 129, 16};
        c.block_size = head_dim == 256 ? 7 : 16;
        c.seed = seed++;
        RunCase(c);
      }
    }
  }
}

TEST(PagedAttentionTest, PerHeadListsAndSeveralQueriesPerSequence) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  uint32_t seed = 100;
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int32_t head_dim : {16, 128}) {
      for (bool per_head : {false, true}) {
        Case c;
        c.dtype = dtype;
        c.head_dim = head_dim;
        c.per_head = per_head;
        c.queries_per_seq = 5;
        c.num_cached = {61, 3, 150};
        c.seed = seed++;
        RunCase(c);
      }
    }
  }
}

TEST(PagedAttentionTest, SplitKForcedOffOnAndAutomatic) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  uint32_t seed = 200;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int32_t head_dim : {64, 80, 128}) {
      // 3 splits over short lists leaves some splits empty; 7 over long ones does not;
      // 0 (automatic) splits the long single sequence.
      for (int32_t splits : {1, 3, 7, 0}) {
        Case c;
        c.dtype = dtype;
        c.head_dim = head_dim;
        c.num_kv_heads = 2;
        c.group = 4;
        c.num_splits = splits;
        c.num_cached =
            splits == 0 ? std::vector<int32_t>{4099} : std::vector<int32_t>{2, 333, 1025};
        c.queries_per_seq = 2;
        c.seed = seed++;
        RunCase(c);
      }
    }
  }
}

TEST(PagedAttentionTest, AttnMassMatchesCpu) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  uint32_t seed = 300;
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int32_t splits : {1, 4}) {
      for (bool per_head : {false, true}) {
        Case c;
        c.dtype = dtype;
        c.head_dim = dtype == DType::kF16 ? 16 : 128;
        c.with_mass = true;
        c.num_splits = splits;
        c.per_head = per_head;
        c.queries_per_seq = 3;  // several tokens of one sequence add into the same row
        c.num_cached = {45, 300, 7};
        c.seed = seed++;
        RunCase(c);
      }
    }
  }
}

TEST(PagedAttentionTest, LargeGroupsSpanSeveralHeadChunks) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    Case c;
    c.dtype = dtype;
    c.head_dim = 64;
    c.num_kv_heads = 1;
    c.group = 12;  // one chunk of 8 heads and one of 4
    c.num_cached = {99};
    c.with_mass = true;
    c.seed = 400;
    RunCase(c);
  }
}

// A pool base that is not 16-byte aligned: every head_dim runs the generic kernel.
TEST(PagedAttentionTest, MisalignedPoolTakesTheGenericKernel) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  uint32_t seed = 700;
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int32_t splits : {1, 3}) {
      Case c;
      c.dtype = dtype;
      c.head_dim = 128;
      c.pool_offset = 1;
      c.num_splits = splits;
      c.with_mass = true;
      c.seed = seed++;
      RunCase(c);
    }
  }
}

// The shapes of the whole-engine test model (head_dim 16, 4 heads over 2 KV heads) at a
// decode step with a long context and automatic splitting.
TEST(PagedAttentionTest, TestModelShapeLongContext) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    Case c;
    c.dtype = dtype;
    c.head_dim = 16;
    c.num_kv_heads = 2;
    c.group = 2;
    c.num_splits = 0;
    c.num_cached = {2047};
    c.seed = 500;
    RunCase(c);
  }
}

// The plain paged case: block tables -> slot lists on the device, then attention; against
// the CPU on the same lists built on the host.
TEST(PagedAttentionTest, BlockTablesMatchCpu) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(testing::DTypeLabel(dtype));
    std::mt19937 rng(600);
    const int32_t block_size = 16, kv_heads = 2, d = 128, num_heads = 8;  // group 4
    const std::vector<int32_t> lens = {1, 17, 250, 33, 16};
    const int32_t num_seqs = static_cast<int32_t>(lens.size());
    const int32_t max_blocks = 17, max_context = 260;
    TestPool pool = testing::RandomPool(rng, dtype, 61, kv_heads, block_size, d);
    std::vector<int32_t> blocks(pool.num_blocks);
    std::iota(blocks.begin(), blocks.end(), 0);
    std::shuffle(blocks.begin(), blocks.end(), rng);
    std::vector<int32_t> table(num_seqs * max_blocks, -7);  // unused entries: garbage
    std::vector<TestSeq> seqs(num_seqs);
    size_t next = 0;
    for (int32_t s = 0; s < num_seqs; ++s) {
      for (int32_t b = 0; b * block_size < lens[s]; ++b) table[s * max_blocks + b] = blocks[next++];
      seqs[s].num_cached = lens[s];
      for (int32_t j = 0; j < lens[s]; ++j) {
        seqs[s].slots.push_back(table[s * max_blocks + j / block_size] * block_size +
                                j % block_size);
        seqs[s].positions.push_back(j);
      }
    }
    DeviceBuffer dtable = testing::UploadRaw(table), dlens = testing::UploadRaw(lens);
    DeviceBuffer dslots = testing::Poisoned(num_seqs * max_context, 4);
    DeviceBuffer dpositions = testing::Poisoned(num_seqs * max_context, 4);
    DeviceBuffer dviews = testing::Poisoned(num_seqs, sizeof(SeqKvView));
    DeviceBuffer dseq = testing::Poisoned(num_seqs, 4), dpos = testing::Poisoned(num_seqs, 4);
    DeviceBuffer dflag = testing::UploadRaw(std::vector<int32_t>{0});
    ASSERT_TRUE(BlockTablesToSlotLists(dtable.as<int32_t>(), max_blocks, dlens.as<int32_t>(),
                                       num_seqs, block_size, max_context, dslots.as<int32_t>(),
                                       dpositions.as<int32_t>(), dviews.as<SeqKvView>(),
                                       dseq.as<int32_t>(), dpos.as<int32_t>(), dflag.as<int32_t>(),
                                       nullptr)
                    .ok());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<int32_t> got_slots =
        testing::DownloadRaw<int32_t>(dslots, num_seqs * max_context);
    for (int32_t s = 0; s < num_seqs; ++s) {
      for (int32_t j = 0; j < lens[s]; ++j) {
        ASSERT_EQ(got_slots[s * max_context + j], seqs[s].slots[j]) << s << " " << j;
      }
    }
    std::vector<int32_t> token_seq(num_seqs), token_pos(num_seqs);
    for (int32_t s = 0; s < num_seqs; ++s) token_seq[s] = s, token_pos[s] = lens[s] - 1;
    EXPECT_EQ(testing::DownloadRaw<int32_t>(dseq, num_seqs), token_seq);
    EXPECT_EQ(testing::DownloadRaw<int32_t>(dpos, num_seqs), token_pos);

    const int64_t row = num_heads * d;
    std::vector<float> q = testing::RoundTo(testing::RandomValues(rng, num_seqs * row), dtype);
    std::vector<SeqKvView> host_views;
    for (const TestSeq& s : seqs) host_views.push_back(s.HostView());
    std::vector<float> ref(num_seqs * row);
    ASSERT_TRUE(Attention(q.data(), row, num_seqs, num_heads, d, token_seq.data(), token_pos.data(),
                          pool.HostView(), host_views.data(), num_seqs, 0.088f, ref.data(), row,
                          nullptr, 0)
                    .ok());
    DeviceBuffer dq = testing::Upload(q, dtype);
    DeviceBuffer dout = testing::Poisoned(num_seqs * row, DTypeSize(dtype));
    ASSERT_TRUE(PagedAttention(dq.data(), row, num_seqs, num_heads, dseq.as<int32_t>(),
                               dpos.as<int32_t>(), pool.DeviceView(), dviews.as<SeqKvView>(),
                               num_seqs, max_context, 0.088f, dout.data(), row, nullptr, nullptr, 0,
                               dflag.as<int32_t>(), AttentionOptions{1}, nullptr)
                    .ok());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(testing::DownloadRaw<int32_t>(dflag, 1)[0], 0);
    EXPECT_LE(testing::NormalizedError(testing::Download(dout, num_seqs * row, dtype),
                                       testing::ToDouble(ref)),
              testing::NormTolerance(dtype));
  }
}

// Fixture for the small hand-made cases below: 1 sequence, 2 KV heads, group 2, d 64.
class PagedAttentionErrorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (VisibleDeviceCount() == 0) GTEST_SKIP() << "no CUDA device visible";
    std::mt19937 rng(7);
    pool_ = testing::RandomPool(rng, DType::kBF16, 5, 2, 4, 64);
    std::vector<int32_t> free_slots = testing::ShuffledSlots(rng, pool_.num_slots());
    seqs_.push_back(testing::RandomSeq(rng, free_slots, 9, 2, false));
    q_ = testing::Upload(testing::RandomValues(rng, 4 * 64), DType::kBF16);
    out_ = testing::Poisoned(4 * 64, 2);
    flag_ = testing::UploadRaw(std::vector<int32_t>{0});
  }

  absl::Status Run(const std::vector<TestSeq>& seqs, int32_t qpos, int64_t q_stride = 256,
                   int32_t num_heads = 4, void* ws = nullptr, size_t ws_bytes = 0,
                   float* mass = nullptr, int32_t splits = 1, CudaKvPool* pool = nullptr) {
    dseqs_ = testing::UploadSeqs(seqs);
    dseq_ = testing::UploadRaw(std::vector<int32_t>{0});
    dpos_ = testing::UploadRaw(std::vector<int32_t>{qpos});
    AttentionOptions options;
    options.num_splits = splits;
    return PagedAttention(q_.data(), q_stride, 1, num_heads, dseq_.as<int32_t>(),
                          dpos_.as<int32_t>(), pool ? *pool : pool_.DeviceView(), dseqs_.data(), 1,
                          16, 0.125f, out_.data(), 256, mass, ws, ws_bytes, flag_.as<int32_t>(),
                          options, nullptr);
  }
  int32_t Flag() {
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    return testing::DownloadRaw<int32_t>(flag_, 1)[0];
  }

  TestPool pool_;
  std::vector<TestSeq> seqs_;
  DeviceBuffer q_, out_, flag_, dseq_, dpos_;
  DeviceSeqs dseqs_;
};

TEST_F(PagedAttentionErrorsTest, BadArgumentsAreRejectedWithoutLaunching) {
  // num_heads not a multiple of num_kv_heads.
  EXPECT_EQ(Run(seqs_, 8, 256, 3).code(), absl::StatusCode::kInvalidArgument);
  // q_stride below num_heads * head_dim.
  EXPECT_EQ(Run(seqs_, 8, 255).code(), absl::StatusCode::kInvalidArgument);
  // attn_mass without workspace for the log-sum-exp.
  DeviceBuffer mass = testing::Poisoned(4 * 16, 4);
  EXPECT_EQ(Run(seqs_, 8, 256, 4, nullptr, 0, mass.as<float>()).code(),
            absl::StatusCode::kInvalidArgument);
  // Forced splits without workspace.
  EXPECT_EQ(Run(seqs_, 8, 256, 4, nullptr, 0, nullptr, 4).code(),
            absl::StatusCode::kInvalidArgument);
  // head_dim beyond the kernels' maximum.
  CudaKvPool big = pool_.DeviceView();
  big.head_dim = 512;
  big.num_blocks = 1;
  EXPECT_EQ(Run(seqs_, 8, 4 * 512, 4, nullptr, 0, nullptr, 1, &big).code(),
            absl::StatusCode::kInvalidArgument);
  // Null pool.
  CudaKvPool null_pool = pool_.DeviceView();
  null_pool.k = nullptr;
  EXPECT_EQ(Run(seqs_, 8, 256, 4, nullptr, 0, nullptr, 1, &null_pool).code(),
            absl::StatusCode::kInvalidArgument);
  // Nothing ran: the output is still poisoned and no flag was raised.
  for (float x : testing::Download(out_, 4 * 64, DType::kBF16)) ASSERT_TRUE(std::isnan(x));
  EXPECT_EQ(Flag(), 0);
}

TEST_F(PagedAttentionErrorsTest, NoVisibleKeyGivesZerosAndFlag) {
  std::vector<TestSeq> seqs = seqs_;
  for (int32_t& p : seqs[0].positions) p += 100;  // every key is in the query's future
  ASSERT_TRUE(Run(seqs, 50).ok());
  EXPECT_EQ(Flag(), kErrorNoVisibleKey);
  for (float x : testing::Download(out_, 4 * 64, DType::kBF16)) EXPECT_EQ(x, 0.f);
}

TEST_F(PagedAttentionErrorsTest, OutOfRangeSlotIsIgnoredAndFlagged) {
  std::vector<TestSeq> seqs = seqs_;
  // The reference: the same list without the bad entry.
  std::vector<TestSeq> good = seqs_;
  good[0].slots.erase(good[0].slots.begin() + 3);
  good[0].positions.erase(good[0].positions.begin() + 3);
  good[0].num_cached -= 1;
  seqs[0].slots[3] = static_cast<int32_t>(pool_.num_slots());  // one past the end
  ASSERT_TRUE(Run(good, 8).ok());
  const std::vector<float> want = testing::Download(out_, 4 * 64, DType::kBF16);
  EXPECT_EQ(Flag(), 0);
  ASSERT_TRUE(Run(seqs, 8).ok());
  EXPECT_EQ(Flag(), kErrorSlotOutOfRange);
  // The same keys, met in a different order across lanes: equal up to rounding.
  EXPECT_LE(testing::NormalizedError(testing::Download(out_, 4 * 64, DType::kBF16),
                                     testing::ToDouble(want)),
            testing::NormTolerance(DType::kBF16));
}

}  // namespace
}  // namespace kvscope::kernels::cuda

// File: tests/kernels/attention_test.cc
//
// WriteKv and Attention over the paged pool: shuffled block tables (non-contiguous slots),
// shared vs per-head token lists, causal masking by position, several sequences of different
// lengths in one call, GQA, attn_mass accumulation, and input validation.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "tests/kernels/reference_ops.h"

namespace kvscope::kernels {
namespace {

using reference::AllClose;
using reference::RandomFloats;

// Offset of (slot, kv_head, 0) in a pool, written out from the ops.h layout comment.
int64_t PoolIndex(int64_t slot, int64_t kv_head, int64_t num_kv_heads, int64_t block_size,
                  int64_t head_dim) {
  const int64_t block = slot / block_size;
  const int64_t offset = slot % block_size;
  return ((block * num_kv_heads + kv_head) * block_size + offset) * head_dim;
}

// A batch of sequences in a paged pool plus the query tokens attending to it, with the same
// data in logical form for the reference.
struct PagedBatch {
  int32_t num_kv_heads = 0;
  int32_t num_heads = 0;
  int32_t head_dim = 0;
  int32_t block_size = 0;
  int64_t num_blocks = 0;
  std::vector<float> k_pool, v_pool;
  // Per sequence: the list storage ([num_kv_heads][head_stride] or [num_cached]).
  std::vector<std::vector<int32_t>> slots, positions;
  std::vector<SeqKvView> views;
  std::vector<reference::LogicalSeq> logical;
  int64_t tokens = 0;
  std::vector<float> q;  // [tokens, num_heads, head_dim] contiguous
  std::vector<int32_t> token_seq, token_pos;
  int64_t max_cached = 0;

  KvPoolView Pool() {
    return KvPoolView{k_pool.data(), v_pool.data(), num_blocks, num_kv_heads, block_size,
                      head_dim};
  }
};

// seq_lens[s] tokens cached at positions 0..len-1; the last new_tokens[s] of them are also
// queries (a prefill chunk when > 1, decode when 1). per_head: each KV head keeps its own
// random subset of `keep[s]` tokens (always including position 0), listed in random order;
// otherwise one shared list of all tokens, also in random order.
PagedBatch MakeBatch(std::mt19937& rng, int32_t num_kv_heads, int32_t group, int32_t head_dim,
                     int32_t block_size, const std::vector<int>& seq_lens,
                     const std::vector<int>& new_tokens, bool per_head,
                     const std::vector<int>& keep = {}) {
  PagedBatch b;
  b.num_kv_heads = num_kv_heads;
  b.num_heads = num_kv_heads * group;
  b.head_dim = head_dim;
  b.block_size = block_size;
  for (int len : seq_lens) b.num_blocks += (len + block_size - 1) / block_size;
  b.num_blocks += 3;  // unused blocks full of garbage
  const int64_t pool_size = b.num_blocks * num_kv_heads * block_size * head_dim;
  b.k_pool = RandomFloats(rng, pool_size);
  b.v_pool = RandomFloats(rng, pool_size);
  std::vector<int32_t> free_blocks(b.num_blocks);
  std::iota(free_blocks.begin(), free_blocks.end(), 0);
  std::shuffle(free_blocks.begin(), free_blocks.end(), rng);
  size_t next_block = 0;

  struct Query {
    int32_t seq, pos;
  };
  std::vector<Query> queries;
  for (size_t s = 0; s < seq_lens.size(); ++s) {
    const int len = seq_lens[s];
    std::vector<int32_t> table;
    for (int i = 0; i < len; i += block_size) table.push_back(free_blocks[next_block++]);
    std::vector<int32_t> token_slot(len);
    for (int i = 0; i < len; ++i) token_slot[i] = table[i / block_size] * block_size + i % block_size;

    reference::LogicalSeq seq;
    seq.entries.resize(num_kv_heads);
    auto entry = [&](int32_t pos, int32_t kvh) {
      const int64_t at = PoolIndex(token_slot[pos], kvh, num_kv_heads, block_size, head_dim);
      return reference::CachedEntry{
          pos, std::vector<float>(b.k_pool.begin() + at, b.k_pool.begin() + at + head_dim),
          std::vector<float>(b.v_pool.begin() + at, b.v_pool.begin() + at + head_dim)};
    };
    std::vector<int32_t> slot_list, pos_list;
    SeqKvView view;
    if (!per_head) {
      std::vector<int32_t> order(len);
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), rng);
      for (int32_t p : order) {
        slot_list.push_back(token_slot[p]);
        pos_list.push_back(p);
        for (int32_t h = 0; h < num_kv_heads; ++h) seq.entries[h].push_back(entry(p, h));
      }
      view.num_cached = len;
      view.head_stride = 0;
    } else {
      const int n = keep.empty() ? len : keep[s];
      const int64_t stride = len + 2;  // padding between heads is never read
      slot_list.assign(num_kv_heads * stride, -12345);
      pos_list.assign(num_kv_heads * stride, -12345);
      for (int32_t h = 0; h < num_kv_heads; ++h) {
        std::vector<int32_t> cand(len - 1);
        std::iota(cand.begin(), cand.end(), 1);
        std::shuffle(cand.begin(), cand.end(), rng);
        cand.resize(n - 1);
        cand.push_back(0);
        std::shuffle(cand.begin(), cand.end(), rng);
        for (int j = 0; j < n; ++j) {
          slot_list[h * stride + j] = token_slot[cand[j]];
          pos_list[h * stride + j] = cand[j];
          seq.entries[h].push_back(entry(cand[j], h));
        }
      }
      view.num_cached = n;
      view.head_stride = stride;
    }
    b.max_cached = std::max<int64_t>(b.max_cached, view.num_cached);
    b.slots.push_back(std::move(slot_list));
    b.positions.push_back(std::move(pos_list));
    b.views.push_back(view);
    b.logical.push_back(std::move(seq));
    for (int i = len - new_tokens[s]; i < len; ++i) queries.push_back({static_cast<int32_t>(s), i});
  }
  for (size_t s = 0; s < b.views.size(); ++s) {
    b.views[s].slots = b.slots[s].data();
    b.views[s].positions = b.positions[s].data();
  }
  std::shuffle(queries.begin(), queries.end(), rng);  // sequences interleaved in the batch
  b.tokens = queries.size();
  for (const Query& qr : queries) {
    b.token_seq.push_back(qr.seq);
    b.token_pos.push_back(qr.pos);
  }
  b.q = RandomFloats(rng, b.tokens * b.num_heads * head_dim, -2.0f, 2.0f);
  b.max_cached += 3;
  return b;
}

// Runs Attention with padded q/out rows; returns the status and, in *out, the contiguous
// [tokens, num_heads, head_dim] result. Checks the row padding of out is untouched.
absl::Status RunAttention(PagedBatch& b, float scale, std::vector<float>* out,
                          std::vector<float>* attn_mass) {
  const int64_t row = static_cast<int64_t>(b.num_heads) * b.head_dim;
  const int64_t q_stride = row + 3, out_stride = row + 1;
  std::vector<float> q_padded(b.tokens * q_stride, 1e30f);
  for (int64_t t = 0; t < b.tokens; ++t) {
    std::copy_n(b.q.begin() + t * row, row, q_padded.begin() + t * q_stride);
  }
  std::vector<float> out_padded(b.tokens * out_stride, -777.0f);
  const KvPoolView pool = b.Pool();
  absl::Status st = Attention(q_padded.data(), q_stride, b.tokens, b.num_heads, b.head_dim,
                              b.token_seq.data(), b.token_pos.data(), pool, b.views.data(),
                              static_cast<int32_t>(b.views.size()), scale, out_padded.data(),
                              out_stride, attn_mass ? attn_mass->data() : nullptr, b.max_cached);
  out->assign(b.tokens * row, 0.0f);
  for (int64_t t = 0; t < b.tokens; ++t) {
    std::copy_n(out_padded.begin() + t * out_stride, row, out->begin() + t * row);
    EXPECT_EQ(out_padded[t * out_stride + row], -777.0f) << "row padding written";
  }
  return st;
}

TEST(WriteKvTest, CopiesBitExactAndSkipsPadding) {
  std::mt19937 rng(50);
  const int32_t num_kv_heads = 2, block_size = 4, head_dim = 24;
  const int64_t num_blocks = 5;
  const int64_t pool_size = num_blocks * num_kv_heads * block_size * head_dim;
  std::vector<float> k_pool(pool_size, -1.0f), v_pool(pool_size, -2.0f);
  const KvPoolView pool{k_pool.data(), v_pool.data(), num_blocks, num_kv_heads, block_size,
                        head_dim};
  const std::vector<int32_t> slots = {13, -1, 0, 19, 6, -1, 7};
  const int64_t tokens = slots.size();
  const int64_t stride = 3 * num_kv_heads * head_dim;  // k, v inside a fused qkv row
  const std::vector<float> qkv = RandomFloats(rng, tokens * stride);
  const float* k = qkv.data() + num_kv_heads * head_dim;
  const float* v = qkv.data() + 2 * num_kv_heads * head_dim;
  ASSERT_TRUE(WriteKv(pool, k, v, stride, slots.data(), tokens).ok());

  std::vector<float> k_want(pool_size, -1.0f), v_want(pool_size, -2.0f);
  for (int64_t t = 0; t < tokens; ++t) {
    if (slots[t] < 0) continue;
    for (int32_t h = 0; h < num_kv_heads; ++h) {
      for (int32_t d = 0; d < head_dim; ++d) {
        const int64_t at = PoolIndex(slots[t], h, num_kv_heads, block_size, head_dim) + d;
        k_want[at] = k[t * stride + h * head_dim + d];
        v_want[at] = v[t * stride + h * head_dim + d];
      }
    }
  }
  EXPECT_EQ(k_pool, k_want);
  EXPECT_EQ(v_pool, v_want);
  // Spot check of the layout formula by hand: slot 13 = block 3, offset 1; head 1, dim 5.
  EXPECT_EQ(k_pool[((3 * 2 + 1) * 4 + 1) * 24 + 5], k[0 * stride + 1 * 24 + 5]);
}

TEST(WriteKvTest, RejectsSlotsOutsidePoolWithoutWriting) {
  const int32_t num_kv_heads = 1, block_size = 4, head_dim = 8;
  const int64_t num_blocks = 2;
  std::vector<float> k_pool(num_blocks * block_size * head_dim, 0.0f);
  std::vector<float> v_pool = k_pool;
  const KvPoolView pool{k_pool.data(), v_pool.data(), num_blocks, num_kv_heads, block_size,
                        head_dim};
  const std::vector<float> kv(3 * head_dim, 1.0f);
  for (int32_t bad : {8, 100, -2}) {
    const std::vector<int32_t> slots = {0, 7, bad};
    const absl::Status st = WriteKv(pool, kv.data(), kv.data(), head_dim, slots.data(), 3);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << bad;
    for (float x : k_pool) ASSERT_EQ(x, 0.0f);
  }
}

TEST(AttentionTest, MatchesReferenceOnPagedMixedBatches) {
  std::mt19937 rng(51);
  int run = 0;
  for (int32_t head_dim : {8, 16, 24, 64, 80, 128}) {
    for (int32_t group : {1, 2, 4, 8}) {
      for (bool per_head : {false, true}) {
        ++run;
        const int32_t num_kv_heads = (run % 2) ? 2 : 1;
        const int32_t block_size = (run % 3 == 0) ? 1 : (run % 3 == 1 ? 4 : 16);
        SCOPED_TRACE(testing::Message() << "head_dim " << head_dim << " group " << group
                                        << " per_head " << per_head << " kv_heads "
                                        << num_kv_heads << " block_size " << block_size);
        // Prefill of a fresh 7-token prompt, a decode step at 33, a prefill chunk of 3 on
        // top of 17, a 1-token sequence.
        PagedBatch b = MakeBatch(rng, num_kv_heads, group, head_dim, block_size, {7, 33, 20, 1},
                                 {7, 1, 3, 1}, per_head, {5, 21, 9, 1});
        const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
        const reference::AttentionResult want =
            reference::Attention(b.q, b.tokens, b.num_heads, head_dim, b.token_seq, b.token_pos,
                                 b.logical, num_kv_heads, scale);
        std::vector<float> out;
        ASSERT_TRUE(RunAttention(b, scale, &out, nullptr).ok());
        EXPECT_TRUE(AllClose(out, want.out, 2e-6, 1e-6));

        // With attn_mass: same output, and the mass gains exactly the probabilities.
        const int64_t mass_size = b.views.size() * b.num_heads * b.max_cached;
        std::vector<float> mass = RandomFloats(rng, mass_size, 0.0f, 1.0f);
        const std::vector<float> mass0 = mass;
        std::vector<float> out2;
        ASSERT_TRUE(RunAttention(b, scale, &out2, &mass).ok());
        EXPECT_EQ(out2, out);
        std::vector<double> mass_want(mass0.begin(), mass0.end());
        for (int64_t t = 0; t < b.tokens; ++t) {
          for (int32_t h = 0; h < b.num_heads; ++h) {
            const auto& p = want.probs[t][h];
            for (size_t j = 0; j < p.size(); ++j) {
              mass_want[(b.token_seq[t] * b.num_heads + h) * b.max_cached + j] += p[j];
            }
          }
        }
        EXPECT_TRUE(AllClose(mass, mass_want, 1e-6, 1e-6));
        for (size_t s = 0; s < b.views.size(); ++s) {  // beyond num_cached: untouched
          for (int32_t h = 0; h < b.num_heads; ++h) {
            for (int64_t j = b.views[s].num_cached; j < b.max_cached; ++j) {
              const int64_t at = (s * b.num_heads + h) * b.max_cached + j;
              ASSERT_EQ(mass[at], mass0[at]);
            }
          }
        }
      }
    }
  }
}

TEST(AttentionTest, OneCachedTokenReturnsItsValue) {
  std::mt19937 rng(52);
  PagedBatch b = MakeBatch(rng, 2, 4, 64, 16, {1}, {1}, false);
  std::vector<float> out;
  ASSERT_TRUE(RunAttention(b, 0.125f, &out, nullptr).ok());
  for (int32_t h = 0; h < b.num_heads; ++h) {
    const auto& v = b.logical[0].entries[h / 4][0].v;
    for (int32_t d = 0; d < 64; ++d) ASSERT_EQ(out[h * 64 + d], v[d]) << h << "," << d;
  }
}

TEST(AttentionTest, EqualScoresAverageValuesUniformly) {
  std::mt19937 rng(53);
  PagedBatch b = MakeBatch(rng, 1, 2, 16, 4, {9}, {1}, false);
  std::fill(b.q.begin(), b.q.end(), 0.0f);
  std::vector<float> mass(b.num_heads * b.max_cached, 0.0f);
  std::vector<float> out;
  ASSERT_TRUE(RunAttention(b, 1.0f, &out, &mass).ok());
  for (int32_t d = 0; d < 16; ++d) {
    double mean = 0.0;
    for (const auto& e : b.logical[0].entries[0]) mean += e.v[d] / 9.0;
    EXPECT_NEAR(out[d], mean, 1e-7);
    EXPECT_NEAR(out[16 + d], mean, 1e-7);
  }
  for (int j = 0; j < 9; ++j) EXPECT_FLOAT_EQ(mass[j], 1.0f / 9);
}

TEST(AttentionTest, CausalMaskHidesLaterPositions) {
  std::mt19937 rng(54);
  // Prefill of 4 tokens: the query at position 0 must see only itself, so its output is
  // its own value bit for bit (any leaked later token would change it).
  PagedBatch b = MakeBatch(rng, 1, 1, 8, 4, {4}, {4}, false);
  std::vector<float> out;
  ASSERT_TRUE(RunAttention(b, 0.3f, &out, nullptr).ok());
  for (int64_t t = 0; t < b.tokens; ++t) {
    if (b.token_pos[t] != 0) continue;
    // Position 0 sees only itself: its output is its own value.
    const auto& entries = b.logical[0].entries[0];
    const auto it = std::find_if(entries.begin(), entries.end(),
                                 [](const auto& e) { return e.position == 0; });
    for (int d = 0; d < 8; ++d) EXPECT_EQ(out[t * 8 + d], it->v[d]);
  }
}

TEST(AttentionTest, RejectsBadInputsWithoutWriting) {
  std::mt19937 rng(55);
  const float scale = 0.25f;
  auto expect_invalid = [&](PagedBatch& b, bool with_mass) {
    std::vector<float> mass(b.views.size() * b.num_heads * b.max_cached, 5.0f);
    std::vector<float> out;
    const absl::Status st = RunAttention(b, scale, &out, with_mass ? &mass : nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    for (float x : out) ASSERT_EQ(x, -777.0f);
    for (float x : mass) ASSERT_EQ(x, 5.0f);
  };
  {
    PagedBatch b = MakeBatch(rng, 2, 2, 16, 4, {5, 9}, {1, 1}, false);
    b.slots[1][3] = static_cast<int32_t>(b.num_blocks * b.block_size);  // one past the pool
    expect_invalid(b, true);
    b.slots[1][3] = -1;
    expect_invalid(b, false);
  }
  {
    PagedBatch b = MakeBatch(rng, 2, 2, 16, 4, {5, 9}, {1, 1}, true);
    b.slots[0][b.views[0].head_stride + 2] = 1 << 20;  // per-head list of kv head 1
    expect_invalid(b, false);
  }
  {
    PagedBatch b = MakeBatch(rng, 2, 2, 16, 4, {5, 9}, {1, 1}, false);
    b.token_seq[0] = 2;  // num_seqs is 2
    expect_invalid(b, false);
    b.token_seq[0] = -1;
    expect_invalid(b, false);
  }
  {
    PagedBatch b = MakeBatch(rng, 2, 2, 16, 4, {5}, {1}, false);
    b.num_heads = 3;  // not a multiple of 2 KV heads
    b.q.resize(b.tokens * 3 * 16);
    expect_invalid(b, false);
  }
  {
    PagedBatch b = MakeBatch(rng, 1, 1, 16, 4, {5}, {1}, false);
    for (int32_t& p : b.positions[0]) p += 10;  // every cached position after the query's
    expect_invalid(b, false);
  }
  {
    // Per-head lists: kv head 1 keeps only positions > the query's.
    PagedBatch b = MakeBatch(rng, 2, 1, 8, 4, {6}, {1}, true, {3});
    b.token_pos[0] = 0;
    const int64_t stride = b.views[0].head_stride;
    for (int j = 0; j < 3; ++j) b.positions[0][stride + j] = 2 + j;
    expect_invalid(b, false);
  }
  {
    PagedBatch b = MakeBatch(rng, 1, 1, 16, 4, {9}, {1}, false);
    b.max_cached = 8;  // < num_cached, only matters with attn_mass
    expect_invalid(b, true);
    std::vector<float> out;
    EXPECT_TRUE(RunAttention(b, scale, &out, nullptr).ok());
  }
}

}  // namespace
}  // namespace kvscope::kernels

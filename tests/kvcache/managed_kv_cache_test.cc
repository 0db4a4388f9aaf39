#include "kvcache/managed_kv_cache.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "kvcache/paged_kv_manager.h"
#include "tests/kvcache/kv_manager_test_util.h"

namespace kvscope::kvcache {
namespace {

using testing::ContextForBlocks;
using ::testing::HasSubstr;
using testing::kBytesPerToken;
using testing::Request;
using testing::Tokens;

std::unique_ptr<PagedKvManager> SwapManager(int64_t blocks) {
  PagedKvManager::Options options;
  options.watermark = 0;
  options.swap = true;
  auto m = PagedKvManager::Create(ContextForBlocks(blocks), options);
  EXPECT_TRUE(m.ok()) << m.status();
  return std::move(*m);
}

// Writes `tokens` rows of K and V, value(token, layer, head, dim) = base + a distinct
// fraction, into `slots` of every layer.
void WriteRows(KvCache& cache, absl::Span<const int32_t> slots, float base) {
  const KvShape& shape = cache.shape();
  const int row = shape.num_kv_heads * shape.head_dim;
  for (int32_t l = 0; l < shape.num_layers; ++l) {
    std::vector<float> k(slots.size() * row), v(slots.size() * row);
    for (size_t t = 0; t < slots.size(); ++t) {
      for (int i = 0; i < row; ++i) {
        k[t * row + i] = base + 1000.0f * l + 10.0f * t + i * 0.125f;
        v[t * row + i] = -(base + 1000.0f * l + 10.0f * t + i * 0.125f) - 0.0625f;
      }
    }
    ASSERT_TRUE(kernels::WriteKv(cache.Pool(l), k.data(), v.data(), row, slots.data(),
                                 static_cast<int64_t>(slots.size()))
                    .ok());
  }
}

// K then V of every token of `view`, every layer, as the attention op would read them.
std::vector<float> ReadView(KvCache& cache, const kernels::SeqKvView& view) {
  std::vector<float> out;
  const KvShape& shape = cache.shape();
  for (int32_t l = 0; l < shape.num_layers; ++l) {
    const kernels::KvPoolView pool = cache.Pool(l);
    for (int32_t t = 0; t < view.num_cached; ++t) {
      const int32_t s = view.slots[t];
      for (int h = 0; h < pool.num_kv_heads; ++h) {
        const int64_t base =
            ((static_cast<int64_t>(s / pool.block_size) * pool.num_kv_heads + h) * pool.block_size +
             s % pool.block_size) *
            pool.head_dim;
        for (int d = 0; d < pool.head_dim; ++d) {
          out.push_back(pool.k[base + d]);
          out.push_back(pool.v[base + d]);
        }
      }
    }
  }
  return out;
}

TEST(ManagedKvCacheTest, AllocatesTheWholePoolAtCreation) {
  auto m = SwapManager(6);
  std::unique_ptr<KvCache> cache = m->CreateRankCache(0);
  const kernels::KvPoolView pool = cache->Pool(1);
  EXPECT_EQ(pool.num_blocks, 6);
  EXPECT_EQ(pool.block_size, 16);
  EXPECT_EQ(pool.num_kv_heads, 2);
  EXPECT_EQ(pool.head_dim, 4);
  ASSERT_NE(pool.k, nullptr);
  // 6 blocks * 16 tokens * 128 bytes: the budget, in float32 K and V over 2 layers.
  const int64_t floats_per_layer = pool.num_blocks * pool.num_kv_heads * 16 * pool.head_dim;
  EXPECT_EQ(2 * 2 * floats_per_layer * 4, 6 * 16 * kBytesPerToken);
  EXPECT_EQ(pool.k[floats_per_layer - 1], 0.0f);
  auto* managed = dynamic_cast<ManagedKvCache*>(cache.get());
  ASSERT_NE(managed, nullptr);
  EXPECT_EQ(managed->HostPool(0).num_blocks, 6);  // swap_space defaults to the KV memory
}

TEST(ManagedKvCacheTest, PrepareStepRejectsStepsThatDifferFromThePlan) {
  auto m = SwapManager(8);
  std::unique_ptr<KvCache> cache = m->CreateRankCache(0);
  EXPECT_TRUE(absl::IsFailedPrecondition(cache->PrepareStep({})));  // nothing planned yet
  ASSERT_TRUE(m->Admit(Request(1, Tokens(5, 1))).ok());
  ASSERT_TRUE(m->Admit(Request(2, Tokens(3, 2))).ok());
  ASSERT_TRUE(m->Append(1, Tokens(5, 1)));
  ASSERT_TRUE(m->Append(2, Tokens(3, 2)));
  ASSERT_TRUE(m->Plan({{1, 5, 0}, {2, 3, 0}}).ok());
  absl::Status s = cache->PrepareStep({{1, 5, 0}});
  EXPECT_TRUE(absl::IsFailedPrecondition(s));
  s = cache->PrepareStep({{2, 3, 0}, {1, 5, 0}});  // batch order matters
  EXPECT_TRUE(absl::IsFailedPrecondition(s));
  EXPECT_THAT(s.message(), HasSubstr("seq 2"));
  EXPECT_TRUE(absl::IsFailedPrecondition(cache->PrepareStep({{1, 4, 0}, {2, 3, 0}})));
  EXPECT_TRUE(absl::IsFailedPrecondition(cache->PrepareStep({{1, 5, 1}, {2, 3, 0}})));
  ASSERT_TRUE(cache->PrepareStep({{1, 5, 0}, {2, 3, 0}}).ok());
  EXPECT_EQ(cache->NewTokenSlots().size(), 8u);
  EXPECT_EQ(cache->SeqViews(1).size(), 2u);
  EXPECT_EQ(cache->NumTokens(1), 5);
  EXPECT_EQ(cache->ReservedBytes(), m->Usage().reserved_bytes);
  EXPECT_EQ(cache->UsedBytes(), 8 * kBytesPerToken);
  cache->Release(1);  // a no-op: the manager owns the bookkeeping
  EXPECT_EQ(m->NumTokens(1), 5);
}

TEST(ManagedKvCacheTest, SwapOutAndInRestoresTheSequenceBitExactly) {
  auto m = SwapManager(4);
  std::unique_ptr<KvCache> cache = m->CreateRankCache(0);
  // Step 1: sequence 1 prefills 40 tokens (3 blocks) with known K/V.
  const std::vector<int32_t> a = Tokens(40, 1);
  ASSERT_TRUE(m->Admit(Request(1, a)).ok());
  ASSERT_TRUE(m->Append(1, a));
  std::vector<SeqStep> steps = {{1, 40, 0}};
  ASSERT_TRUE(m->Plan(steps).ok());
  ASSERT_TRUE(cache->PrepareStep(steps).ok());
  WriteRows(*cache, cache->NewTokenSlots(), 1.5f);
  const std::vector<float> original = ReadView(*cache, cache->SeqViews(0)[0]);
  const std::vector<int32_t> old_blocks = m->BlockIds(1);

  // Step 2: swap it out; another sequence takes the whole device pool (its blocks
  // included) and overwrites it.
  ASSERT_TRUE(m->SwapOut(1));
  const std::vector<int32_t> b = Tokens(64, 2);
  ASSERT_TRUE(m->Admit(Request(2, b)).ok());
  ASSERT_TRUE(m->Append(2, b));
  EXPECT_EQ(m->device_pool().num_free(), 0);
  steps = {{2, 64, 0}};
  ASSERT_TRUE(m->Plan(steps).ok());
  ASSERT_TRUE(cache->PrepareStep(steps).ok());
  WriteRows(*cache, cache->NewTokenSlots(), -777.25f);
  for (int32_t block : old_blocks) {
    EXPECT_LT(cache->Pool(0).k[block * 2 * 16 * 4], 0.0f);  // overwritten
  }

  // Step 3: the other sequence leaves (and a third one takes a block so the new block
  // table differs); sequence 1 comes back.
  m->Free(2);
  ASSERT_TRUE(m->Admit(Request(3, Tokens(5, 3))).ok());
  ASSERT_TRUE(m->Append(3, Tokens(5, 3)));
  ASSERT_TRUE(m->SwapIn(1).ok());
  EXPECT_NE(m->BlockIds(1), old_blocks);
  steps = {{3, 5, 0}, {1, 0, 40}};
  ASSERT_TRUE(m->Plan(steps).ok());
  ASSERT_TRUE(cache->PrepareStep(steps).ok());
  EXPECT_EQ(ReadView(*cache, cache->SeqViews(0)[1]), original);  // bit exact
}

// KvManagerContext::host_kv_storage false (the GPU engine's rank caches): no K/V memory,
// the same pool geometry, and the same slots and views as a cache with storage, through a
// swap out and in.
TEST(ManagedKvCacheTest, BookkeepingOnlyCacheServesTheSamePlansWithoutStorage) {
  KvManagerContext context = ContextForBlocks(4);
  context.host_kv_storage = false;
  PagedKvManager::Options options;
  options.watermark = 0;
  options.swap = true;
  auto m = PagedKvManager::Create(context, options);
  ASSERT_TRUE(m.ok()) << m.status();
  auto with = SwapManager(4);
  std::unique_ptr<KvCache> bare = (*m)->CreateRankCache(0);
  std::unique_ptr<KvCache> full = with->CreateRankCache(0);
  for (int32_t l = 0; l < 2; ++l) {
    const kernels::KvPoolView pool = bare->Pool(l);
    EXPECT_EQ(pool.k, nullptr);
    EXPECT_EQ(pool.v, nullptr);
    EXPECT_EQ(pool.num_blocks, full->Pool(l).num_blocks);
    EXPECT_EQ(pool.block_size, full->Pool(l).block_size);
    EXPECT_EQ(pool.num_kv_heads, full->Pool(l).num_kv_heads);
    EXPECT_EQ(pool.head_dim, full->Pool(l).head_dim);
    EXPECT_EQ(static_cast<ManagedKvCache&>(*bare).HostPool(l).k, nullptr);
    EXPECT_GT(static_cast<ManagedKvCache&>(*bare).HostPool(l).num_blocks, 0);
  }
  // Reserved and used bytes are the manager's accounting, storage or not.
  auto same_step = [&](const std::vector<SeqStep>& steps) {
    ASSERT_TRUE((*m)->Plan(steps).ok());
    ASSERT_TRUE(with->Plan(steps).ok());
    ASSERT_TRUE(bare->PrepareStep(steps).ok());
    ASSERT_TRUE(full->PrepareStep(steps).ok());
    EXPECT_EQ(std::vector<int32_t>(bare->NewTokenSlots().begin(), bare->NewTokenSlots().end()),
              std::vector<int32_t>(full->NewTokenSlots().begin(), full->NewTokenSlots().end()));
    ASSERT_EQ(bare->SeqViews(1).size(), full->SeqViews(1).size());
    for (size_t i = 0; i < bare->SeqViews(1).size(); ++i) {
      const kernels::SeqKvView a = bare->SeqViews(1)[i], b = full->SeqViews(1)[i];
      ASSERT_EQ(a.num_cached, b.num_cached);
      EXPECT_EQ(std::vector<int32_t>(a.slots, a.slots + a.num_cached),
                std::vector<int32_t>(b.slots, b.slots + b.num_cached));
    }
    EXPECT_EQ(bare->ReservedBytes(), full->ReservedBytes());
  };
  for (KvManager* k : {static_cast<KvManager*>(m->get()), static_cast<KvManager*>(with.get())}) {
    ASSERT_TRUE(k->Admit(Request(1, Tokens(40, 1))).ok());
    ASSERT_TRUE(k->Append(1, Tokens(40, 1)));
  }
  same_step({{1, 40, 0}});
  for (KvManager* k : {static_cast<KvManager*>(m->get()), static_cast<KvManager*>(with.get())}) {
    ASSERT_TRUE(k->SwapOut(1));
    ASSERT_TRUE(k->Admit(Request(2, Tokens(20, 2))).ok());
    ASSERT_TRUE(k->Append(2, Tokens(20, 2)));
  }
  same_step({{2, 20, 0}});
  for (KvManager* k : {static_cast<KvManager*>(m->get()), static_cast<KvManager*>(with.get())}) {
    k->Free(2);
    ASSERT_TRUE(k->SwapIn(1).ok());
  }
  same_step({{1, 0, 40}});
}

TEST(ManagedKvCacheTest, AppliesEachPlansCopiesOnce) {
  auto m = SwapManager(4);
  std::unique_ptr<KvCache> cache = m->CreateRankCache(0);
  ASSERT_TRUE(m->Admit(Request(1, Tokens(4, 1))).ok());
  ASSERT_TRUE(m->Append(1, Tokens(4, 1)));
  std::vector<SeqStep> steps = {{1, 4, 0}};
  ASSERT_TRUE(m->Plan(steps).ok());
  ASSERT_TRUE(cache->PrepareStep(steps).ok());
  WriteRows(*cache, cache->NewTokenSlots(), 3.0f);
  ASSERT_TRUE(m->Fork(1, 2).ok());
  ASSERT_TRUE(m->Append(1, {9}));  // copy-on-write of the shared block
  steps = {{1, 1, 4}};
  ASSERT_TRUE(m->Plan(steps).ok());
  ASSERT_TRUE(cache->PrepareStep(steps).ok());
  WriteRows(*cache, cache->NewTokenSlots(), 50.0f);
  const std::vector<float> before = ReadView(*cache, cache->SeqViews(0)[0]);
  ASSERT_TRUE(cache->PrepareStep(steps).ok());  // same plan again: no second copy
  EXPECT_EQ(ReadView(*cache, cache->SeqViews(0)[0]), before);
  // The copied block holds the parent's first four tokens.
  std::vector<float> head(before.begin(), before.begin() + 4 * 2 * 4 * 2);
  steps = {{2, 0, 4}};
  ASSERT_TRUE(m->Plan(steps).ok());
  ASSERT_TRUE(cache->PrepareStep(steps).ok());
  const std::vector<float> child = ReadView(*cache, cache->SeqViews(0)[0]);
  EXPECT_EQ(std::vector<float>(child.begin(), child.begin() + head.size()), head);
}

// Transfers of one step are applied swap_out, swap_in, copies. A block a pending copy reads
// must not become a swap-in target in the same step, even when its last holder lets go.
TEST(ManagedKvCacheTest, CopySourceIsNotReusedByASwapInOfTheSameStep) {
  auto m = SwapManager(2);
  std::unique_ptr<KvCache> cache = m->CreateRankCache(0);
  ASSERT_TRUE(m->Admit(Request(1, Tokens(10, 1))).ok());  // X: block 0
  ASSERT_TRUE(m->Admit(Request(2, Tokens(4, 2))).ok());   // P: block 1
  ASSERT_TRUE(m->Append(1, Tokens(10, 1)));
  ASSERT_TRUE(m->Append(2, Tokens(4, 2)));
  std::vector<SeqStep> steps = {{1, 10, 0}, {2, 4, 0}};
  ASSERT_TRUE(m->Plan(steps).ok());
  ASSERT_TRUE(cache->PrepareStep(steps).ok());
  WriteRows(*cache, absl::MakeConstSpan(cache->NewTokenSlots()).subspan(0, 10), 100.0f);
  WriteRows(*cache, absl::MakeConstSpan(cache->NewTokenSlots()).subspan(10), 200.0f);
  const std::vector<float> x = ReadView(*cache, cache->SeqViews(0)[0]);
  const std::vector<float> p = ReadView(*cache, cache->SeqViews(0)[1]);
  ASSERT_TRUE(m->SwapOut(1));
  steps = {{2, 0, 4}};
  ASSERT_TRUE(m->Plan(steps).ok());
  ASSERT_TRUE(cache->PrepareStep(steps).ok());

  // One step: fork P into C, C appends (copy P's block into block 0), P leaves.
  ASSERT_TRUE(m->Fork(2, 3).ok());
  ASSERT_TRUE(m->Append(3, {77}));
  m->Free(2);
  EXPECT_FALSE(m->CanSwapIn(1));  // P's old block is free only after this step's copy
  steps = {{3, 1, 4}};
  ASSERT_TRUE(m->Plan(steps).ok());
  ASSERT_TRUE(cache->PrepareStep(steps).ok());
  const std::vector<float> c = ReadView(*cache, cache->SeqViews(0)[0]);
  const size_t per_token = 2 * 4 * 2;
  EXPECT_EQ(std::vector<float>(c.begin(), c.begin() + 4 * per_token),
            std::vector<float>(p.begin(), p.begin() + 4 * per_token));
  ASSERT_TRUE(m->SwapIn(1).ok());
  steps = {{1, 0, 10}};
  ASSERT_TRUE(m->Plan(steps).ok());
  ASSERT_TRUE(cache->PrepareStep(steps).ok());
  EXPECT_EQ(ReadView(*cache, cache->SeqViews(0)[0]), x);
}

}  // namespace
}  // namespace kvscope::kvcache

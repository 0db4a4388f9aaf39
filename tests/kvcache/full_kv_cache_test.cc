#include "kvcache/full_kv_cache.h"

#include <map>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace kvscope::kvcache {
namespace {

TEST(FullKvCacheTest, SlotsAreUniqueAndViewsListEveryToken) {
  FullKvCache cache({2, 3, 4}, {4, 0});
  ASSERT_TRUE(cache.PrepareStep({{7, 5, 0}, {9, 2, 0}}).ok());
  EXPECT_EQ(cache.NewTokenSlots().size(), 7u);
  std::set<int32_t> slots(cache.NewTokenSlots().begin(), cache.NewTokenSlots().end());
  EXPECT_EQ(slots.size(), 7u);
  auto views = cache.SeqViews(1);
  ASSERT_EQ(views.size(), 2u);
  EXPECT_EQ(views[0].num_cached, 5);
  EXPECT_EQ(views[1].num_cached, 2);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(views[0].positions[i], i);
  // Decode one token for sequence 7 only.
  ASSERT_TRUE(cache.PrepareStep({{7, 1, 5}}).ok());
  views = cache.SeqViews(0);
  ASSERT_EQ(views.size(), 1u);
  EXPECT_EQ(views[0].num_cached, 6);
  EXPECT_EQ(views[0].positions[5], 5);
  EXPECT_EQ(views[0].slots[5], cache.NewTokenSlots()[0]);
  EXPECT_EQ(slots.count(views[0].slots[5]), 0u);
  // Every slot fits in the pool.
  const kernels::KvPoolView pool = cache.Pool(0);
  for (int i = 0; i < 6; ++i) EXPECT_LT(views[0].slots[i], pool.num_blocks * pool.block_size);
}

// allocate_storage false (the GPU engine's default cache): the same slots, views, growth
// and accounting as with storage, null k/v.
TEST(FullKvCacheTest, BookkeepingOnlyCacheMatchesTheStoredOne) {
  FullKvCache bare({2, 3, 4}, {4, 0, /*allocate_storage=*/false});
  FullKvCache full({2, 3, 4}, {4, 0});
  const std::vector<std::vector<SeqStep>> steps = {
      {{7, 5, 0}, {9, 2, 0}}, {{7, 1, 5}}, {{9, 30, 2}}, {{7, 1, 6}, {9, 1, 32}}};
  for (const auto& step : steps) {
    ASSERT_TRUE(bare.PrepareStep(step).ok());
    ASSERT_TRUE(full.PrepareStep(step).ok());
    EXPECT_EQ(std::vector<int32_t>(bare.NewTokenSlots().begin(), bare.NewTokenSlots().end()),
              std::vector<int32_t>(full.NewTokenSlots().begin(), full.NewTokenSlots().end()));
    for (int32_t l = 0; l < 2; ++l) {
      EXPECT_EQ(bare.Pool(l).k, nullptr);
      EXPECT_EQ(bare.Pool(l).v, nullptr);
      EXPECT_EQ(bare.Pool(l).num_blocks, full.Pool(l).num_blocks);
      ASSERT_EQ(bare.SeqViews(l).size(), full.SeqViews(l).size());
      for (size_t i = 0; i < bare.SeqViews(l).size(); ++i) {
        const kernels::SeqKvView a = bare.SeqViews(l)[i], b = full.SeqViews(l)[i];
        ASSERT_EQ(a.num_cached, b.num_cached);
        EXPECT_EQ(std::vector<int32_t>(a.slots, a.slots + a.num_cached),
                  std::vector<int32_t>(b.slots, b.slots + b.num_cached));
      }
    }
    EXPECT_EQ(bare.ReservedBytes(), full.ReservedBytes());
    EXPECT_EQ(bare.UsedBytes(), full.UsedBytes());
  }
  bare.Release(9);
  full.Release(9);
  EXPECT_EQ(bare.UsedBytes(), full.UsedBytes());
}

TEST(FullKvCacheTest, RejectsInconsistentPositionsWithoutChangingState) {
  FullKvCache cache({1, 1, 2}, {4, 0});
  ASSERT_TRUE(cache.PrepareStep({{1, 3, 0}}).ok());
  EXPECT_TRUE(absl::IsInvalidArgument(cache.PrepareStep({{1, 1, 5}})));
  EXPECT_TRUE(absl::IsInvalidArgument(cache.PrepareStep({{2, 1, 2}})));
  EXPECT_EQ(cache.NumTokens(1), 3);
  EXPECT_EQ(cache.NumTokens(2), 0);
}

TEST(FullKvCacheTest, CapacityLimitRefusesWholeStep) {
  FullKvCache cache({1, 1, 2}, {4, 6});
  ASSERT_TRUE(cache.PrepareStep({{1, 4, 0}}).ok());
  EXPECT_TRUE(absl::IsResourceExhausted(cache.PrepareStep({{1, 1, 4}, {2, 2, 0}})));
  EXPECT_EQ(cache.NumTokens(1), 4);
  EXPECT_EQ(cache.NumTokens(2), 0);
  EXPECT_TRUE(cache.PrepareStep({{1, 1, 4}, {2, 1, 0}}).ok());
}

TEST(FullKvCacheTest, RandomAllocateReleaseKeepsAccountingExact) {
  const KvShape shape{3, 2, 8};
  FullKvCache cache(shape, {4, 0});
  std::mt19937 rng(5);
  std::map<int64_t, int32_t> held;
  for (int step = 0; step < 2000; ++step) {
    const int64_t id = rng() % 12;
    if (rng() % 4 == 0) {
      cache.Release(id);
      held.erase(id);
    } else {
      const int32_t n = 1 + rng() % 5;
      ASSERT_TRUE(cache.PrepareStep({{id, n, held[id]}}).ok());
      held[id] += n;
    }
    int64_t tokens = 0, blocks = 0;
    for (auto& [seq, count] : held) {
      EXPECT_EQ(cache.NumTokens(seq), count);
      tokens += count;
      blocks += (count + 3) / 4;
    }
    ASSERT_EQ(cache.UsedBytes(), tokens * shape.BytesPerTokenPerLayer() * shape.num_layers);
    ASSERT_EQ(cache.ReservedBytes(), blocks * 4 * shape.BytesPerTokenPerLayer() * shape.num_layers);
  }
}

}  // namespace
}  // namespace kvscope::kvcache

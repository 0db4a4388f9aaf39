#include "kvcache/block_pool.h"

#include <algorithm>
#include <list>
#include <map>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvscope::kvcache {
namespace {

using ::testing::ElementsAre;

TEST(BlockHashTest, IsFixedChainedAndOrderSensitive) {
  const std::vector<int32_t> a = {1, 2, 3, 4};
  const std::vector<int32_t> b = {4, 3, 2, 1};
  const uint64_t ha = HashBlockTokens(kNoneBlockHash, a);
  // The same value in every process and on every machine (no std::hash, no random seed).
  EXPECT_EQ(ha, HashBlockTokens(kNoneBlockHash, a));
  EXPECT_EQ(ha, 0x38610ce87d46ff18ULL) << std::hex << ha;
  EXPECT_NE(ha, HashBlockTokens(kNoneBlockHash, b));
  EXPECT_NE(HashBlockTokens(ha, a), HashBlockTokens(kNoneBlockHash, a));
  EXPECT_NE(HashBlockTokens(ha, b), HashBlockTokens(HashBlockTokens(kNoneBlockHash, b), b));
  EXPECT_NE(HashBlockTokens(kNoneBlockHash, std::vector<int32_t>{0}),
            HashBlockTokens(kNoneBlockHash, std::vector<int32_t>{0, 0}));
}

TEST(BlockPoolTest, AllocatesInIdOrderAndAppendsFreedBlocksAtTheTail) {
  BlockPool pool(4, true);
  EXPECT_THAT(pool.FreeQueue(), ElementsAre(0, 1, 2, 3));
  EXPECT_EQ(pool.Allocate(), 0);
  EXPECT_EQ(pool.Allocate(), 1);
  EXPECT_EQ(pool.num_free(), 2);
  EXPECT_EQ(pool.num_used(), 2);
  pool.Free(0);
  EXPECT_THAT(pool.FreeQueue(), ElementsAre(2, 3, 0));
  pool.IncRef(1);
  pool.Free(1);
  EXPECT_EQ(pool.RefCount(1), 1);
  EXPECT_THAT(pool.FreeQueue(), ElementsAre(2, 3, 0));
  EXPECT_EQ(pool.Allocate(), 2);
  EXPECT_EQ(pool.Allocate(), 3);
  EXPECT_EQ(pool.Allocate(), 0);
  EXPECT_EQ(pool.Allocate(), -1);
  EXPECT_TRUE(pool.CheckInvariants().ok());
}

TEST(BlockPoolTest, ReverseFreeEvictsTailBlocksFirstAndEvictionIsLazy) {
  BlockPool pool(5, true);
  std::vector<int32_t> seq;
  for (int i = 0; i < 4; ++i) seq.push_back(pool.Allocate());  // 0 1 2 3
  uint64_t parent = kNoneBlockHash;
  std::vector<uint64_t> hashes;
  for (int i = 0; i < 4; ++i) {
    parent = HashBlockTokens(parent, std::vector<int32_t>{i, i + 1});
    hashes.push_back(parent);
    ASSERT_TRUE(pool.CacheBlock(seq[i], parent));
  }
  pool.FreeBlocks(seq);
  // Block 4 was never used; then the sequence's tail (3) comes before its head (0).
  EXPECT_THAT(pool.FreeQueue(), ElementsAre(4, 3, 2, 1, 0));
  // Freed blocks stay cached until reused.
  EXPECT_EQ(pool.Lookup(hashes[3]), 3);
  EXPECT_EQ(pool.num_cached(), 4);
  EXPECT_EQ(pool.Allocate(), 4);
  EXPECT_EQ(pool.counters().evicted_cached_blocks, 0);
  EXPECT_EQ(pool.Allocate(), 3);  // evicts the sequence's last block
  EXPECT_EQ(pool.counters().evicted_cached_blocks, 1);
  EXPECT_EQ(pool.Lookup(hashes[3]), -1);
  EXPECT_FALSE(pool.IsCached(3));
  EXPECT_EQ(pool.Lookup(hashes[0]), 0);
  // A prefix hit on a free cached block takes it out of the middle of the queue.
  pool.Touch(1);
  EXPECT_EQ(pool.RefCount(1), 1);
  EXPECT_THAT(pool.FreeQueue(), ElementsAre(2, 0));
  pool.Touch(1);  // hit on a block in use: just ref++
  EXPECT_EQ(pool.RefCount(1), 2);
  pool.Free(1);
  pool.Free(1);
  EXPECT_THAT(pool.FreeQueue(), ElementsAre(2, 0, 1));
  EXPECT_EQ(pool.Lookup(hashes[1]), 1);
  EXPECT_TRUE(pool.CheckInvariants().ok());
}

TEST(BlockPoolTest, CacheBlockDoesNotDeduplicateOrRehash) {
  BlockPool pool(3, true);
  const int32_t a = pool.Allocate();
  const int32_t b = pool.Allocate();
  EXPECT_TRUE(pool.CacheBlock(a, 7));
  EXPECT_FALSE(pool.CacheBlock(b, 7));  // identical content: b stays uncached
  EXPECT_FALSE(pool.IsCached(b));
  EXPECT_TRUE(pool.CacheBlock(a, 7));   // already cached under 7
  EXPECT_FALSE(pool.CacheBlock(a, 8));  // a block keeps its first hash
  EXPECT_EQ(pool.Lookup(7), a);
  EXPECT_EQ(pool.Lookup(8), -1);
  BlockPool off(2, false);
  EXPECT_FALSE(off.CacheBlock(off.Allocate(), 7));
  EXPECT_EQ(off.Lookup(7), -1);
}

// 100k random operations against an independent shadow model: exact ref counts, exact
// free-queue order (eviction order), exact cache contents, no leak.
TEST(BlockPoolTest, RandomOperationsMatchShadowModel) {
  constexpr int32_t kBlocks = 48;
  BlockPool pool(kBlocks, true);
  std::mt19937_64 rng(1234);
  std::vector<int32_t> ref(kBlocks, 0);
  std::list<int32_t> queue;
  for (int32_t b = 0; b < kBlocks; ++b) queue.push_back(b);
  std::map<uint64_t, int32_t> cache;       // hash -> block
  std::map<int32_t, uint64_t> block_hash;  // block -> hash
  int64_t evictions = 0;

  auto pick_used = [&]() -> int32_t {
    std::vector<int32_t> used;
    for (int32_t b = 0; b < kBlocks; ++b) {
      if (ref[b] > 0) used.push_back(b);
    }
    return used.empty() ? -1 : used[rng() % used.size()];
  };
  auto shadow_free = [&](int32_t b) {
    if (--ref[b] == 0) queue.push_back(b);
  };

  for (int op = 0; op < 100000; ++op) {
    const int kind = static_cast<int>(rng() % 6);
    switch (kind) {
      case 0: {  // allocate
        const int32_t got = pool.Allocate();
        if (queue.empty()) {
          ASSERT_EQ(got, -1);
          break;
        }
        ASSERT_EQ(got, queue.front()) << "op " << op;
        queue.pop_front();
        if (auto it = block_hash.find(got); it != block_hash.end()) {
          cache.erase(it->second);
          block_hash.erase(it);
          ++evictions;
        }
        ref[got] = 1;
        break;
      }
      case 1: {  // incref (fork)
        const int32_t b = pick_used();
        if (b < 0) break;
        pool.IncRef(b);
        ++ref[b];
        break;
      }
      case 2: {  // free one
        const int32_t b = pick_used();
        if (b < 0) break;
        pool.Free(b);
        shadow_free(b);
        break;
      }
      case 3: {  // free a "sequence" of distinct used blocks, in reverse order
        std::vector<int32_t> seq;
        for (int i = 0; i < 4; ++i) {
          const int32_t b = pick_used();
          if (b >= 0 && std::find(seq.begin(), seq.end(), b) == seq.end()) seq.push_back(b);
        }
        pool.FreeBlocks(seq);
        for (size_t i = seq.size(); i-- > 0;) shadow_free(seq[i]);
        break;
      }
      case 4: {  // prefix hit on a cached block
        if (cache.empty()) break;
        auto it = cache.begin();
        std::advance(it, rng() % cache.size());
        ASSERT_EQ(pool.Lookup(it->first), it->second);
        const int32_t b = it->second;
        pool.Touch(b);
        if (ref[b] == 0) queue.remove(b);
        ++ref[b];
        break;
      }
      case 5: {  // cache a full block under a hash from a small space (collisions happen)
        const int32_t b = pick_used();
        if (b < 0) break;
        const uint64_t h = rng() % 64;
        bool expect;
        if (auto it = block_hash.find(b); it != block_hash.end()) {
          expect = it->second == h;
        } else if (cache.contains(h)) {
          expect = false;
        } else {
          cache[h] = b;
          block_hash[b] = h;
          expect = true;
        }
        ASSERT_EQ(pool.CacheBlock(b, h), expect);
        break;
      }
    }
    ASSERT_TRUE(pool.CheckInvariants().ok()) << "op " << op << ": " << pool.CheckInvariants();
    int32_t used = 0;
    for (int32_t b = 0; b < kBlocks; ++b) {
      ASSERT_EQ(pool.RefCount(b), ref[b]) << "block " << b << " op " << op;
      used += ref[b] > 0;
    }
    ASSERT_EQ(pool.num_used(), used);
    ASSERT_EQ(pool.num_free() + pool.num_used(), kBlocks);
    if (op % 97 == 0) {
      ASSERT_EQ(pool.FreeQueue(), std::vector<int32_t>(queue.begin(), queue.end()));
      ASSERT_EQ(pool.num_cached(), static_cast<int64_t>(cache.size()));
    }
  }
  EXPECT_EQ(pool.counters().evicted_cached_blocks, evictions);
  // No leak: free everything and every block is back in the queue.
  for (int32_t b = 0; b < kBlocks; ++b) {
    while (ref[b] > 0) {
      pool.Free(b);
      --ref[b];
    }
  }
  EXPECT_EQ(pool.num_free(), kBlocks);
  EXPECT_TRUE(pool.CheckInvariants().ok());
}

}  // namespace
}  // namespace kvscope::kvcache

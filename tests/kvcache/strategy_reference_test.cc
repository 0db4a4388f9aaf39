// File: tests/kvcache/strategy_reference_test.cc
//
// The plain references the CUDA strategy kernels are tested against
// (tests/gpu_kernels/strategy_reference.h) equal the kvcache strategies themselves: the same
// victims, kept sets and selections as H2oPolicy, StreamingPolicy, SpeculatedCount and
// TopKAscending on random inputs with many ties, plus closed-form checks of the key
// re-rotation. Runs without a GPU.
#include "tests/gpu_kernels/strategy_reference.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kvcache/h2o_kv_manager.h"
#include "kvcache/infinigen_selection.h"
#include "kvcache/streaming_kv_manager.h"

namespace kvscope::kvcache {
namespace {

namespace ref = ::kvscope::strategy_reference;

// n distinct positions below `length` in random entry order, and scores from a small set
// (many exact ties).
struct Entries {
  std::vector<int32_t> pos;
  std::vector<double> score;
};

Entries RandomEntries(std::mt19937& rng, int32_t n, int32_t length, bool sorted) {
  std::vector<int32_t> all(length);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  Entries e;
  e.pos.assign(all.begin(), all.begin() + n);
  if (sorted) std::sort(e.pos.begin(), e.pos.end());
  std::uniform_int_distribution<int> level(0, 5);
  for (int32_t j = 0; j < n; ++j) e.score.push_back(0.125 * level(rng));
  return e;
}

TEST(StrategyReferenceTest, H2oMatchesPolicy) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 2000; ++trial) {
    const int32_t length = 1 + static_cast<int32_t>(rng() % 90);
    const int32_t n = 1 + static_cast<int32_t>(rng() % length);
    const int32_t recent = static_cast<int32_t>(rng() % (n + 2));
    const int32_t heavy = static_cast<int32_t>(rng() % (n + 2));
    if (heavy + recent < 1) continue;
    const Entries e = RandomEntries(rng, n, length, trial % 2 == 0);
    H2oOptions options;
    options.heavy_size = heavy;
    options.recent_size = recent;
    const H2oPolicy policy(options);
    const EvictBudget budget{heavy + recent, recent};
    std::vector<int32_t> keep;
    policy.SelectKeep(e.pos.data(), e.score.data(), n, length, budget, &keep);
    EXPECT_EQ(
        ref::H2oSelectKeep(e.pos.data(), e.score.data(), n, length, budget.total, budget.recent),
        keep)
        << "trial " << trial;
    EXPECT_EQ(ref::H2oVictim(e.pos.data(), e.score.data(), n, length, budget.recent),
              policy.Victim(e.pos.data(), e.score.data(), n, length, budget))
        << "trial " << trial;
  }
}

TEST(StrategyReferenceTest, StreamingMatchesPolicy) {
  std::mt19937 rng(12);
  for (int trial = 0; trial < 2000; ++trial) {
    const int32_t length = 1 + static_cast<int32_t>(rng() % 90);
    const int32_t n = 1 + static_cast<int32_t>(rng() % length);
    const int32_t sinks = static_cast<int32_t>(rng() % 6);
    const int32_t recent = static_cast<int32_t>(rng() % (n + 2));
    if (sinks + recent < 1) continue;
    const Entries e = RandomEntries(rng, n, length, trial % 2 == 0);
    StreamingOptions options;
    options.sink_tokens = sinks;
    options.recent_size = recent;
    const StreamingPolicy policy(options);
    const EvictBudget budget{sinks + recent, recent};
    std::vector<int32_t> keep;
    policy.SelectKeep(e.pos.data(), nullptr, n, length, budget, &keep);
    EXPECT_EQ(ref::StreamingSelectKeep(e.pos.data(), n, length, budget.total, budget.recent), keep)
        << "trial " << trial;
    EXPECT_EQ(ref::StreamingVictim(e.pos.data(), n, budget.total, budget.recent),
              policy.Victim(e.pos.data(), nullptr, n, length, budget))
        << "trial " << trial;
  }
}

TEST(StrategyReferenceTest, InfinigenSelectionMatchesKvcache) {
  std::mt19937 rng(13);
  for (int trial = 0; trial < 1000; ++trial) {
    const int32_t heads = 1 + static_cast<int32_t>(rng() % 6);
    const int32_t n = static_cast<int32_t>(rng() % 70);
    const double alpha = 0.25 * static_cast<double>(rng() % 8);
    const int32_t max_num_kv = 1 + static_cast<int32_t>(rng() % 40);
    std::vector<double> scores(static_cast<size_t>(heads) * n);
    std::uniform_int_distribution<int> level(-4, 4);
    for (double& s : scores) s = 0.5 * level(rng);
    const int32_t count = SpeculatedCount(scores.data(), heads, n, alpha, max_num_kv);
    EXPECT_EQ(ref::SpeculatedCount(scores.data(), heads, n, alpha, max_num_kv), count);
    std::vector<int32_t> pick;
    TopKAscending(scores.data(), n, count, &pick);
    EXPECT_EQ(ref::TopKAscending(scores.data(), n, count), pick);
  }
}

TEST(StrategyReferenceTest, ShiftKeyRowClosedForms) {
  const std::vector<float> inv_freq = {1.0f, 0.5f, 0.25f};
  std::vector<float> x = {0.5f, -1.0f, 2.0f, 0.25f, 3.0f, -0.75f, 9.0f};  // dim 6 > rot_dim
  std::vector<float> y = x;
  ref::ShiftKeyRow(y.data(), inv_freq.data(), 3, 0);  // zero delta: identity
  EXPECT_EQ(y, x);
  ref::ShiftKeyRow(y.data(), inv_freq.data(), 3, 5);
  ref::ShiftKeyRow(y.data(), inv_freq.data(), 3, -5);  // R(-a)R(a) = I up to rounding
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(y[i], x[i], 1e-5) << i;
  EXPECT_EQ(y[6], 9.0f);  // dimensions past the rotated pairs are untouched
  // A quarter turn (inv_freq pi/2, delta 1) maps (a, b) to (-b, a).
  const float quarter = static_cast<float>(M_PI / 2);
  std::vector<float> z = {1.0f, 2.0f};
  ref::ShiftKeyRow(z.data(), &quarter, 1, 1);
  EXPECT_NEAR(z[0], -2.0f, 1e-6);
  EXPECT_NEAR(z[1], 1.0f, 1e-6);
}

TEST(StrategyReferenceTest, CompactionMatchesSequentialMoves) {
  // keep = {1, 3, 4}: entries move 1->0, 3->1, 4->2, in order, with their rows.
  ref::BytePool pool;
  pool.num_kv_heads = 2;
  pool.block_size = 4;
  pool.head_dim = 2;
  pool.elem = 4;
  pool.k.resize(3 * 2 * 4 * 2 * 4);
  pool.v.resize(pool.k.size());
  std::vector<float> kf(pool.k.size() / 4), vf(kf.size());
  for (size_t i = 0; i < kf.size(); ++i) {
    kf[i] = static_cast<float>(i);
    vf[i] = -static_cast<float>(i);
  }
  std::memcpy(pool.k.data(), kf.data(), pool.k.size());
  std::memcpy(pool.v.data(), vf.data(), pool.v.size());
  const std::vector<int32_t> slots = {9, 2, 5, 0, 7};
  std::vector<int32_t> pos = {10, 11, 12, 13, 14};
  std::vector<double> score = {0.1, 0.2, 0.3, 0.4, 0.5};
  ref::CompactHead(&pool, 1, slots.data(), pos.data(), score.data(), {1, 3, 4});
  EXPECT_EQ(pos, (std::vector<int32_t>{11, 13, 14, 13, 14}));
  EXPECT_EQ(score, (std::vector<double>{0.2, 0.4, 0.5, 0.4, 0.5}));
  float got[2];
  std::memcpy(got, pool.k.data() + pool.RowByte(slots[1], 1), 8);  // slot 2 <- slot 0's row
  const size_t src = pool.RowByte(0, 1) / 4;
  EXPECT_EQ(got[0], kf[src]);
  EXPECT_EQ(got[1], kf[src + 1]);
}

}  // namespace
}  // namespace kvscope::kvcache

// h2o: kept sets against a brute-force reference at every step (kernel attention on
// synthetic Q/K/V, GQA, chunked prefill, tensor-parallel ranks), budgets, memory, params.
#include "kvcache/h2o_kv_manager.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvcache/registry.h"
#include "tests/kvcache/evicting_test_util.h"

namespace kvscope::kvcache {
namespace {

using ::testing::HasSubstr;
using testing::EvictingSim;
using testing::RefRules;
using testing::SimGeometry;

// H2O's rules, plainly: keep the window [length - recent, length) plus the `heavy`
// highest-scoring older tokens (ties: the older); evict the lowest-scoring token outside
// the window (ties: the older).
RefRules H2oRules(int heavy, int recent) {
  RefRules rules;
  rules.compress = [heavy, recent](const std::map<int, double>& scores, int length) {
    std::set<int> keep;
    std::vector<std::pair<double, int>> old;
    for (const auto& [pos, score] : scores) {
      if (pos >= length - recent) {
        keep.insert(pos);
      } else {
        old.push_back({-score, pos});
      }
    }
    std::sort(old.begin(), old.end());
    for (int i = 0; i < heavy && i < static_cast<int>(old.size()); ++i) keep.insert(old[i].second);
    return keep;
  };
  rules.victim = [recent](const std::map<int, double>& scores, int length) {
    int best = -1;
    double best_score = 0;
    for (const auto& [pos, score] : scores) {
      if (pos < length - recent && (best < 0 || score < best_score)) {
        best = pos;
        best_score = score;
      }
    }
    if (best >= 0) return best;
    for (const auto& [pos, score] : scores) {
      if (best < 0 || score < best_score) {
        best = pos;
        best_score = score;
      }
    }
    return best;
  };
  return rules;
}

std::unique_ptr<EvictingKvManager> MakeH2o(int tp, const std::map<std::string, std::string>& params,
                                           int64_t tokens = 256) {
  KvManagerContext context;
  context.geometry = SimGeometry(tp);
  context.kv_memory_bytes = tokens * context.geometry.BytesPerToken();
  context.max_model_len = 4096;
  auto m = CreateKvManager("h2o", params, context);
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return nullptr;
  return std::unique_ptr<EvictingKvManager>(static_cast<EvictingKvManager*>(m->release()));
}

class H2oOracleTest : public ::testing::TestWithParam<int> {};

TEST_P(H2oOracleTest, KeptSetEqualsBruteForceAtEveryStep) {
  const int tp = GetParam();
  auto m = MakeH2o(tp, {{"heavy_size", "5"}, {"recent_size", "3"}});
  ASSERT_NE(m, nullptr);
  EvictingSim sim(m.get(), tp, H2oRules(5, 3), 8);
  sim.Admit(1, 20, 30);  // prefilled in chunks of 8, 8, 4
  sim.Admit(2, 12, 30);  // prefilled at once
  sim.Admit(3, 6, 30);   // shorter than the budget: grows to 8, then evicts
  const int64_t per_token = m->geometry().BytesPerToken();
  ASSERT_NO_FATAL_FAILURE(sim.Step({{1, 8}, {2, 12}, {3, 6}}));
  // Seq 2 was compressed after its prefill: budget tokens, budget + 1 slots.
  EXPECT_EQ(m->NumTokens(2), 8);
  EXPECT_EQ(m->OwnedSlots(2), 9);
  EXPECT_EQ(m->NumTokens(1), 8);  // mid-prefill: everything computed so far
  for (int64_t id : {1, 2, 3}) sim.ExpectKeptSetsMatch(id);
  ASSERT_NO_FATAL_FAILURE(sim.Step({{1, 8}, {2, 1}, {3, 1}}));
  ASSERT_NO_FATAL_FAILURE(sim.Step({{1, 4}, {2, 1}, {3, 1}}));
  EXPECT_EQ(m->NumTokens(1), 8);
  EXPECT_EQ(m->OwnedSlots(1), 9);
  for (int64_t id : {1, 2, 3}) sim.ExpectKeptSetsMatch(id);
  for (int step = 0; step < 20; ++step) {
    ASSERT_NO_FATAL_FAILURE(sim.Step({{1, 1}, {2, 1}, {3, 1}}));
    for (int64_t id : {1, 2, 3}) {
      ASSERT_NO_FATAL_FAILURE(sim.ExpectKeptSetsMatch(id));
      EXPECT_EQ(m->NumTokens(id), 8) << "seq " << id << " step " << step;
    }
    // Memory held is the budget: 8 tokens each (plus one incoming slot reserved).
    const KvUsage usage = m->Usage();
    EXPECT_EQ(usage.used_bytes, 3 * 8 * per_token);
    EXPECT_EQ(usage.reserved_bytes, 3 * 9 * per_token);
  }
  m->Free(1);
  m->Free(2);
  m->Free(3);
  EXPECT_EQ(m->Usage().reserved_bytes, 0);
  EXPECT_EQ(m->free_slots(), m->CapacityTokens());
}

INSTANTIATE_TEST_SUITE_P(TensorParallel, H2oOracleTest, ::testing::Values(1, 2));

TEST(H2oTest, ZeroRecentWindowEvictsByScoreOnly) {
  auto m = MakeH2o(1, {{"heavy_size", "4"}, {"recent_size", "0"}});
  ASSERT_NE(m, nullptr);
  EvictingSim sim(m.get(), 1, H2oRules(4, 0), 4);
  sim.Admit(1, 10, 20);
  ASSERT_NO_FATAL_FAILURE(sim.Step({{1, 10}}));
  sim.ExpectKeptSetsMatch(1);
  for (int step = 0; step < 10; ++step) {
    ASSERT_NO_FATAL_FAILURE(sim.Step({{1, 1}}));
    ASSERT_NO_FATAL_FAILURE(sim.ExpectKeptSetsMatch(1));
  }
}

TEST(H2oTest, BudgetsFromRatiosSizesAndKvBudget) {
  std::vector<int32_t> prompt(40, 5);
  auto budget = [&](const std::map<std::string, std::string>& params) {
    auto m = MakeH2o(1, params);
    EXPECT_TRUE(m->Admit(SeqRequest{1, prompt, 10}).ok());
    return m->BudgetOf(1);
  };
  EXPECT_EQ(budget({}).total, 8);  // 0.1 + 0.1 of 40
  EXPECT_EQ(budget({}).recent, 4);
  // kv_budget counts prompt + generated tokens: 0.25 + 0.25 of 40 + 10.
  EXPECT_EQ(budget({{"kv_budget", "0.5"}}).total, 24);
  EXPECT_EQ(budget({{"kv_budget", "0.5"}}).recent, 12);
  EXPECT_EQ(budget({{"kv_budget", "0.5"}, {"heavy_ratio", "0"}}).total, 12);
  EXPECT_EQ(budget({{"kv_budget", "0.5"}, {"recent_ratio", "0.1"}}).total, 16);  // 12 + 4
  EXPECT_EQ(budget({{"heavy_ratio", "0.5"}, {"recent_ratio", "0.25"}}).total, 30);
  EXPECT_EQ(budget({{"heavy_size", "3"}, {"recent_ratio", "0.25"}}).total, 13);
  EXPECT_EQ(budget({{"heavy_size", "3"}, {"recent_size", "7"}, {"kv_budget", "0.9"}}).recent, 7);
}

TEST(H2oTest, CompressedSequencesLeaveRoomForMore) {
  // 64 slots: a 40-token prompt needs 40 during prefill, then keeps 8 + 1.
  auto m = MakeH2o(1, {}, 64);
  std::vector<int32_t> prompt(40, 5);
  ASSERT_TRUE(m->Admit(SeqRequest{1, prompt, 100}).ok());
  EXPECT_EQ(m->CanAdmit(SeqRequest{2, prompt, 100}).status, AdmitStatus::kLater);
  ASSERT_TRUE(m->Append(1, prompt));
  ASSERT_TRUE(m->Plan({{SeqStep{1, 40, 0}}}).ok());
  EXPECT_EQ(m->OwnedSlots(1), 9);
  EXPECT_EQ(m->Usage().used_bytes, 8 * m->geometry().BytesPerToken());
  EXPECT_EQ(m->CanAdmit(SeqRequest{2, prompt, 100}).status, AdmitStatus::kOk);
  // A prompt the pool can never hold during prefill.
  const Admission never = m->CanAdmit(SeqRequest{3, std::vector<int32_t>(65, 5), 1});
  EXPECT_EQ(never.status, AdmitStatus::kNever);
  EXPECT_THAT(never.reason, HasSubstr("65"));
}

TEST(H2oTest, BadParamsAreRefused) {
  KvManagerContext context;
  context.geometry = SimGeometry(1);
  context.kv_memory_bytes = 256 * context.geometry.BytesPerToken();
  auto refused = [&](const std::map<std::string, std::string>& params, const std::string& what) {
    auto m = CreateKvManager("h2o", params, context);
    EXPECT_TRUE(absl::IsInvalidArgument(m.status())) << m.status();
    EXPECT_THAT(m.status().message(), HasSubstr(what));
  };
  refused({{"heavy_ratio", "1.5"}}, "heavy_ratio");
  refused({{"recent_ratio", "-0.1"}}, "recent_ratio");
  refused({{"heavy_size", "-1"}}, "heavy_size");
  refused({{"heavy_size", "0"}, {"recent_size", "0"}}, "zero tokens");
  refused({{"heavy_ratio", "0"}, {"recent_ratio", "0"}}, "zero tokens");
  refused({{"kv_budget", "0"}}, "kv_budget");
  refused({{"kv_budget", "1.5"}}, "kv_budget");
  // Ratios that round to zero tokens for a short prompt: never admitted, with the reason.
  auto m = CreateKvManager("h2o", {}, context);
  ASSERT_TRUE(m.ok());
  const Admission a = (*m)->CanAdmit(SeqRequest{1, std::vector<int32_t>(4, 5), 4});
  EXPECT_EQ(a.status, AdmitStatus::kNever);
  EXPECT_THAT(a.reason, HasSubstr("zero tokens"));
}

// KvManagerContext::host_kv_storage false (the GPU engine's rank caches): no K/V memory,
// the same pool geometry, slots and views, and the bookkeeping of the steps unchanged.
TEST(H2oTest, BookkeepingOnlyCacheHasNoStorageAndTheSameViews) {
  KvManagerContext context;
  context.geometry = SimGeometry(1);
  context.kv_memory_bytes = 256 * context.geometry.BytesPerToken();
  KvManagerContext bare_context = context;
  bare_context.host_kv_storage = false;
  const std::map<std::string, std::string> params = {{"heavy_size", "4"}, {"recent_size", "4"}};
  auto with = CreateKvManager("h2o", params, context);
  auto bare = CreateKvManager("h2o", params, bare_context);
  ASSERT_TRUE(with.ok() && bare.ok());
  std::unique_ptr<KvCache> full_cache = (*with)->CreateRankCache(0);
  std::unique_ptr<KvCache> bare_cache = (*bare)->CreateRankCache(0);
  for (int32_t l = 0; l < testing::kLayers; ++l) {
    const kernels::KvPoolView a = bare_cache->Pool(l), b = full_cache->Pool(l);
    EXPECT_EQ(a.k, nullptr);
    EXPECT_EQ(a.v, nullptr);
    EXPECT_NE(b.k, nullptr);
    EXPECT_EQ(a.num_blocks, b.num_blocks);
    EXPECT_EQ(a.block_size, b.block_size);
    EXPECT_EQ(a.num_kv_heads, b.num_kv_heads);
    EXPECT_EQ(a.head_dim, b.head_dim);
  }
  const std::vector<int32_t> prompt(20, 3);
  for (KvManager* m : {with->get(), bare->get()}) {
    ASSERT_TRUE(m->Admit(SeqRequest{1, prompt, 4}).ok());
    ASSERT_TRUE(m->Append(1, prompt));
    ASSERT_TRUE(m->Plan({{SeqStep{1, 20, 0}}}).ok());
  }
  ASSERT_TRUE(full_cache->PrepareStep({{SeqStep{1, 20, 0}}}).ok());
  ASSERT_TRUE(bare_cache->PrepareStep({{SeqStep{1, 20, 0}}}).ok());
  EXPECT_EQ(std::vector<int32_t>(bare_cache->NewTokenSlots().begin(),
                                 bare_cache->NewTokenSlots().end()),
            std::vector<int32_t>(full_cache->NewTokenSlots().begin(),
                                 full_cache->NewTokenSlots().end()));
  for (int32_t l = 0; l < testing::kLayers; ++l) {
    const kernels::SeqKvView a = bare_cache->SeqViews(l)[0], b = full_cache->SeqViews(l)[0];
    ASSERT_EQ(a.num_cached, b.num_cached);
    ASSERT_EQ(a.head_stride, b.head_stride);
    for (int32_t h = 0; h < testing::kKvHeads; ++h) {
      const int64_t at = static_cast<int64_t>(h) * a.head_stride;
      EXPECT_EQ(std::vector<int32_t>(a.slots + at, a.slots + at + a.num_cached),
                std::vector<int32_t>(b.slots + at, b.slots + at + b.num_cached));
      EXPECT_EQ(std::vector<int32_t>(a.positions + at, a.positions + at + a.num_cached),
                std::vector<int32_t>(b.positions + at, b.positions + at + b.num_cached));
    }
  }
  // OnAttention without storage moves no K/V (and does not crash); the accounting is the
  // manager's, storage or not.
  for (int32_t l = 0; l < testing::kLayers; ++l) bare_cache->OnAttention(l);
  EXPECT_EQ(bare_cache->ReservedBytes(), full_cache->ReservedBytes());
  EXPECT_EQ(bare_cache->UsedBytes(), full_cache->UsedBytes());
}

}  // namespace
}  // namespace kvscope::kvcache

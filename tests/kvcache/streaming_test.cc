// streaming (StreamingLLM): exactly the sinks and the window are kept at every step, the
// attention over them matches a plain reference (both position policies), budgets from
// kv_budget, bad params.
#include "kvcache/streaming_kv_manager.h"

#include <string>
#include <tuple>

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

RefRules StreamingRules(int sinks, int recent) {
  RefRules rules;
  rules.compress = [sinks, recent](const std::map<int, double>& scores, int length) {
    std::set<int> keep;
    for (const auto& [pos, score] : scores) {
      if (pos < sinks || pos >= length - recent) keep.insert(pos);
    }
    return keep;
  };
  rules.victim = [sinks](const std::map<int, double>& scores, int) {
    for (const auto& [pos, score] : scores) {
      if (pos >= sinks) return pos;  // the oldest non-sink
    }
    return scores.rbegin()->first;
  };
  return rules;
}

// SimGeometry with RoPE frequencies of zero: positions=rolling is accepted and its key
// re-rotation is the identity, so the harness's reference (no RoPE) still applies and the
// kept sets are checked under the rolling policy too. (The rotation itself is checked on a
// model in tests/serving/lossy_strategies_test.cc.)
KvGeometry RopeSimGeometry(int tp) {
  KvGeometry g = SimGeometry(tp);
  g.rope_inv_freq.assign(testing::kDim / 2, 0.0f);
  g.rope_rot_dim = testing::kDim;
  return g;
}

std::unique_ptr<EvictingKvManager> MakeStreaming(int tp,
                                                 const std::map<std::string, std::string>& params) {
  KvManagerContext context;
  context.geometry = RopeSimGeometry(tp);
  context.kv_memory_bytes = 256 * context.geometry.BytesPerToken();
  context.max_model_len = 4096;
  auto m = CreateKvManager("streaming", params, context);
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return nullptr;
  return std::unique_ptr<EvictingKvManager>(static_cast<EvictingKvManager*>(m->release()));
}

class StreamingKeepsTest
    : public ::testing::TestWithParam<std::tuple<int, std::string>> {};

TEST_P(StreamingKeepsTest, ExactlySinksAndWindowAtEveryStep) {
  const int tp = std::get<0>(GetParam());
  auto m = MakeStreaming(tp, {{"sink_tokens", "2"},
                              {"recent_size", "5"},
                              {"positions", std::get<1>(GetParam())}});
  ASSERT_NE(m, nullptr);
  EvictingSim sim(m.get(), tp, StreamingRules(2, 5), 7);
  sim.Admit(1, 16, 30);
  sim.Admit(2, 4, 30);
  ASSERT_NO_FATAL_FAILURE(sim.Step({{1, 10}, {2, 4}}));
  ASSERT_NO_FATAL_FAILURE(sim.Step({{1, 6}, {2, 1}}));
  for (int step = 0; step < 15; ++step) {
    ASSERT_NO_FATAL_FAILURE(sim.Step({{1, 1}, {2, 1}}));
    for (int64_t id : {1, 2}) {
      ASSERT_NO_FATAL_FAILURE(sim.ExpectKeptSetsMatch(id));
      const int length = sim.length(id);
      std::vector<int32_t> expected;
      for (int p = 0; p < length; ++p) {
        if (p < 2 || p >= length - 5) expected.push_back(p);
      }
      for (int l = 0; l < testing::kLayers; ++l) {
        for (int g = 0; g < testing::kKvHeads; ++g) {
          std::vector<int32_t> held = m->HeldPositions(id, l, g);
          std::sort(held.begin(), held.end());
          EXPECT_EQ(held, expected) << "seq " << id << " length " << length;
        }
      }
    }
  }
  EXPECT_EQ(m->Usage().used_bytes, 2 * 7 * m->geometry().BytesPerToken());
}

INSTANTIATE_TEST_SUITE_P(TensorParallelAndPositions, StreamingKeepsTest,
                         ::testing::Combine(::testing::Values(1, 2),
                                            ::testing::Values("original", "rolling")));

TEST(StreamingTest, WindowFromKvBudget) {
  auto m = MakeStreaming(1, {{"kv_budget", "0.25"}});
  ASSERT_TRUE(m->Admit(SeqRequest{1, std::vector<int32_t>(60, 3), 40}).ok());
  EXPECT_EQ(m->BudgetOf(1).total, 25);  // 0.25 * (60 + 40)
  EXPECT_EQ(m->BudgetOf(1).recent, 21);  // minus 4 sinks
  // The strategy's own recent_size overrides kv_budget.
  auto n = MakeStreaming(1, {{"kv_budget", "0.25"}, {"recent_size", "10"}});
  ASSERT_TRUE(n->Admit(SeqRequest{1, std::vector<int32_t>(60, 3), 40}).ok());
  EXPECT_EQ(n->BudgetOf(1).total, 14);
}

TEST(StreamingTest, BadParamsAreRefused) {
  KvManagerContext context;
  context.geometry = SimGeometry(1);
  context.kv_memory_bytes = 256 * context.geometry.BytesPerToken();
  auto status = [&](const std::map<std::string, std::string>& params) {
    return CreateKvManager("streaming", params, context).status();
  };
  EXPECT_TRUE(absl::IsInvalidArgument(status({{"sink_tokens", "0"}, {"recent_size", "0"}})));
  EXPECT_THAT(status({{"sink_tokens", "0"}, {"recent_size", "0"}}).message(),
              HasSubstr("zero tokens"));
  EXPECT_TRUE(absl::IsInvalidArgument(status({{"kv_budget", "0"}})));
  EXPECT_TRUE(absl::IsInvalidArgument(status({{"kv_budget", "2"}})));
  EXPECT_TRUE(absl::IsInvalidArgument(status({{"sink_tokens", "-1"}})));
  EXPECT_TRUE(absl::IsInvalidArgument(status({{"positions", "shifted"}})));
  // Rolling positions re-rotate keys: refused for a model without RoPE (SimGeometry has
  // none), or with frequencies that do not fit the head.
  const absl::Status rolling = status({{"positions", "rolling"}});
  EXPECT_TRUE(absl::IsInvalidArgument(rolling)) << rolling;
  EXPECT_THAT(rolling.message(), HasSubstr("RoPE"));
  context.geometry = RopeSimGeometry(1);
  EXPECT_TRUE(status({{"positions", "rolling"}}).ok());
  context.geometry.rope_rot_dim = testing::kDim + 2;
  EXPECT_TRUE(absl::IsInvalidArgument(status({{"positions", "rolling"}})));
}

}  // namespace
}  // namespace kvscope::kvcache

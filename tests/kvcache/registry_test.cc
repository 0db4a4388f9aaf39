#include "kvcache/registry.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/kvcache/kv_manager_test_util.h"

namespace kvscope::kvcache {
namespace {

using testing::ContextForBlocks;
using ::testing::HasSubstr;

TEST(RegistryTest, ListsStrategiesInAStableOrder) {
  std::vector<std::string> names;
  for (const StrategyInfo& info : RegisteredStrategies()) names.push_back(info.name);
  EXPECT_THAT(names,
              ::testing::ElementsAre("contiguous", "paged", "h2o", "streaming", "infinigen"));
}

TEST(RegistryTest, UnknownStrategyListsKnownOnes) {
  auto m = CreateKvManager("vllm", {}, ContextForBlocks(8));
  ASSERT_TRUE(absl::IsInvalidArgument(m.status()));
  EXPECT_THAT(m.status().message(), HasSubstr("'vllm'"));
  EXPECT_THAT(m.status().message(), HasSubstr("contiguous, paged"));
}

TEST(RegistryTest, UnknownParamListsParamsWithTypesAndDefaults) {
  auto m = CreateKvManager("paged", {{"blocksize", "8"}}, ContextForBlocks(8));
  ASSERT_TRUE(absl::IsInvalidArgument(m.status()));
  const std::string message(m.status().message());
  EXPECT_THAT(message, HasSubstr("'blocksize'"));
  EXPECT_THAT(message, HasSubstr("block_size (int, default 16, in [1, 1024])"));
  EXPECT_THAT(message, HasSubstr("watermark (double, default 0.01, in [0, 0.5])"));
  EXPECT_THAT(message, HasSubstr("enable_prefix_caching (bool, default true)"));
  EXPECT_THAT(message, HasSubstr("preemption_mode (choice recompute|swap, default recompute)"));
  EXPECT_THAT(message, HasSubstr("swap_space (bytes, default 0"));
}

TEST(RegistryTest, RejectsBadValues) {
  const KvManagerContext context = ContextForBlocks(8);
  auto m = CreateKvManager("paged", {{"block_size", "0"}}, context);
  ASSERT_TRUE(absl::IsInvalidArgument(m.status()));
  EXPECT_THAT(m.status().message(), HasSubstr("block_size=0 is out of range"));
  m = CreateKvManager("paged", {{"block_size", "2048"}}, context);
  EXPECT_TRUE(absl::IsInvalidArgument(m.status()));
  m = CreateKvManager("paged", {{"block_size", "16.5"}}, context);
  EXPECT_THAT(m.status().message(), HasSubstr("not an integer"));
  m = CreateKvManager("paged", {{"watermark", "2"}}, context);
  ASSERT_TRUE(absl::IsInvalidArgument(m.status()));
  EXPECT_THAT(m.status().message(), HasSubstr("watermark=2 is out of range"));
  m = CreateKvManager("paged", {{"watermark", "nan"}}, context);
  EXPECT_TRUE(absl::IsInvalidArgument(m.status()));
  m = CreateKvManager("paged", {{"enable_prefix_caching", "maybe"}}, context);
  EXPECT_THAT(m.status().message(), HasSubstr("not a bool"));
  m = CreateKvManager("paged", {{"preemption_mode", "drop"}}, context);
  EXPECT_THAT(m.status().message(), HasSubstr("not one of recompute, swap"));
  m = CreateKvManager("paged", {{"swap_space", "4 parsecs"}}, context);
  EXPECT_THAT(m.status().message(), HasSubstr("not a byte size"));
  m = CreateKvManager("contiguous", {{"reserve", "all"}}, context);
  EXPECT_THAT(m.status().message(), HasSubstr("max_model_len, prompt_plus_output"));
}

TEST(RegistryTest, BudgetTooSmallForOneBlockSaysBytesNeeded) {
  KvManagerContext context = ContextForBlocks(1, 32);
  context.kv_memory_bytes -= 1;
  auto m = CreateKvManager("paged", {{"block_size", "32"}}, context);
  ASSERT_TRUE(absl::IsInvalidArgument(m.status()));
  EXPECT_THAT(m.status().message(), HasSubstr("4096 bytes"));  // 32 tokens * 128 B
  m = CreateKvManager("contiguous", {}, ContextForBlocks(2, 16, 4096));
  ASSERT_TRUE(absl::IsInvalidArgument(m.status()));
  EXPECT_THAT(m.status().message(), HasSubstr("524288 bytes"));  // 4096 tokens * 128 B
}

TEST(RegistryTest, ParsesTypedParamsWithDefaults) {
  auto params = ParseStrategyParams("paged", {{"block_size", "32"},
                                              {"enable_prefix_caching", "off"},
                                              {"preemption_mode", "swap"},
                                              {"swap_space", "1MiB"}});
  ASSERT_TRUE(params.ok()) << params.status();
  EXPECT_EQ(params->Int("block_size"), 32);
  EXPECT_DOUBLE_EQ(params->Double("watermark"), 0.01);
  EXPECT_FALSE(params->Bool("enable_prefix_caching"));
  EXPECT_EQ(params->Choice("preemption_mode"), "swap");
  EXPECT_EQ(params->Int("swap_space"), 1 << 20);
  EXPECT_TRUE(params->IsSet("block_size"));
  EXPECT_FALSE(params->IsSet("watermark"));
  EXPECT_EQ(params->values().at("swap_space"), "1MiB");
  EXPECT_EQ(params->values().at("watermark"), "0.01");
}

TEST(RegistryTest, CreatesConfiguredManagers) {
  auto m = CreateKvManager(
      "paged", {{"block_size", "8"}, {"preemption_mode", "swap"}, {"swap_space", "2KiB"}},
      ContextForBlocks(8, 16));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->name(), "paged");
  EXPECT_EQ((*m)->CapacityTokens(), 128);
  EXPECT_TRUE((*m)->SupportsSwap());
  m = CreateKvManager("contiguous", {{"reserve", "prompt_plus_output"}},
                      ContextForBlocks(8, 16, 0));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->name(), "contiguous");
  EXPECT_FALSE((*m)->SupportsSwap());
}

}  // namespace
}  // namespace kvscope::kvcache

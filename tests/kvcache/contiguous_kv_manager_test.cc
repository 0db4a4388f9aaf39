#include "kvcache/contiguous_kv_manager.h"

#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/kvcache/kv_manager_test_util.h"

namespace kvscope::kvcache {
namespace {

using testing::ContextForBlocks;
using ::testing::HasSubstr;
using testing::kBytesPerToken;
using testing::Request;
using testing::Tokens;

constexpr int64_t kBlockBytes = 16 * kBytesPerToken;

TEST(ContiguousKvManagerTest, ReservesMaxModelLenAtAdmission) {
  // 20 blocks; max_model_len 100 tokens = 7 blocks per sequence.
  auto created = ContiguousKvManager::Create(ContextForBlocks(20, 16, 100), {});
  ASSERT_TRUE(created.ok()) << created.status();
  ContiguousKvManager& m = **created;
  EXPECT_EQ(m.name(), "contiguous");
  ASSERT_EQ(m.Admit(Request(1, Tokens(10, 1))).value(), 0);
  ASSERT_TRUE(m.Append(1, Tokens(10, 1)));
  KvUsage usage = m.Usage();
  EXPECT_EQ(usage.reserved_bytes, 7 * kBlockBytes);
  EXPECT_EQ(usage.used_bytes, 10 * kBytesPerToken);
  EXPECT_EQ(usage.reserved_bytes - usage.used_bytes, (112 - 10) * kBytesPerToken);  // waste
  EXPECT_EQ(usage.capacity_bytes, 20 * kBlockBytes);
  ASSERT_TRUE(m.Admit(Request(2, Tokens(3, 2))).ok());
  // 6 blocks left: a third reservation must wait.
  EXPECT_EQ(m.CanAdmit(Request(3, Tokens(1, 3))).status, AdmitStatus::kLater);
  EXPECT_TRUE(absl::IsResourceExhausted(m.Admit(Request(3, Tokens(1, 3))).status()));
  // Appends never fail within the reservation and fail beyond it.
  ASSERT_TRUE(m.Append(2, Tokens(112, 2)));
  EXPECT_FALSE(m.Append(2, {1}));
  EXPECT_EQ(m.NumTokens(2), 112);
  auto plan = m.Plan({{1, 0, 10}, {2, 112, 0}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  std::set<int32_t> slots((*plan)->new_slots.begin(), (*plan)->new_slots.end());
  EXPECT_EQ(slots.size(), 112u);
  for (int32_t s : (*plan)->new_slots) EXPECT_LT(s, 20 * 16);
  EXPECT_EQ((*plan)->views[0].num_cached, 10);
  EXPECT_EQ((*plan)->views[1].num_cached, 112);
  m.Free(1);
  EXPECT_EQ(m.CanAdmit(Request(3, Tokens(1, 3))).status, AdmitStatus::kOk);
  EXPECT_EQ(m.Usage().reserved_bytes, 7 * kBlockBytes);
  EXPECT_TRUE(absl::IsUnimplemented(m.Fork(2, 4)));
  EXPECT_FALSE(m.SupportsSwap());
}

TEST(ContiguousKvManagerTest, PromptPlusOutputReservesLess) {
  ContiguousKvManager::Options options;
  options.reserve = ContiguousKvManager::Reserve::kPromptPlusOutput;
  auto created = ContiguousKvManager::Create(ContextForBlocks(20, 16, 100), options);
  ASSERT_TRUE(created.ok());
  ContiguousKvManager& m = **created;
  ASSERT_TRUE(m.Admit(Request(1, Tokens(10, 1), 10)).ok());  // 20 tokens: 2 blocks
  EXPECT_EQ(m.Usage().reserved_bytes, 2 * kBlockBytes);
  ASSERT_TRUE(m.Append(1, Tokens(32, 1)));
  EXPECT_FALSE(m.Append(1, {0}));
  // Capped at max_model_len; a prompt beyond it never fits.
  EXPECT_EQ(m.ReservationTokens(Request(2, Tokens(90, 2), 50)), 100);
  Admission never = m.CanAdmit(Request(2, Tokens(101, 2), 5));
  EXPECT_EQ(never.status, AdmitStatus::kNever);
  EXPECT_THAT(never.reason, HasSubstr("101 tokens"));
}

TEST(ContiguousKvManagerTest, ReservationLargerThanThePoolIsRejected) {
  // max_model_len 100 needs 7 blocks; 6 are budgeted.
  auto created = ContiguousKvManager::Create(ContextForBlocks(6, 16, 100), {});
  ASSERT_TRUE(absl::IsInvalidArgument(created.status()));
  EXPECT_THAT(created.status().message(), HasSubstr("14336 bytes"));  // 7 * 2048
  ContiguousKvManager::Options options;
  options.reserve = ContiguousKvManager::Reserve::kPromptPlusOutput;
  created = ContiguousKvManager::Create(ContextForBlocks(6, 16, 0), options);
  ASSERT_TRUE(created.ok());
  Admission never = (*created)->CanAdmit(Request(1, Tokens(90, 1), 10));
  EXPECT_EQ(never.status, AdmitStatus::kNever);
  EXPECT_THAT(never.reason, HasSubstr("holds 6 blocks"));
}

}  // namespace
}  // namespace kvscope::kvcache

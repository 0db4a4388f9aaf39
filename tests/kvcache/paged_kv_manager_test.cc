#include "kvcache/paged_kv_manager.h"

#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/kvcache/kv_manager_test_util.h"

namespace kvscope::kvcache {
namespace {

using testing::Concat;
using testing::ContextForBlocks;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::kBytesPerToken;
using testing::Request;
using testing::Tokens;

constexpr int64_t kBlockBytes = 16 * kBytesPerToken;

std::unique_ptr<PagedKvManager> Paged(int64_t blocks, PagedKvManager::Options options = {}) {
  auto manager = PagedKvManager::Create(ContextForBlocks(blocks, options.block_size), options);
  EXPECT_TRUE(manager.ok()) << manager.status();
  return std::move(*manager);
}

PagedKvManager::Options NoWatermark() {
  PagedKvManager::Options options;
  options.watermark = 0;
  return options;
}

// Admits the sequence and appends its uncached tokens; returns the cached count.
int32_t AdmitAndFill(PagedKvManager& m, int64_t id, const std::vector<int32_t>& tokens) {
  absl::StatusOr<int32_t> cached = m.Admit(Request(id, tokens));
  EXPECT_TRUE(cached.ok()) << cached.status();
  if (!cached.ok()) return -1;
  EXPECT_TRUE(m.Append(id, absl::MakeConstSpan(tokens).subspan(*cached)));
  return *cached;
}

std::vector<int32_t> Slots(PagedKvManager& m, int64_t id) {
  const SeqStep step{id, 0, m.NumTokens(id)};
  absl::StatusOr<const StepPlan*> plan = m.Plan({step});
  EXPECT_TRUE(plan.ok()) << plan.status();
  const kernels::SeqKvView& view = (*plan)->views[0];
  return std::vector<int32_t>(view.slots, view.slots + view.num_cached);
}

TEST(PagedKvManagerTest, CapacityFromBytes) {
  KvManagerContext context = ContextForBlocks(10);
  context.kv_memory_bytes += kBlockBytes - 1;  // a partial block buys nothing
  auto m = PagedKvManager::Create(context, {});
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)->CapacityTokens(), 160);
  EXPECT_EQ((*m)->device_pool().num_blocks(), 10);
  EXPECT_EQ((*m)->Usage().capacity_bytes, 10 * kBlockBytes);
  EXPECT_EQ((*m)->watermark_blocks(), 0);  // floor(0.01 * 10)
  EXPECT_EQ((*m)->name(), "paged");
}

TEST(PagedKvManagerTest, BudgetBelowOneBlockSaysBytesNeeded) {
  KvManagerContext context = ContextForBlocks(1);
  context.kv_memory_bytes -= 1;
  auto m = PagedKvManager::Create(context, {});
  ASSERT_TRUE(absl::IsInvalidArgument(m.status()));
  EXPECT_THAT(m.status().message(), HasSubstr("2048 bytes"));
  PagedKvManager::Options swap;
  swap.swap = true;
  swap.swap_space_bytes = 100;
  m = PagedKvManager::Create(ContextForBlocks(4), swap);
  ASSERT_TRUE(absl::IsInvalidArgument(m.status()));
  EXPECT_THAT(m.status().message(), HasSubstr("swap space"));
}

TEST(PagedKvManagerTest, SharedTwoBlockPrefixIsCachedWithTheSamePhysicalBlocks) {
  auto m = Paged(16, NoWatermark());
  const std::vector<int32_t> a = Tokens(40, 1);
  EXPECT_EQ(AdmitAndFill(*m, 1, a), 0);
  const std::vector<int32_t> b =
      Concat(std::vector<int32_t>(a.begin(), a.begin() + 32), Tokens(8, 2));
  EXPECT_EQ(m->CanAdmit(Request(2, b)).status, AdmitStatus::kOk);
  EXPECT_EQ(AdmitAndFill(*m, 2, b), 32);
  const std::vector<int32_t> blocks_a = m->BlockIds(1);
  const std::vector<int32_t> blocks_b = m->BlockIds(2);
  ASSERT_EQ(blocks_a.size(), 3u);
  ASSERT_EQ(blocks_b.size(), 3u);
  EXPECT_EQ(blocks_b[0], blocks_a[0]);
  EXPECT_EQ(blocks_b[1], blocks_a[1]);
  EXPECT_NE(blocks_b[2], blocks_a[2]);
  const std::vector<int32_t> slots_a = Slots(*m, 1);
  const std::vector<int32_t> slots_b = Slots(*m, 2);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(slots_a[i], slots_b[i]);
  EXPECT_EQ(m->Counters().prefix_query_tokens, 80);
  EXPECT_EQ(m->Counters().prefix_hit_tokens, 32);
  // Shared blocks are reserved and used once: 4 distinct blocks, 40 + 8 tokens.
  EXPECT_EQ(m->Usage().reserved_bytes, 4 * kBlockBytes);
  EXPECT_EQ(m->Usage().used_bytes, 48 * kBytesPerToken);
  EXPECT_TRUE(m->CheckInvariants().ok()) << m->CheckInvariants();
}

TEST(PagedKvManagerTest, FullHitGivesBackItsLastBlock) {
  auto m = Paged(16, NoWatermark());
  const std::vector<int32_t> a = Tokens(32, 1);
  AdmitAndFill(*m, 1, a);
  // Identical prompt: both blocks are cached, but the last token must be computed.
  EXPECT_EQ(AdmitAndFill(*m, 2, a), 16);
  EXPECT_EQ(m->BlockIds(2)[0], m->BlockIds(1)[0]);
  EXPECT_NE(m->BlockIds(2)[1], m->BlockIds(1)[1]);
  EXPECT_EQ(m->NumTokens(2), 32);
  // A one-block prompt that is fully cached recomputes the whole block.
  const std::vector<int32_t> one(a.begin(), a.begin() + 16);
  EXPECT_EQ(AdmitAndFill(*m, 3, one), 0);
  EXPECT_TRUE(m->CheckInvariants().ok()) << m->CheckInvariants();
}

TEST(PagedKvManagerTest, FreedCachedBlocksAreReusableUntilEvictedTailFirst) {
  auto m = Paged(6, NoWatermark());
  const std::vector<int32_t> a = Tokens(64, 1);
  AdmitAndFill(*m, 1, a);
  const std::vector<int32_t> blocks = m->BlockIds(1);
  ASSERT_THAT(blocks, ElementsAre(0, 1, 2, 3));
  m->Free(1);
  // Cached free blocks are not reserved; they wait in the free queue, A's tail block first.
  EXPECT_EQ(m->Usage().reserved_bytes, 0);
  EXPECT_EQ(m->Usage().used_bytes, 0);
  EXPECT_EQ(m->device_pool().num_free(), 6);
  EXPECT_THAT(m->device_pool().FreeQueue(), ElementsAre(4, 5, 3, 2, 1, 0));
  // An unrelated sequence takes the never-used blocks, then evicts A's last block only.
  AdmitAndFill(*m, 2, Tokens(40, 2));
  EXPECT_THAT(m->BlockIds(2), ElementsAre(4, 5, 3));
  EXPECT_EQ(m->Counters().evicted_cached_blocks, 1);
  // A's first two blocks still hit; the hit takes them off the free queue.
  const std::vector<int32_t> c = Concat(std::vector<int32_t>(a.begin(), a.begin() + 32), {7});
  EXPECT_EQ(m->CanAdmit(Request(3, c)).status, AdmitStatus::kOk);
  EXPECT_EQ(AdmitAndFill(*m, 3, c), 32);
  EXPECT_THAT(m->BlockIds(3), ElementsAre(0, 1, 2));  // block 2 reused: evicted
  EXPECT_EQ(m->Counters().evicted_cached_blocks, 2);
  EXPECT_EQ(m->Usage().reserved_bytes, 6 * kBlockBytes);
  EXPECT_EQ(m->Usage().used_bytes, 73 * kBytesPerToken);
  EXPECT_TRUE(m->CheckInvariants().ok()) << m->CheckInvariants();
}

TEST(PagedKvManagerTest, PrefixCachingOffSharesNothing) {
  PagedKvManager::Options options = NoWatermark();
  options.enable_prefix_caching = false;
  auto m = Paged(8, options);
  const std::vector<int32_t> a = Tokens(40, 1);
  EXPECT_EQ(AdmitAndFill(*m, 1, a), 0);
  EXPECT_EQ(AdmitAndFill(*m, 2, a), 0);
  std::set<int32_t> blocks;
  for (int32_t b : m->BlockIds(1)) blocks.insert(b);
  for (int32_t b : m->BlockIds(2)) blocks.insert(b);
  EXPECT_EQ(blocks.size(), 6u);
  EXPECT_EQ(m->device_pool().num_cached(), 0);
  EXPECT_EQ(m->Counters().prefix_query_tokens, 0);
}

TEST(PagedKvManagerTest, WatermarkAdmission) {
  PagedKvManager::Options options;
  options.watermark = 0.1;
  auto m = Paged(100, options);
  ASSERT_EQ(m->watermark_blocks(), 10);
  // 91 blocks: 100 - 91 < 10 even in an empty pool.
  Admission never = m->CanAdmit(Request(1, Tokens(91 * 16, 1)));
  EXPECT_EQ(never.status, AdmitStatus::kNever);
  EXPECT_THAT(never.reason, HasSubstr("1456 tokens"));
  EXPECT_THAT(never.reason, HasSubstr("100 blocks"));
  EXPECT_TRUE(absl::IsInvalidArgument(m->Admit(Request(1, Tokens(91 * 16, 1))).status()));
  EXPECT_EQ(m->CanAdmit(Request(1, Tokens(90 * 16, 1))).status, AdmitStatus::kOk);
  EXPECT_EQ(m->CanAdmit(Request(1, {})).status, AdmitStatus::kNever);
  // Hold 5 blocks: 95 free. 86 blocks leave 9 < 10: later; 85 leave 10: ok.
  AdmitAndFill(*m, 7, Tokens(80, 7));
  EXPECT_EQ(m->CanAdmit(Request(1, Tokens(86 * 16, 1))).status, AdmitStatus::kLater);
  EXPECT_TRUE(absl::IsResourceExhausted(m->Admit(Request(1, Tokens(86 * 16, 1))).status()));
  EXPECT_EQ(m->CanAdmit(Request(1, Tokens(85 * 16, 1))).status, AdmitStatus::kOk);
  EXPECT_EQ(m->CanAdmit(Request(1, Tokens(85 * 16 - 5, 1))).status, AdmitStatus::kOk);
  EXPECT_EQ(m->CanAdmit(Request(1, Tokens(85 * 16 + 1, 1))).status, AdmitStatus::kLater);
  EXPECT_TRUE(absl::IsAlreadyExists(m->Admit(Request(7, Tokens(4, 9))).status()));
}

TEST(PagedKvManagerTest, AdmissionCountsOnlyBlocksTakenFromTheFreeQueue) {
  PagedKvManager::Options options;
  options.watermark = 0.1;
  auto m = Paged(100, options);
  const std::vector<int32_t> a = Tokens(80 * 16, 1);
  AdmitAndFill(*m, 1, a);  // 80 blocks held, 20 free
  // 90 prompt blocks, 80 of them cached and in use: only 10 are needed (not 90).
  const std::vector<int32_t> b = Concat(a, Tokens(160, 2));
  EXPECT_EQ(m->CanAdmit(Request(2, b)).status, AdmitStatus::kOk);
  // kNever counts every prompt block, cached or not: 100 - 91 < 10.
  EXPECT_EQ(m->CanAdmit(Request(2, Concat(b, {1}))).status, AdmitStatus::kNever);
  AdmitAndFill(*m, 5, Tokens(16, 5));  // 19 free: 19 - 10 < 10
  EXPECT_EQ(m->CanAdmit(Request(2, b)).status, AdmitStatus::kLater);
  m->Free(5);
  // Once A is freed its cached blocks sit in the free queue: a hit takes them out of it.
  m->Free(1);
  EXPECT_EQ(m->CanAdmit(Request(2, b)).status, AdmitStatus::kOk);  // 100 - 90 >= 10
  EXPECT_EQ(AdmitAndFill(*m, 2, b), 80 * 16);
  EXPECT_EQ(m->device_pool().num_free(), 10);
  EXPECT_TRUE(m->CheckInvariants().ok()) << m->CheckInvariants();
}

TEST(PagedKvManagerTest, ForkThenAppendCopiesTheSharedPartialBlock) {
  auto m = Paged(8, NoWatermark());
  AdmitAndFill(*m, 1, Tokens(20, 1));  // one full block + 4 tokens
  ASSERT_TRUE(m->Fork(1, 2).ok());
  EXPECT_TRUE(absl::IsAlreadyExists(m->Fork(1, 2)));
  EXPECT_TRUE(absl::IsNotFound(m->Fork(9, 3)));
  EXPECT_EQ(m->BlockIds(2), m->BlockIds(1));
  // Shared: reserved and used once.
  EXPECT_EQ(m->Usage().reserved_bytes, 2 * kBlockBytes);
  EXPECT_EQ(m->Usage().used_bytes, 20 * kBytesPerToken);
  const int32_t shared_tail = m->BlockIds(1)[1];
  ASSERT_TRUE(m->Append(1, {500}));
  ASSERT_TRUE(m->Append(2, {600}));
  EXPECT_EQ(m->Counters().cow_copies, 1);  // the second appender owns the old block alone
  const int32_t copy = m->BlockIds(1)[1];
  EXPECT_NE(copy, shared_tail);
  EXPECT_EQ(m->BlockIds(2)[1], shared_tail);
  EXPECT_EQ(m->BlockIds(1)[0], m->BlockIds(2)[0]);
  absl::StatusOr<const StepPlan*> plan = m->Plan({{1, 1, 20}, {2, 1, 20}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ((*plan)->copies.size(), 1u);
  EXPECT_EQ((*plan)->copies[0].src, shared_tail);
  EXPECT_EQ((*plan)->copies[0].dst, copy);
  EXPECT_THAT((*plan)->new_slots, ElementsAre(copy * 16 + 4, shared_tail * 16 + 4));
  const kernels::SeqKvView& p = (*plan)->views[0];
  const kernels::SeqKvView& c = (*plan)->views[1];
  ASSERT_EQ(p.num_cached, 21);
  ASSERT_EQ(c.num_cached, 21);
  EXPECT_EQ(p.head_stride, 0);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(p.slots[i], c.slots[i]);  // full block: shared
  for (int i = 16; i < 21; ++i) {
    // The partial block's tokens before the fork point are copied slot for slot.
    EXPECT_EQ(p.slots[i], copy * 16 + (i - 16));
    EXPECT_EQ(c.slots[i], shared_tail * 16 + (i - 16));
  }
  for (int i = 0; i < 21; ++i) EXPECT_EQ(p.positions[i], i);
  // The next plan carries no copies.
  ASSERT_TRUE(m->Append(1, {501}));
  plan = m->Plan({{1, 1, 21}});
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE((*plan)->copies.empty());
  EXPECT_EQ(m->Usage().used_bytes, (22 + 21 - 16) * kBytesPerToken);
  EXPECT_TRUE(m->CheckInvariants().ok()) << m->CheckInvariants();
}

TEST(PagedKvManagerTest, AppendFailsWithoutChangingAnything) {
  auto m = Paged(2, NoWatermark());
  AdmitAndFill(*m, 1, Tokens(30, 1));
  ASSERT_TRUE(m->Append(1, {1, 2}));  // 32 tokens: both blocks full
  EXPECT_FALSE(m->Append(1, {3}));
  EXPECT_EQ(m->NumTokens(1), 32);
  EXPECT_FALSE(m->Append(42, {3}));  // unknown
  EXPECT_TRUE(m->CheckInvariants().ok()) << m->CheckInvariants();
  // A CoW that finds no free block fails too.
  auto f = Paged(2, NoWatermark());
  AdmitAndFill(*f, 1, Tokens(20, 1));
  ASSERT_TRUE(f->Fork(1, 2).ok());
  EXPECT_FALSE(f->Append(1, {9}));
  EXPECT_EQ(f->NumTokens(1), 20);
  EXPECT_EQ(f->Counters().cow_copies, 0);
  EXPECT_TRUE(f->CheckInvariants().ok()) << f->CheckInvariants();
}

TEST(PagedKvManagerTest, PlanRejectsStepsThatDoNotMatchTheSequences) {
  auto m = Paged(8, NoWatermark());
  AdmitAndFill(*m, 1, Tokens(5, 1));
  EXPECT_TRUE(absl::IsInvalidArgument(m->Plan({{9, 1, 0}}).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(m->Plan({{1, 1, 5}}).status()));  // not appended
  EXPECT_TRUE(absl::IsInvalidArgument(m->Plan({{1, 5, 0}, {1, 5, 0}}).status()));
  auto plan = m->Plan({{1, 5, 0}});
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ((*plan)->new_slots.size(), 5u);
  EXPECT_THAT((*plan)->views[0].positions[4], 4);
}

TEST(PagedKvManagerTest, SwapOutAndInRecordTransfersAndApplyTheWatermark) {
  PagedKvManager::Options options;
  options.watermark = 0.25;
  options.swap = true;
  options.swap_space_bytes = 3 * kBlockBytes;
  auto m = Paged(8, options);
  ASSERT_TRUE(m->SupportsSwap());
  ASSERT_EQ(m->host_pool()->num_blocks(), 3);
  AdmitAndFill(*m, 1, Tokens(40, 1));  // 3 blocks
  const std::vector<int32_t> device = m->BlockIds(1);
  ASSERT_TRUE(m->SwapOut(1));
  EXPECT_TRUE(m->IsSwappedOut(1));
  EXPECT_EQ(m->NumTokens(1), 0);
  EXPECT_FALSE(m->SwapOut(1));
  KvUsage usage = m->Usage();
  EXPECT_EQ(usage.reserved_bytes, 0);
  EXPECT_EQ(usage.host_bytes, 3 * kBlockBytes);
  EXPECT_EQ(usage.swapped_bytes, 40 * kBytesPerToken);
  // The freed device blocks are reusable in the same step (swap-out is applied first).
  EXPECT_EQ(m->device_pool().num_free(), 8);
  // Host pool full: a second swap-out fails and changes nothing.
  AdmitAndFill(*m, 2, Tokens(10, 2));
  EXPECT_FALSE(m->SwapOut(2));
  EXPECT_FALSE(m->IsSwappedOut(2));
  EXPECT_TRUE(absl::IsInvalidArgument(m->Plan({{1, 0, 40}}).status()));  // swapped out
  auto plan = m->Plan({{2, 10, 0}});
  ASSERT_TRUE(plan.ok());
  const std::vector<int32_t> host = m->BlockIds(1);
  ASSERT_EQ((*plan)->swap_out.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ((*plan)->swap_out[i].src, device[i]);
    EXPECT_EQ((*plan)->swap_out[i].dst, host[i]);
  }
  // Swap-in needs 3 blocks + the 2-block watermark: with 7 free it fits, with 4 it does not.
  AdmitAndFill(*m, 3, Tokens(48, 3));
  EXPECT_EQ(m->device_pool().num_free(), 4);
  EXPECT_FALSE(m->CanSwapIn(1));
  EXPECT_TRUE(absl::IsResourceExhausted(m->SwapIn(1)));
  m->Free(3);
  ASSERT_TRUE(m->CanSwapIn(1));
  ASSERT_TRUE(m->SwapIn(1).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(m->SwapIn(1)));
  // A sequence swapped in during this step cannot be swapped out before the step runs.
  EXPECT_FALSE(m->SwapOut(1));
  EXPECT_EQ(m->NumTokens(1), 40);
  plan = m->Plan({{1, 0, 40}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ((*plan)->swap_in.size(), 3u);
  EXPECT_TRUE((*plan)->swap_out.empty());
  const std::vector<int32_t> back = m->BlockIds(1);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ((*plan)->swap_in[i].src, host[i]);
    EXPECT_EQ((*plan)->swap_in[i].dst, back[i]);
  }
  EXPECT_EQ((*plan)->views[0].slots[17], back[1] * 16 + 1);
  EXPECT_EQ(m->Counters().swapped_out_blocks, 3);
  EXPECT_EQ(m->Counters().swapped_in_blocks, 3);
  usage = m->Usage();
  EXPECT_EQ(usage.host_bytes, 0);
  EXPECT_EQ(usage.swapped_bytes, 0);
  EXPECT_EQ(usage.used_bytes, 50 * kBytesPerToken);
  EXPECT_TRUE(m->SwapOut(1));  // after the plan it may go again
  EXPECT_TRUE(m->CheckInvariants().ok()) << m->CheckInvariants();
}

TEST(PagedKvManagerTest, RecomputeModeDoesNotSwap) {
  auto m = Paged(4, NoWatermark());
  AdmitAndFill(*m, 1, Tokens(5, 1));
  EXPECT_FALSE(m->SupportsSwap());
  EXPECT_FALSE(m->SwapOut(1));
  EXPECT_FALSE(m->CanSwapIn(1));
  EXPECT_TRUE(absl::IsFailedPrecondition(m->SwapIn(1)));
  m->Free(1);
  m->Free(1);  // unknown ids are ignored
  EXPECT_EQ(m->device_pool().num_free(), 4);
}

}  // namespace
}  // namespace kvscope::kvcache

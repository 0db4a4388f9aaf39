// File: tests/engine/infinigen_offload_plan_test.cc
//
// The working-pool numbering of InfiniGen's offloaded layers (engine/infinigen_offload_plan.h)
// against a brute-force oracle: a host pool and a step's new rows are materialized, the plan's
// writes and gathers are applied to a simulated working pool, and every non-sparse list read
// through the working numbering must give what the same list reads through the host numbering
// once the step's new K/V are stored at their host slots.
#include "engine/infinigen_offload_plan.h"

#include <algorithm>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace kvscope::engine {
namespace {

constexpr int32_t kBlock = 16;

// A random step: sequences with host slot lists over a shared pool of distinct host slots.
struct Step {
  std::vector<std::vector<int32_t>> slots, positions;
  std::vector<OffloadSeq> seqs;
  std::vector<int32_t> new_slots;  // per token row
};

Step RandomStep(std::mt19937& rng, int num_seqs) {
  Step st;
  std::vector<int32_t> free_slots(4000);
  std::iota(free_slots.begin(), free_slots.end(), 0);
  std::shuffle(free_slots.begin(), free_slots.end(), rng);
  size_t next = 0;
  st.slots.resize(num_seqs);
  st.positions.resize(num_seqs);
  int32_t row = 0;
  for (int i = 0; i < num_seqs; ++i) {
    const int kind = static_cast<int>(rng() % 4);  // 0 prefill, 1 chunk, 2 sparse, 3 dense decode
    const int32_t start = kind == 0 ? 0 : static_cast<int32_t>(1 + rng() % 60);
    const int32_t n = kind >= 2 ? 1 : static_cast<int32_t>(1 + rng() % 23);
    for (int32_t p = 0; p < start + n; ++p) {
      st.slots[i].push_back(free_slots[next++]);
      st.positions[i].push_back(p);
    }
    for (int32_t p = start; p < start + n; ++p) st.new_slots.push_back(st.slots[i][p]);
    OffloadSeq s;
    s.start_position = start;
    s.num_new_tokens = n;
    s.first_row = row;
    s.sparse = kind == 2;
    row += n;
    st.seqs.push_back(s);
  }
  for (int i = 0; i < num_seqs; ++i) {
    st.seqs[i].slots = st.slots[i];
    st.seqs[i].positions = st.positions[i];
  }
  return st;
}

TEST(InfinigenOffloadPlanTest, ListsReadThroughTheWorkingPoolWhatTheHostSlotsHold) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    const Step st = RandomStep(rng, 1 + static_cast<int>(rng() % 6));
    const int64_t prefetch = kBlock * static_cast<int64_t>(2 * (rng() % 4));
    auto plan = PlanOffloadStep(st.seqs, st.new_slots, prefetch, kBlock);
    ASSERT_TRUE(plan.ok()) << plan.status();
    ASSERT_EQ(plan->num_slots % kBlock, 0);
    ASSERT_GE(plan->num_slots, kBlock);

    // Oracle values: host slot h holds 1000000 + h before the step; row t's new K/V is -t-1.
    std::vector<int64_t> host(4000);
    for (size_t h = 0; h < host.size(); ++h) host[h] = 1000000 + static_cast<int64_t>(h);
    std::vector<int64_t> working(plan->num_slots, 0);  // 0 = never written
    // Prefetch slots belong to the selection: poisoned, and no list of the plan may read them.
    for (int64_t w = 0; w < prefetch; ++w) working[w] = -999999999;
    ASSERT_EQ(plan->fresh_slots.size(), st.new_slots.size());
    std::set<int32_t> written;
    for (size_t t = 0; t < st.new_slots.size(); ++t) {
      const int32_t w = plan->fresh_slots[t];
      ASSERT_GE(w, prefetch);
      ASSERT_LT(w, plan->num_slots);
      ASSERT_TRUE(written.insert(w).second) << "two rows share working slot " << w;
      working[w] = -static_cast<int64_t>(t) - 1;
    }
    ASSERT_EQ(plan->history_src.size(), plan->history_dst.size());
    for (size_t g = 0; g < plan->history_src.size(); ++g) {
      const int32_t w = plan->history_dst[g];
      ASSERT_GE(w, prefetch);
      ASSERT_LT(w, plan->num_slots);
      ASSERT_TRUE(written.insert(w).second) << "working slot " << w << " written twice";
      working[w] = host[plan->history_src[g]];
    }
    // The step stores its new K/V at their host slots (the host pool's store_cache).
    for (size_t t = 0; t < st.new_slots.size(); ++t) host[st.new_slots[t]] = -static_cast<int64_t>(t) - 1;

    ASSERT_EQ(plan->list_begin.size(), st.seqs.size());
    int64_t gathered = 0;
    for (size_t i = 0; i < st.seqs.size(); ++i) {
      if (st.seqs[i].sparse) {
        EXPECT_EQ(plan->list_begin[i], -1);
        // Its new token (the end of its selection view) is a fresh row on the device.
        const int32_t w = plan->fresh_slots[st.seqs[i].first_row];
        EXPECT_GE(w, plan->fresh_base);
        EXPECT_LT(w, plan->history_base);
        EXPECT_EQ(working[w], host[st.new_slots[st.seqs[i].first_row]]);
        continue;
      }
      ASSERT_GE(plan->list_begin[i], 0);
      ASSERT_LE(plan->list_begin[i] + static_cast<int64_t>(st.slots[i].size()),
                static_cast<int64_t>(plan->lists.size()));
      for (size_t j = 0; j < st.slots[i].size(); ++j) {
        const int32_t w = plan->lists[plan->list_begin[i] + j];
        ASSERT_GE(w, prefetch);
        ASSERT_LT(w, plan->num_slots);
        EXPECT_EQ(working[w], host[st.slots[i][j]]) << "sequence " << i << " entry " << j;
      }
      gathered += st.seqs[i].start_position;
    }
    // Exactly the earlier tokens of the non-sparse sequences cross PCIe, once each.
    EXPECT_EQ(static_cast<int64_t>(plan->history_src.size()), gathered);
  }
}

TEST(InfinigenOffloadPlanTest, PlainPrefillAndDecodesGatherNothing) {
  // A prompt of 20 tokens and two speculating decodes: only fresh rows, lists in row order.
  std::vector<int32_t> prompt_slots(20), prompt_pos(20);
  std::iota(prompt_slots.begin(), prompt_slots.end(), 100);
  std::iota(prompt_pos.begin(), prompt_pos.end(), 0);
  std::vector<OffloadSeq> seqs(3);
  seqs[0].sparse = true;
  seqs[0].start_position = 50;
  seqs[0].num_new_tokens = 1;
  seqs[0].first_row = 0;
  seqs[1].slots = prompt_slots;
  seqs[1].positions = prompt_pos;
  seqs[1].num_new_tokens = 20;
  seqs[1].first_row = 1;
  seqs[2].sparse = true;
  seqs[2].start_position = 9;
  seqs[2].num_new_tokens = 1;
  seqs[2].first_row = 21;
  std::vector<int32_t> new_slots = {7};
  new_slots.insert(new_slots.end(), prompt_slots.begin(), prompt_slots.end());
  new_slots.push_back(8);
  auto plan = PlanOffloadStep(seqs, new_slots, 64, kBlock);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(plan->history_src.empty());
  EXPECT_EQ(plan->fresh_base, 64);
  EXPECT_EQ(plan->fresh_slots.front(), 64);
  EXPECT_EQ(plan->fresh_slots.back(), 64 + 21);
  EXPECT_EQ(plan->list_begin, (std::vector<int64_t>{-1, 0, -1}));
  ASSERT_EQ(plan->lists.size(), 20u);
  for (int j = 0; j < 20; ++j) EXPECT_EQ(plan->lists[j], 64 + 1 + j);
  EXPECT_EQ(plan->num_slots, 96);  // 64 + 22 rows, rounded up to blocks
}

TEST(InfinigenOffloadPlanTest, RowsThatWriteNothingGetNoWorkingSlot) {
  const std::vector<int32_t> new_slots = {5, -1, 6};
  auto plan = PlanOffloadStep({}, new_slots, 0, kBlock);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->fresh_slots, (std::vector<int32_t>{0, -1, 2}));
  EXPECT_EQ(plan->num_slots, kBlock);
}

TEST(InfinigenOffloadPlanTest, InconsistentStepsAreRefused) {
  const std::vector<int32_t> slots = {3, 4, 5};
  const std::vector<int32_t> positions = {0, 1, 2};
  const std::vector<int32_t> two = {0, 1};
  OffloadSeq s;
  s.slots = slots;
  s.positions = positions;
  s.start_position = 2;
  s.num_new_tokens = 1;
  s.first_row = 0;
  const std::vector<int32_t> new_slots = {5};
  ASSERT_TRUE(PlanOffloadStep({s}, new_slots, 0, kBlock).ok());

  OffloadSeq mismatch = s;
  mismatch.positions = two;
  EXPECT_EQ(PlanOffloadStep({mismatch}, new_slots, 0, kBlock).status().code(),
            absl::StatusCode::kInvalidArgument);
  OffloadSeq beyond = s;
  beyond.first_row = 1;  // row 1 does not exist
  const absl::Status st = PlanOffloadStep({beyond}, new_slots, 0, kBlock).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("token row 1"), std::string::npos) << st;
  const std::vector<int32_t> no_write = {-1};
  EXPECT_EQ(PlanOffloadStep({s}, no_write, 0, kBlock).status().code(),
            absl::StatusCode::kInvalidArgument);
  const std::vector<int32_t> bad_slots = {3, -4, 5};
  OffloadSeq negative = s;
  negative.slots = bad_slots;
  EXPECT_EQ(PlanOffloadStep({negative}, new_slots, 0, kBlock).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanOffloadStep({s}, new_slots, -1, kBlock).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvscope::engine

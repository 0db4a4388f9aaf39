// File: tests/kvcache/plan_check_test.cc
//
// The step validation every manager's Plan() shares (kvcache/plan_check.h).
#include "kvcache/plan_check.h"

#include <memory>

#include "absl/container/flat_hash_map.h"
#include "gtest/gtest.h"

namespace kvscope::kvcache {
namespace {

struct FakeSeq {
  uint64_t stamp = 0;
  int32_t planned_length = 0;
  int32_t length = 0;
};

TEST(PlanCheckTest, ExtentRules) {
  // 10 computed, 14 appended.
  const SeqStep whole{7, 4, 10};
  const SeqStep chunk{7, 2, 10};
  EXPECT_TRUE(CheckStepExtent(whole, 10, 14, StepExtent::kWholeRemainder).ok());
  EXPECT_TRUE(CheckStepExtent(whole, 10, 14, StepExtent::kPrefix).ok());
  EXPECT_TRUE(CheckStepExtent(chunk, 10, 14, StepExtent::kPrefix).ok());
  const absl::Status partial = CheckStepExtent(chunk, 10, 14, StepExtent::kWholeRemainder);
  EXPECT_EQ(partial.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(partial.message().find("sequence 7"), std::string::npos) << partial;
  EXPECT_NE(partial.message().find("14 appended"), std::string::npos) << partial;
  // Past the appended tokens, from the wrong position, or empty: refused for both.
  for (StepExtent e : {StepExtent::kWholeRemainder, StepExtent::kPrefix}) {
    EXPECT_FALSE(CheckStepExtent(SeqStep{7, 5, 10}, 10, 14, e).ok());
    EXPECT_FALSE(CheckStepExtent(SeqStep{7, 4, 9}, 10, 14, e).ok());
    EXPECT_FALSE(CheckStepExtent(SeqStep{7, 0, 10}, 10, 10, e).ok());
  }
}

TEST(PlanCheckTest, AdmittedOnceAndStamped) {
  absl::flat_hash_map<int64_t, std::unique_ptr<FakeSeq>> seqs;
  seqs[1] = std::make_unique<FakeSeq>(FakeSeq{0, 0, 3});
  seqs[2] = std::make_unique<FakeSeq>(FakeSeq{0, 5, 6});
  const SeqStep steps[] = {{1, 3, 0}, {2, 1, 5}};
  ASSERT_TRUE(CheckPlanSteps(steps, seqs, 1, StepExtent::kWholeRemainder).ok());
  EXPECT_EQ(seqs[1]->stamp, 1u);
  EXPECT_EQ(seqs[2]->stamp, 1u);
  // A new plan (new stamp) accepts the same sequences again.
  EXPECT_TRUE(CheckPlanSteps(steps, seqs, 2, StepExtent::kWholeRemainder).ok());

  const SeqStep twice[] = {{1, 3, 0}, {1, 3, 0}};
  const absl::Status dup = CheckPlanSteps(twice, seqs, 3, StepExtent::kWholeRemainder);
  EXPECT_NE(dup.message().find("appears twice"), std::string::npos) << dup;

  const SeqStep unknown[] = {{9, 1, 0}};
  const absl::Status missing = CheckPlanSteps(unknown, seqs, 4, StepExtent::kPrefix);
  EXPECT_EQ(missing.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(missing.message().find("sequence 9 is not admitted"), std::string::npos) << missing;
}

}  // namespace
}  // namespace kvscope::kvcache

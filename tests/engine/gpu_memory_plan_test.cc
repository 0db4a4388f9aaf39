// File: tests/engine/gpu_memory_plan_test.cc
//
// The KV pool size a GPU rank gets (engine/gpu_memory_plan.h), with the H100's 80 GiB.
#include "engine/gpu_memory_plan.h"

#include "gtest/gtest.h"

namespace kvscope::engine {
namespace {

constexpr int64_t kGiB = int64_t{1} << 30;

GpuMemoryInputs H100() {
  GpuMemoryInputs in;
  in.total_bytes = 80 * kGiB;
  in.free_bytes = 79 * kGiB;  // the driver's context
  in.weight_bytes = 13 * kGiB;
  in.workspace_bytes = 2 * kGiB;
  return in;
}

TEST(GpuMemoryPlanTest, KvGetsWhatUtilizationLeaves) {
  auto plan = PlanGpuMemory(H100());
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->limit_bytes, static_cast<int64_t>(80 * kGiB * 0.9));
  EXPECT_EQ(plan->kv_bytes, plan->limit_bytes - 15 * kGiB);
  EXPECT_EQ(plan->headroom_bytes, 0);
  EXPECT_NE(plan->Describe().find("KV pool"), std::string::npos);
}

TEST(GpuMemoryPlanTest, ExplicitKvBytesIsHonouredAndChecked) {
  GpuMemoryInputs in = H100();
  in.requested_kv_bytes = 8 * kGiB;
  auto plan = PlanGpuMemory(in);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->kv_bytes, 8 * kGiB);
  EXPECT_EQ(plan->headroom_bytes, plan->limit_bytes - 15 * kGiB - 8 * kGiB);

  in.requested_kv_bytes = 70 * kGiB;
  auto too_big = PlanGpuMemory(in);
  ASSERT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(too_big.status().message().find("kv_bytes"), std::string::npos);
  EXPECT_NE(too_big.status().message().find("weights 13.00 GiB"), std::string::npos)
      << too_big.status();

  in.requested_kv_bytes = 100;
  in.min_kv_bytes = 4096;
  EXPECT_EQ(PlanGpuMemory(in).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(GpuMemoryPlanTest, ModelTooLargeSaysWhatToChange) {
  GpuMemoryInputs in = H100();
  in.weight_bytes = 140 * kGiB;  // a 70B model in bf16 on one card
  auto plan = PlanGpuMemory(in);
  ASSERT_EQ(plan.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(plan.status().message().find("tensor-parallel"), std::string::npos)
      << plan.status();
}

TEST(GpuMemoryPlanTest, BusyCardIsAPreconditionFailure) {
  GpuMemoryInputs in = H100();
  in.free_bytes = 40 * kGiB;  // another process holds half
  auto plan = PlanGpuMemory(in);
  ASSERT_EQ(plan.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(plan.status().message().find("at most 0.5"), std::string::npos) << plan.status();
  in.gpu_memory_utilization = 0.5;
  EXPECT_TRUE(PlanGpuMemory(in).ok());
}

TEST(GpuMemoryPlanTest, BadInputsAreRefused) {
  for (double u : {0.0, -0.1, 1.01, std::nan("")}) {
    GpuMemoryInputs in = H100();
    in.gpu_memory_utilization = u;
    EXPECT_EQ(PlanGpuMemory(in).status().code(), absl::StatusCode::kInvalidArgument) << u;
  }
  GpuMemoryInputs in = H100();
  in.free_bytes = in.total_bytes + 1;
  EXPECT_EQ(PlanGpuMemory(in).status().code(), absl::StatusCode::kInvalidArgument);
  in = H100();
  in.weight_bytes = -1;
  EXPECT_EQ(PlanGpuMemory(in).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvscope::engine

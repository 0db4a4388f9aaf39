// GPU gangs (docs/bench.md, "Gangs"): tp=2 as two "processes" on threads of this test, a
// driver (engine/gang_driver.h) and a follower (engine/gang_follower.h) each with a GpuEngine
// running one rank on the same GPU, their all-reduces host-staged over a loopback TCP group
// (engine/tcp_comm_group.h), the control messages over an in-memory channel. Served tokens
// and every step's logits must be bitwise those of one GpuEngine with tp=2 host-staged ranks:
// every rank runs the same kernels on the same inputs on the same device, and both
// communicators sum the ranks' float32 partial sums in rank order from 0.0f, so nothing may
// differ, in float32 or bf16. The tight paged strategy swaps blocks, so the follower must
// mirror the driver's plans (ApplyPlan on its replica's plans) for its device pool to hold
// the right K/V.
//
// GpuGangOptionsTest needs no device (argument checks before any CUDA call) and runs in
// gpu_engine_tests_host_parts.
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/status_macros.h"
#include "engine/cuda/gpu_engine.h"
#include "engine/gang_driver.h"
#include "engine/gang_follower.h"
#include "engine/presets.h"
#include "engine/recording_kv_manager.h"
#include "engine/serving.h"
#include "engine/tcp_comm_group.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvcache/registry.h"
#include "tests/gpu_engine/gpu_engine_test_util.h"
#include "tests/gpu_kernels/gpu_test_util.h"
#include "tests/gang/gang_test_util.h"

namespace kvscope::engine::cuda {
namespace {

namespace gt = kernels::cuda::testing;
using ::kvscope::testing::PresetWeights;
using ::testing::HasSubstr;

using ::kvscope::testing::Pipe;
using ::kvscope::testing::ServeKeepingLogits;

std::vector<RequestSpec> Requests(const ModelConfig& config) {
  std::vector<RequestSpec> requests;
  for (int i = 0; i < 6; ++i) {
    RequestSpec r;
    r.id = i;
    for (int t = 0; t < 9 + 7 * i; ++t) {
      r.prompt.push_back(static_cast<int32_t>((3 + i * 131 + t * 17) % config.vocab_size));
    }
    r.output_len = 6 + i % 3;
    requests.push_back(r);
  }
  return requests;
}

struct Strategy {
  std::string name;
  std::map<std::string, std::string> params;
  int64_t kv_bytes;
};

std::unique_ptr<kvcache::KvManager> Manager(const ModelWeights& w, const Strategy& s) {
  kvcache::KvManagerContext context{KvGeometryFor(w.config, 2), s.kv_bytes, 256};
  context.host_kv_storage = false;  // the GPU engine keeps the K/V in its device pool
  auto kv = kvcache::CreateKvManager(s.name, s.params, context);
  EXPECT_TRUE(kv.ok()) << kv.status();
  return kv.ok() ? std::move(*kv) : nullptr;
}

GpuEngineOptions Options(DType dtype, kvcache::KvManager* manager) {
  GpuEngineOptions o;
  o.tp_size = 2;
  o.shard.dtype = dtype;
  o.shard.max_tokens_per_step = 32;
  o.comm = GpuCommKind::kHostStaged;
  o.kv_factory = [manager](const kvcache::KvShape&, int rank) {
    return manager->CreateRankCache(rank);
  };
  return o;
}

class GpuGangTest : public ::testing::TestWithParam<Strategy> {};

TEST_P(GpuGangTest, Tp2AsTwoProcessesOnOneGpuEqualsOneProcessBitwise) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  const Strategy& strategy = GetParam();
  auto weights = PresetWeights("llama-tiny");
  ASSERT_NE(weights, nullptr);
  const std::vector<RequestSpec> requests = Requests(weights->config);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(gt::DTypeLabel(dtype));
    // One process, tp = 2, host-staged over a LocalCommGroup.
    auto single_kv = Manager(*weights, strategy);
    ASSERT_NE(single_kv, nullptr);
    auto single = GpuEngine::Create(weights, Options(dtype, single_kv.get()));
    ASSERT_TRUE(single.ok()) << single.status();
    std::vector<std::vector<float>> single_logits;
    const ServingResult expected = ServeKeepingLogits(
        *single_kv, requests,
        [&](absl::Span<const SeqInput> b,
            const kvcache::StepPlan& plan) -> absl::StatusOr<ForwardOutput> {
          KVSCOPE_RETURN_IF_ERROR((*single)->ApplyPlan(plan));
          return (*single)->Forward(b);
        },
        &single_logits);
    ASSERT_TRUE(expected.complete) << expected.status_message;
    EXPECT_EQ((*single)->MemoryJson()["communicator"], "host-staged");
    single->reset();  // frees its device memory

    // A gang of two "processes", one rank each, on the same GPU, over loopback TCP.
    auto tcp = CreateLoopbackTcpGroup(2, TcpCommOptions{});
    ASSERT_TRUE(tcp.ok()) << tcp.status();
    RecordingKvManager driver_kv(Manager(*weights, strategy));
    auto replica = Manager(*weights, strategy);
    ASSERT_NE(replica, nullptr);
    auto slice = [&](kvcache::KvManager* kv, int rank) {
      GpuEngineOptions o = Options(dtype, kv);
      o.first_rank = rank;
      o.local_ranks = 1;
      o.comm_factory = [&tcp](int r) -> absl::StatusOr<std::unique_ptr<Communicator>> {
        return std::move((*tcp)[r]);
      };
      return GpuEngine::Create(weights, o);
    };
    auto driver_engine = slice(&driver_kv, 0);
    auto follower_engine = slice(replica.get(), 1);
    ASSERT_TRUE(driver_engine.ok()) << driver_engine.status();
    ASSERT_TRUE(follower_engine.ok()) << follower_engine.status();
    EXPECT_EQ((*follower_engine)->first_rank(), 1);
    EXPECT_EQ((*follower_engine)->MemoryJson()["ranks"][0]["rank"], 1);

    Pipe pipe;
    auto follower_end = std::make_unique<Pipe::End>(&pipe, 1);
    std::vector<std::unique_ptr<GangChannel>> followers;
    followers.push_back(std::make_unique<Pipe::End>(&pipe, 0));
    absl::Status follower_status;
    GangFollowerStats stats;
    std::thread follower([&] {
      follower_status = RunGangFollower(*follower_end, *replica, **follower_engine, &stats);
    });
    GangDriver driver(driver_engine->get(), &driver_kv, std::move(followers),
                      GangDriverOptions{});
    std::vector<std::vector<float>> gang_logits;
    const ServingResult got = ServeKeepingLogits(
        driver_kv, requests,
        [&](absl::Span<const SeqInput> b, const kvcache::StepPlan& plan) {
          return driver.Forward(b, &plan);
        },
        &gang_logits);
    EXPECT_TRUE(driver.Finish().ok());
    follower.join();
    ASSERT_TRUE(got.complete) << got.status_message;
    EXPECT_TRUE(follower_status.ok()) << follower_status;
    EXPECT_EQ(stats.steps, static_cast<int64_t>(gang_logits.size()));
    if (strategy.params.count("preemption_mode") > 0) {
      EXPECT_GT(driver_kv.Counters().swapped_out_blocks, 0) << "the tight case should swap";
    }

    ASSERT_EQ(got.requests.size(), expected.requests.size());
    for (size_t i = 0; i < got.requests.size(); ++i) {
      EXPECT_TRUE(got.requests[i].completed) << got.requests[i].error;
      EXPECT_EQ(got.requests[i].output_ids, expected.requests[i].output_ids) << "request " << i;
    }
    ASSERT_EQ(gang_logits.size(), single_logits.size());
    for (size_t s = 0; s < gang_logits.size(); ++s) {
      ASSERT_EQ(gang_logits[s].size(), single_logits[s].size());
      EXPECT_EQ(0, std::memcmp(gang_logits[s].data(), single_logits[s].data(),
                               gang_logits[s].size() * sizeof(float)))
          << "step " << s << " logits differ";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Strategies, GpuGangTest,
    ::testing::Values(Strategy{"paged", {{"block_size", "8"}}, 4 << 20},
                      // Tight: sequences are preempted and swapped out and in, so both
                      // processes' device pools follow the plans' block transfers.
                      Strategy{"paged",
                               {{"block_size", "4"},
                                {"preemption_mode", "swap"},
                                {"swap_space", "1MiB"}},
                               96 << 10}),
    [](const ::testing::TestParamInfo<Strategy>& info) {
      return info.param.name + std::to_string(info.index);
    });

// The slice options are checked before any device is touched.
TEST(GpuGangOptionsTest, ASliceNeedsItsWayToTheOtherRanks) {
  auto weights = PresetWeights("llama-tiny");
  ASSERT_NE(weights, nullptr);
  GpuEngineOptions o;
  o.tp_size = 2;
  o.first_rank = 1;
  o.local_ranks = 1;
  auto no_comm = GpuEngine::Create(weights, o);
  EXPECT_TRUE(absl::IsInvalidArgument(no_comm.status())) << no_comm.status();
  EXPECT_THAT(no_comm.status().message(), HasSubstr("needs a comm_factory"));
  o.comm = GpuCommKind::kNccl;
  auto no_id = GpuEngine::Create(weights, o);
  EXPECT_TRUE(absl::IsInvalidArgument(no_id.status())) << no_id.status();
  EXPECT_THAT(no_id.status().message(), HasSubstr("nccl_unique_id"));
  o.first_rank = 2;
  auto outside = GpuEngine::Create(weights, o);
  EXPECT_THAT(outside.status().message(),
              HasSubstr("ranks [2, 3) are not inside the tensor-parallel group of 2"));
  o.first_rank = 0;
  o.local_ranks = 0;  // all ranks: 2 of them, but 3 devices listed
  o.comm = GpuCommKind::kHostStaged;
  o.devices = {0, 0, 0};
  auto devices = GpuEngine::Create(weights, o);
  EXPECT_THAT(devices.status().message(), HasSubstr("3 devices listed for 2 ranks"));
}

}  // namespace
}  // namespace kvscope::engine::cuda

// A gang in one test process: the driver (engine/gang_driver.h) and a follower
// (engine/gang_follower.h) on threads, over an in-memory control channel, their ranks
// joined by one LocalCommGroup. The served tokens and every step's logits must be bitwise
// those of a single tp=2 engine; a follower that fails must fail the driver, not hang it.
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "engine/gang_driver.h"
#include "engine/gang_follower.h"
#include "engine/gang_messages.h"
#include "engine/presets.h"
#include "engine/recording_kv_manager.h"
#include "engine/serving.h"
#include "engine/weights.h"
#include "gtest/gtest.h"
#include "kvcache/registry.h"
#include "tests/gang/gang_test_util.h"

namespace kvscope::engine {
namespace {

using ::kvscope::testing::Pipe;
using ::kvscope::testing::ServeKeepingLogits;

std::shared_ptr<const ModelWeights> TinyWeights() {
  auto config = PresetConfig("llama-tiny");
  EXPECT_TRUE(config.ok());
  auto w = SyntheticWeights(*config, 5);
  EXPECT_TRUE(w.ok()) << w.status();
  return std::make_shared<ModelWeights>(std::move(*w));
}

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
  auto kv = kvcache::CreateKvManager(s.name, s.params, context);
  EXPECT_TRUE(kv.ok()) << kv.status();
  return kv.ok() ? std::move(*kv) : nullptr;
}

EngineOptions Options(kvcache::KvManager* manager, int first, int local, LocalCommGroup* group) {
  EngineOptions o;
  o.tp_size = 2;
  o.num_threads = 1;
  o.first_rank = first;
  o.local_ranks = local;
  o.kv_factory = [manager](const kvcache::KvShape&, int rank) {
    return manager->CreateRankCache(rank);
  };
  if (group != nullptr) {
    o.comm_factory = [group](int rank) -> absl::StatusOr<std::unique_ptr<Communicator>> {
      return group->ForRank(rank);
    };
  }
  return o;
}

class GangDriverTest : public ::testing::TestWithParam<Strategy> {};

TEST_P(GangDriverTest, ServesBitwiseLikeOneProcess) {
  const Strategy& strategy = GetParam();
  auto weights = TinyWeights();
  const std::vector<RequestSpec> requests = Requests(weights->config);

  // Every engine is built first: infinigen calibrates while it is built, and its result
  // depends on the calling thread's OpenMP thread count, which a Forward changes.
  // One process, tp = 2.
  auto single_kv = Manager(*weights, strategy);
  auto single = Engine::Create(weights, Options(single_kv.get(), 0, 2, nullptr));
  ASSERT_TRUE(single.ok()) << single.status();
  // A gang of two "processes", one rank each.
  LocalCommGroup group(2);
  RecordingKvManager driver_kv(Manager(*weights, strategy));
  auto replica = Manager(*weights, strategy);
  auto driver_engine = Engine::Create(weights, Options(&driver_kv, 0, 1, &group));
  auto follower_engine = Engine::Create(weights, Options(replica.get(), 1, 1, &group));
  ASSERT_TRUE(driver_engine.ok()) << driver_engine.status();
  ASSERT_TRUE(follower_engine.ok()) << follower_engine.status();
  std::vector<std::vector<float>> single_logits;
  const ServingResult expected = ServeKeepingLogits(
      *single_kv, requests,
      [&](absl::Span<const SeqInput> b, const kvcache::StepPlan&) { return (*single)->Forward(b); },
      &single_logits);
  ASSERT_TRUE(expected.complete) << expected.status_message;
  int64_t preemptions = 0;
  for (const RequestRecord& r : expected.requests) {
    EXPECT_TRUE(r.completed) << r.error;
    preemptions += r.preemptions;
  }
  if (strategy.params.count("preemption_mode") > 0) {
    EXPECT_GT(preemptions, 0) << "the tight case should preempt";
  }

  Pipe pipe;
  auto follower_end = std::make_unique<Pipe::End>(&pipe, 1);
  std::vector<std::unique_ptr<GangChannel>> followers;
  followers.push_back(std::make_unique<Pipe::End>(&pipe, 0));
  absl::Status follower_status;
  GangFollowerStats stats;
  std::thread follower([&] {
    follower_status = RunGangFollower(*follower_end, *replica, **follower_engine, &stats);
  });
  GangDriver driver(driver_engine->get(), &driver_kv, std::move(followers), GangDriverOptions{});
  std::vector<std::vector<float>> gang_logits;
  const ServingResult got = ServeKeepingLogits(
      driver_kv, requests,
      [&](absl::Span<const SeqInput> b, const kvcache::StepPlan&) { return driver.Forward(b); },
      &gang_logits);
  EXPECT_TRUE(driver.Finish().ok());
  follower.join();
  ASSERT_TRUE(got.complete) << got.status_message;
  EXPECT_TRUE(follower_status.ok()) << follower_status;
  EXPECT_EQ(stats.steps, static_cast<int64_t>(gang_logits.size()));

  ASSERT_EQ(got.requests.size(), expected.requests.size());
  for (size_t i = 0; i < got.requests.size(); ++i) {
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

INSTANTIATE_TEST_SUITE_P(
    Strategies, GangDriverTest,
    ::testing::Values(Strategy{"paged", {{"block_size", "8"}}, 4 << 20},
                      // Tight: sequences are preempted and swapped out and in.
                      Strategy{"paged",
                               {{"block_size", "4"},
                                {"preemption_mode", "swap"},
                                {"swap_space", "1MiB"}},
                               96 << 10},
                      Strategy{"h2o", {{"kv_budget", "0.5"}}, 4 << 20},
                      Strategy{"streaming", {{"kv_budget", "0.5"}}, 4 << 20},
                      Strategy{"infinigen",
                               {{"kv_budget", "0.3"}, {"calibration_tokens", "32"}},
                               4 << 20}),
    [](const ::testing::TestParamInfo<Strategy>& info) {
      return info.param.name + std::to_string(info.index);
    });

TEST(GangDriverFailureTest, AFollowerThatFailsFailsTheDriverWithItsMessage) {
  auto weights = TinyWeights();
  const Strategy paged{"paged", {{"block_size", "8"}}, 4 << 20};
  LocalCommGroup group(2);
  RecordingKvManager driver_kv(Manager(*weights, paged));
  // The follower's replica disagrees: without prefix caching it finds no cached prefix
  // where the driver's does, and the replay stops at that Admit.
  auto replica = Manager(
      *weights, {"paged", {{"block_size", "8"}, {"enable_prefix_caching", "false"}}, 4 << 20});
  auto driver_engine = Engine::Create(weights, Options(&driver_kv, 0, 1, &group));
  auto follower_engine = Engine::Create(weights, Options(replica.get(), 1, 1, &group));
  ASSERT_TRUE(driver_engine.ok() && follower_engine.ok());
  Pipe pipe;
  auto follower_end = std::make_unique<Pipe::End>(&pipe, 1);
  std::vector<std::unique_ptr<GangChannel>> followers;
  followers.push_back(std::make_unique<Pipe::End>(&pipe, 0));
  absl::Status follower_status;
  std::thread follower([&] {
    follower_status = RunGangFollower(*follower_end, *replica, **follower_engine, nullptr);
  });
  GangDriver driver(driver_engine->get(), &driver_kv, std::move(followers), GangDriverOptions{});
  std::vector<std::vector<float>> logits;
  std::vector<RequestSpec> requests = Requests(weights->config);
  for (RequestSpec& r : requests) {  // one shared prompt, arriving one after another
    r.prompt = requests[0].prompt;
    r.prompt.resize(40, 7);
    r.arrival_s = 0.05 * static_cast<double>(r.id);
  }
  const ServingResult got = ServeKeepingLogits(
      driver_kv, requests,
      [&](absl::Span<const SeqInput> b, const kvcache::StepPlan&) { return driver.Forward(b); },
      &logits);
  follower.join();
  EXPECT_FALSE(got.complete);
  EXPECT_NE(got.status_message.find("follower process 1 (rank 1)"), std::string::npos)
      << got.status_message;
  EXPECT_NE(got.status_message.find("diverged"), std::string::npos) << got.status_message;
  EXPECT_FALSE(follower_status.ok());
  // The driver refuses further steps.
  std::vector<int32_t> t = {1};
  std::vector<SeqInput> batch = {{99, t, 0, false}};
  EXPECT_TRUE(absl::IsFailedPrecondition(driver.Forward(batch).status()));
}

TEST(GangFollowerTest, ExitsWithAMessageWhenTheDriverGoesAway) {
  auto weights = TinyWeights();
  const Strategy paged{"paged", {{"block_size", "8"}}, 4 << 20};
  LocalCommGroup group(2);
  auto replica = Manager(*weights, paged);
  auto follower_engine = Engine::Create(weights, Options(replica.get(), 1, 1, &group));
  ASSERT_TRUE(follower_engine.ok());
  Pipe pipe;
  auto follower_end = std::make_unique<Pipe::End>(&pipe, 1);
  {
    Pipe::End driver_end(&pipe, 0);
    ASSERT_TRUE(driver_end.Send(EncodeRelease(3)).ok());
  }  // the driver's end closes
  GangFollowerStats stats;
  const absl::Status s = RunGangFollower(*follower_end, *replica, **follower_engine, &stats);
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_NE(s.message().find("driver"), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find("went away"), absl::string_view::npos) << s;
}

}  // namespace
}  // namespace kvscope::engine

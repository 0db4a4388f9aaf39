// How the serving loop replays workload shapes: closed loop, multi-turn conversations,
// shared prefixes (with the paged cache's prefix caching).
#include <algorithm>
#include <memory>
#include <vector>

#include "engine/engine.h"
#include "engine/model.h"
#include "engine/serving.h"
#include "engine/weights.h"
#include "engine/workload.h"
#include "gtest/gtest.h"
#include "kvcache/registry.h"
#include "tests/test_util.h"

namespace kvscope::engine {
namespace {

struct Rig {
  std::shared_ptr<const ModelWeights> weights;
  std::unique_ptr<kvcache::KvManager> kv;
  std::unique_ptr<Engine> engine;
};

Rig MakeRig(const std::string& dir) {
  Rig rig;
  auto w = LoadModelWeights(dir);
  EXPECT_TRUE(w.ok()) << w.status();
  rig.weights = std::make_shared<ModelWeights>(std::move(*w));
  kvcache::KvManagerContext context{KvGeometryFor(rig.weights->config, 1), 8 << 20, 512};
  rig.kv = std::move(*kvcache::CreateKvManager("paged", {}, context));
  EngineOptions options;
  kvcache::KvManager* kv = rig.kv.get();
  options.kv_factory = [kv](const kvcache::KvShape&, int rank) { return kv->CreateRankCache(rank); };
  rig.engine = std::move(*Engine::Create(rig.weights, options));
  return rig;
}

WorkloadSpec Spec(SourceKind source) {
  WorkloadSpec spec;
  spec.seed = 5;
  spec.num_requests = 9;
  spec.source = source;
  spec.vocab_size = 2048;
  spec.max_model_len = 512;
  spec.input_len.mean = 20;
  spec.output_len.mean = 6;
  return spec;
}

ServingOptions Options(const WorkloadSpec& spec) {
  ServingOptions options;
  options.scheduler.max_model_len = 512;
  options.arrival = spec.arrival;
  options.concurrency = spec.concurrency;
  // Virtual time: sleeping advances a fake clock, so think times cost nothing.
  return options;
}

TEST(WorkloadReplayTest, ClosedLoopKeepsConcurrencyInFlight) {
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  Rig rig = MakeRig(dir);
  WorkloadSpec spec = Spec(SourceKind::kRandom);
  spec.arrival = ArrivalKind::kClosedLoop;
  spec.concurrency = 3;
  auto requests = BuildWorkload(spec, nullptr);
  ASSERT_TRUE(requests.ok()) << requests.status();
  const ServingResult r = RunServing(*rig.engine, *rig.kv, *requests, Options(spec));
  ASSERT_TRUE(r.complete) << r.status_message;
  int32_t most = 0;
  for (const StepRecord& s : r.steps) most = std::max(most, s.running + s.waiting);
  EXPECT_EQ(most, 3);
  // Each request after the first three arrives when an earlier one finishes.
  std::vector<double> finishes;
  for (const RequestRecord& rec : r.requests) finishes.push_back(rec.finish_s);
  std::sort(finishes.begin(), finishes.end());
  for (size_t i = 3; i < r.requests.size(); ++i) {
    EXPECT_TRUE(std::find(finishes.begin(), finishes.end(), r.requests[i].arrival_s) !=
                finishes.end())
        << "request " << i;
  }
}

TEST(WorkloadReplayTest, MultiTurnPromptsCarryTheConversationAndHitThePrefixCache) {
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  Rig rig = MakeRig(dir);
  WorkloadSpec spec = Spec(SourceKind::kMultiTurn);
  spec.turns = 3;
  spec.think_time_s = 0.01;
  spec.input_len.mean = 40;
  auto requests = BuildWorkload(spec, nullptr);
  ASSERT_TRUE(requests.ok()) << requests.status();
  FakeClock clock;
  ServingOptions options = Options(spec);
  options.clock = &clock;
  options.sleep = [&clock](double s) { clock.AdvanceSeconds(s); };
  const ServingResult r = RunServing(*rig.engine, *rig.kv, *requests, options);
  ASSERT_TRUE(r.complete) << r.status_message;
  int64_t hits = 0;
  for (size_t i = 0; i < requests->size(); ++i) {
    const RequestSpec& spec_i = (*requests)[i];
    const RequestRecord& rec = r.requests[i];
    EXPECT_TRUE(rec.completed);
    if (spec_i.turn == 0) continue;
    // The previous turn of the same conversation is the request before it.
    const RequestRecord& prev = r.requests[i - 1];
    ASSERT_EQ((*requests)[i - 1].conversation_id, spec_i.conversation_id);
    EXPECT_EQ(rec.input_tokens,
              prev.input_tokens + prev.output_tokens + static_cast<int64_t>(spec_i.prompt.size()));
    EXPECT_GE(rec.arrival_s, prev.finish_s);
    hits += rec.prefix_hit_tokens;
  }
  EXPECT_GT(hits, 0);
  const Summary summary = Summarize(r.requests, r.steps, 0, {});
  EXPECT_GT(summary.prefix_cache_hit_rate, 0.0);
}

TEST(WorkloadReplayTest, SharedPrefixGroupsReuseCachedBlocks) {
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  Rig rig = MakeRig(dir);
  WorkloadSpec spec = Spec(SourceKind::kSharedPrefix);
  spec.num_prefix_groups = 2;
  spec.shared_prefix_len = 64;
  spec.arrival = ArrivalKind::kConstant;
  spec.request_rate = 1000;
  auto requests = BuildWorkload(spec, nullptr);
  ASSERT_TRUE(requests.ok()) << requests.status();
  FakeClock clock;
  ServingOptions options = Options(spec);
  options.clock = &clock;
  options.sleep = [&clock](double s) { clock.AdvanceSeconds(s); };
  const ServingResult r = RunServing(*rig.engine, *rig.kv, *requests, options);
  ASSERT_TRUE(r.complete) << r.status_message;
  const Summary summary = Summarize(r.requests, r.steps, 1000, {});
  // Every request after the first of its group finds the 64-token prefix (4 blocks).
  EXPECT_GE(rig.kv->Counters().prefix_hit_tokens, (9 - 2) * 64);
  EXPECT_GT(summary.prefix_cache_hit_rate, 0.5);
}

}  // namespace
}  // namespace kvscope::engine

// The serving loop end to end on the real TinyStories model: continuous batching, paged
// vs contiguous, preemption by recompute and by swap, prefix caching, rejection.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/model.h"
#include "engine/scheduler.h"
#include "engine/serving.h"
#include "engine/weights.h"
#include "gtest/gtest.h"
#include "kvcache/registry.h"
#include "tests/test_util.h"

namespace kvscope::engine {
namespace {

struct ServingRig {
  std::shared_ptr<const ModelWeights> weights;
  std::unique_ptr<kvcache::KvManager> kv;
  std::unique_ptr<Engine> engine;
};

ServingRig Make(const std::string& dir, const std::string& strategy,
           std::map<std::string, std::string> params, int64_t kv_bytes, int tp = 1) {
  ServingRig s;
  auto w = LoadModelWeights(dir);
  EXPECT_TRUE(w.ok()) << w.status();
  s.weights = std::make_shared<ModelWeights>(std::move(*w));
  kvcache::KvManagerContext context{KvGeometryFor(s.weights->config, tp), kv_bytes,
                                    s.weights->config.max_position_embeddings};
  auto kv = kvcache::CreateKvManager(strategy, params, context);
  EXPECT_TRUE(kv.ok()) << kv.status();
  s.kv = std::move(*kv);
  EngineOptions options;
  options.tp_size = tp;
  kvcache::KvManager* manager = s.kv.get();
  options.kv_factory = [manager](const kvcache::KvShape&, int rank) {
    return manager->CreateRankCache(rank);
  };
  auto engine = Engine::Create(s.weights, options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  s.engine = std::move(*engine);
  return s;
}

// Requests with prompts of different lengths drawn from the model's vocabulary.
std::vector<RequestSpec> Requests(int n, int output_len) {
  std::vector<RequestSpec> out;
  for (int i = 0; i < n; ++i) {
    RequestSpec r;
    r.id = i;
    const int len = 5 + (i * 37) % 60;
    for (int t = 0; t < len; ++t) r.prompt.push_back(3 + (i * 131 + t * 17) % 2000);
    r.output_len = output_len + i % 5;
    out.push_back(r);
  }
  return out;
}

ServingResult Serve(ServingRig& s, const std::vector<RequestSpec>& requests, SchedulerOptions options = {}) {
  ServingOptions serving;
  serving.scheduler = options;
  serving.scheduler.max_model_len = s.weights->config.max_position_embeddings;
  return RunServing(*s.engine, *s.kv, requests, serving);
}

std::vector<std::vector<int32_t>> Outputs(const ServingResult& r) {
  std::vector<std::vector<int32_t>> out;
  for (const RequestRecord& rec : r.requests) out.push_back(rec.output_ids);
  return out;
}

TEST(ServingTest, ContinuousBatchingGivesEachRequestsTokensAlone) {
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  auto requests = Requests(12, 10);
  ServingRig batched = Make(dir, "paged", {}, 8 << 20);
  const ServingResult all = Serve(batched, requests);
  ASSERT_TRUE(all.complete) << all.status_message;
  int64_t max_batch = 0;
  for (const StepRecord& step : all.steps) max_batch = std::max<int64_t>(max_batch, step.batch_size);
  EXPECT_GT(max_batch, 1);
  for (const RequestSpec& r : requests) {
    ServingRig alone = Make(dir, "paged", {}, 8 << 20);
    const ServingResult one = Serve(alone, {r});
    ASSERT_TRUE(one.complete);
    EXPECT_EQ(one.requests[0].output_ids, all.requests[r.id].output_ids) << "request " << r.id;
    EXPECT_EQ(static_cast<int32_t>(one.requests[0].output_ids.size()), r.output_len);
  }
}

TEST(ServingTest, PagedProducesTheTokensOfContiguous) {
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  auto requests = Requests(10, 12);
  ServingRig paged = Make(dir, "paged", {}, 8 << 20);
  ServingRig contiguous = Make(dir, "contiguous", {}, 8 << 20);
  const ServingResult a = Serve(paged, requests);
  const ServingResult b = Serve(contiguous, requests);
  ASSERT_TRUE(a.complete && b.complete);
  EXPECT_EQ(Outputs(a), Outputs(b));
  // Contiguous reserves the whole context per sequence; paged only what it uses.
  EXPECT_GT(Summarize(b.requests, b.steps, 0, {}).kv_waste_fraction,
            Summarize(a.requests, a.steps, 0, {}).kv_waste_fraction);
}

class PreemptionTest : public ::testing::TestWithParam<std::string> {};

TEST_P(PreemptionTest, TightBudgetPreemptsAndKeepsGreedyTokens) {
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  auto requests = Requests(16, 40);
  ServingRig roomy = Make(dir, "paged", {}, 16 << 20);
  const ServingResult reference = Serve(roomy, requests);
  ASSERT_TRUE(reference.complete);
  // About 8 blocks of 16 tokens per layer... enough for a few sequences at a time.
  const int64_t bytes_per_token = KvGeometryFor(roomy.weights->config, 1).BytesPerToken();
  std::map<std::string, std::string> params = {{"preemption_mode", GetParam()},
                                               {"enable_prefix_caching", "false"}};
  if (GetParam() == "swap") params["swap_space"] = std::to_string(64 * 16 * bytes_per_token);
  ServingRig tight = Make(dir, "paged", params, 12 * 16 * bytes_per_token);
  const ServingResult constrained = Serve(tight, requests);
  ASSERT_TRUE(constrained.complete) << constrained.status_message;
  const Summary summary = Summarize(constrained.requests, constrained.steps, 0, {});
  EXPECT_GT(summary.preemptions, 0);
  EXPECT_EQ(summary.completed, 16);
  EXPECT_EQ(Outputs(constrained), Outputs(reference));
  if (GetParam() == "swap") {
    EXPECT_GT(summary.peak_swapped_bytes, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, PreemptionTest, ::testing::Values("recompute", "swap"));

TEST(ServingTest, SharedPrefixIsComputedOnceWithIdenticalLogits) {
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  ServingRig cached = Make(dir, "paged", {}, 8 << 20);
  ServingRig cold = Make(dir, "paged", {{"enable_prefix_caching", "false"}}, 8 << 20);
  std::vector<int32_t> prefix;
  for (int t = 0; t < 40; ++t) prefix.push_back(3 + (t * 29) % 2000);
  std::vector<int32_t> first = prefix, second = prefix;
  first.insert(first.end(), {11, 12, 13});
  second.insert(second.end(), {21, 22, 23, 24, 25});

  auto run = [](ServingRig& s, int64_t id, const std::vector<int32_t>& prompt, int32_t* cached_tokens) {
    SchedulerOptions options;
    options.max_model_len = 512;
    Scheduler scheduler(options, *s.kv);
    scheduler.Add({id, prompt, 1, {}});
    auto out = scheduler.Schedule();
    EXPECT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->seqs.size(), 1u);
    *cached_tokens = static_cast<int32_t>(out->prefix_hit_tokens);
    // Only the uncached tokens are computed.
    EXPECT_EQ(out->seqs[0].tokens.size(), prompt.size() - out->prefix_hit_tokens);
    auto fwd = s.engine->Forward(out->Batch());
    EXPECT_TRUE(fwd.ok()) << fwd.status();
    std::vector<float> logits(fwd->Row(0), fwd->Row(0) + fwd->vocab_size);
    int32_t token = 0;
    scheduler.Update(*out, absl::MakeConstSpan(&token, 1));
    return logits;
  };
  int32_t hit = -1;
  run(cached, 1, first, &hit);
  EXPECT_EQ(hit, 0);
  const std::vector<float> warm = run(cached, 2, second, &hit);
  EXPECT_EQ(hit, 32);  // two full blocks of 16 of the 40-token prefix
  int32_t cold_hit = -1;
  const std::vector<float> reference = run(cold, 3, second, &cold_hit);
  EXPECT_EQ(cold_hit, 0);
  double worst = 0;
  for (size_t i = 0; i < warm.size(); ++i) worst = std::max<double>(worst, std::fabs(warm[i] - reference[i]));
  EXPECT_LE(worst, 1e-5);
  EXPECT_GT(cached.kv->Counters().prefix_hit_tokens, 0);
}

TEST(ServingTest, RequestThatCanNeverFitIsRejectedWithItsReason) {
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  const int64_t bytes_per_token =
      KvGeometryFor(*LoadModelConfig(dir), 1).BytesPerToken();
  ServingRig s = Make(dir, "paged", {}, 4 * 16 * bytes_per_token);  // 64 tokens
  std::vector<RequestSpec> requests = Requests(3, 4);
  requests[1].prompt.assign(100, 7);  // 100 + 5 tokens > 64
  const ServingResult r = Serve(s, requests);
  ASSERT_TRUE(r.complete) << r.status_message;
  EXPECT_TRUE(r.requests[0].completed);
  EXPECT_FALSE(r.requests[1].completed);
  EXPECT_NE(r.requests[1].error.find("pool holds only 64"), std::string::npos) << r.requests[1].error;
  EXPECT_TRUE(r.requests[2].completed);
}

TEST(ServingTest, StopFlagEndsTheRunAndKeepsWhatWasMeasured) {
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  ServingRig s = Make(dir, "paged", {}, 8 << 20);
  std::atomic<bool> stop{false};
  ServingOptions serving;
  serving.scheduler.max_model_len = 512;
  serving.scheduler.max_num_seqs = 2;
  serving.stop = &stop;
  int steps = 0;
  serving.on_progress = [&](const ServingProgress&) {
    if (++steps == 5) stop.store(true);
  };
  const ServingResult r = RunServing(*s.engine, *s.kv, Requests(8, 20), serving);
  EXPECT_FALSE(r.complete);
  EXPECT_EQ(r.steps.size(), 5u);
  for (const RequestRecord& rec : r.requests) {
    EXPECT_FALSE(rec.completed);
    EXPECT_FALSE(rec.error.empty());
  }
  // The first request was generating when the run stopped: its tokens are kept.
  EXPECT_FALSE(r.requests[0].output_ids.empty());
  EXPECT_EQ(r.requests[0].output_ids.size(), r.requests[0].token_times_s.size());
}

}  // namespace
}  // namespace kvscope::engine

// MeasureBenchQuality / ApplyQualityToSummary: the `kvscope bench` side of engine/quality.h.
#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <memory>
#include <vector>

#include "engine/gang_engine.h"
#include "engine/model.h"
#include "engine/presets.h"
#include "engine/quality.h"
#include "engine/weights.h"
#include "kvcache/infinigen_kv_manager.h"
#include "gtest/gtest.h"
#include "tests/quality/quality_test_util.h"

namespace kvscope::engine {
namespace {

std::shared_ptr<const ModelWeights> Tiny() {
  auto config = PresetConfig("llama-tiny");
  EXPECT_TRUE(config.ok());
  auto weights = SyntheticWeights(*config, 1);
  EXPECT_TRUE(weights.ok());
  return std::make_shared<ModelWeights>(std::move(*weights));
}

kvcache::KvManagerContext Context(const ModelConfig& c) {
  return {KvGeometryFor(c, 1), 16LL << 20, 256};
}

// n single-turn requests (prompts of 12 + i tokens, 6 output tokens), finished.
void SingleTurn(int n, std::vector<RequestSpec>* workload, std::vector<RequestRecord>* records) {
  testing::SingleTurnRun(n, 12, 1, 6, 2048, workload, records);
}

TEST(BenchQualityTest, DefaultRateFollowsLossiness) {
  auto w = Tiny();
  std::vector<RequestSpec> workload;
  std::vector<RequestRecord> records;
  SingleTurn(3, &workload, &records);
  auto report = MeasureBenchQuality(w, "paged", {}, Context(w->config), workload, {}, &records);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->sample_rate, 0.0);
  EXPECT_EQ(report->sampled, 0);
  for (const RequestRecord& r : records) EXPECT_FALSE(r.quality_mean_kl.has_value());
  Summary summary;
  ApplyQualityToSummary(records, *report, &summary);
  EXPECT_FALSE(summary.quality_mean_kl.has_value());
  EXPECT_FALSE(summary.quality_perplexity.has_value());
}

TEST(BenchQualityTest, EveryRequestAtRateOneAndPerplexity) {
  auto w = Tiny();
  std::vector<RequestSpec> workload;
  std::vector<RequestRecord> records;
  SingleTurn(3, &workload, &records);
  records[2].input_tokens = 0;  // never started: no value
  BenchQualityOptions options;
  options.sample_rate = 1.0;
  options.steps = 4;
  for (int i = 0; i < 30; ++i) options.perplexity_ids.push_back((i * 5 + 3) % 2048);
  auto report =
      MeasureBenchQuality(w, "paged", {}, Context(w->config), workload, options, &records);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->sampled, 2);
  EXPECT_EQ(report->measured, 2);
  EXPECT_TRUE(report->warnings.empty());
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(records[i].quality_mean_kl.has_value());
    EXPECT_LT(*records[i].quality_mean_kl, 1e-6);
    EXPECT_EQ(*records[i].quality_top1_agreement, 1.0);
  }
  EXPECT_FALSE(records[2].quality_mean_kl.has_value());
  ASSERT_TRUE(report->perplexity.has_value());
  ASSERT_TRUE(report->perplexity_full.has_value());
  EXPECT_NEAR(*report->perplexity, *report->perplexity_full, 1e-6 * *report->perplexity_full);
  Summary summary;
  ApplyQualityToSummary(records, *report, &summary);
  ASSERT_TRUE(summary.quality_top1_agreement.has_value());
  EXPECT_EQ(*summary.quality_top1_agreement, 1.0);
  ASSERT_TRUE(summary.quality_perplexity_full.has_value());
  const nlohmann::json j = SummaryToJson(summary);
  EXPECT_TRUE(j["quality_perplexity"].is_number());
  EXPECT_TRUE(j["quality_perplexity_full"].is_number());
}

// The run's pool (here 40 tokens) need not hold the perplexity text: replays get a pool of
// one full-context sequence, and h2o's kv_budget counts prompt + generated tokens, so a
// one-token first prefill still has a budget.
TEST(BenchQualityTest, PerplexityOfLongTextUnderSmallRunPoolAndRatioBudget) {
  auto w = Tiny();
  std::vector<RequestSpec> workload;
  std::vector<RequestRecord> records;
  SingleTurn(1, &workload, &records);
  BenchQualityOptions options;
  options.sample_rate = 1.0;
  options.steps = 4;
  for (int i = 0; i < 120; ++i) options.perplexity_ids.push_back((i * 37 + 11) % 2048);
  kvcache::KvManagerContext ctx = Context(w->config);
  ctx.kv_memory_bytes = ctx.geometry.BytesPerToken() * 40;
  auto report = MeasureBenchQuality(w, "h2o", {{"kv_budget", "0.5"}}, ctx, workload, options,
                                    &records);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->perplexity_error, "");
  ASSERT_TRUE(report->perplexity.has_value());
  ASSERT_TRUE(report->perplexity_full.has_value());
  // 60 of 120 tokens kept: the strategy's perplexity differs from the full cache's.
  EXPECT_NE(*report->perplexity, *report->perplexity_full);
  EXPECT_EQ(report->measured, 1);
}

// An engine that forwards to another and counts the plans it was asked to mirror.
class CountingEngine final : public GangEngine {
 public:
  CountingEngine(std::unique_ptr<GangEngine> inner, int* plans) : inner_(std::move(inner)), plans_(plans) {}
  const ModelConfig& config() const override { return inner_->config(); }
  int first_rank() const override { return inner_->first_rank(); }
  int local_ranks() const override { return inner_->local_ranks(); }
  absl::Status ApplyPlan(const kvcache::StepPlan& plan) override {
    ++*plans_;
    return inner_->ApplyPlan(plan);
  }
  absl::StatusOr<ForwardOutput> Forward(absl::Span<const SeqInput> batch) override {
    return inner_->Forward(batch);
  }
  void Release(int64_t seq_id) override { inner_->Release(seq_id); }
  void AbortCollectives() override { inner_->AbortCollectives(); }

 private:
  std::unique_ptr<GangEngine> inner_;
  int* plans_;
};

// The engines come from the factory (the GPU backend's hook): one full-cache engine for all
// requests, one strategy engine per request, every strategy step's plan mirrored, and the
// same numbers as the default CPU engines.
TEST(BenchQualityTest, EnginesComeFromTheFactory) {
  auto w = Tiny();
  std::vector<RequestSpec> workload;
  std::vector<RequestRecord> want_records, got_records;
  SingleTurn(3, &workload, &want_records);
  got_records = want_records;
  BenchQualityOptions options;
  options.sample_rate = 1.0;
  options.steps = 5;
  for (int i = 0; i < 20; ++i) options.perplexity_ids.push_back((i * 11 + 2) % 2048);
  const std::map<std::string, std::string> params = {{"kv_budget", "0.5"}};
  auto want = MeasureBenchQuality(w, "h2o", params, Context(w->config), workload, options,
                                  &want_records);
  ASSERT_TRUE(want.ok()) << want.status();

  int full_engines = 0, strategy_engines = 0, plans = 0;
  const QualityEngineFactory cpu = CpuQualityEngineFactory(0);
  options.engine_factory = [&](std::shared_ptr<const ModelWeights> weights,
                               kvcache::KvManager* manager,
                               int tp) -> absl::StatusOr<std::unique_ptr<GangEngine>> {
    ++(manager == nullptr ? full_engines : strategy_engines);
    auto inner = cpu(std::move(weights), manager, tp);
    if (!inner.ok()) return inner.status();
    return std::unique_ptr<GangEngine>(new CountingEngine(std::move(*inner), &plans));
  };
  auto got = MeasureBenchQuality(w, "h2o", params, Context(w->config), workload, options,
                                 &got_records);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->measured, 3);
  EXPECT_EQ(full_engines, 1);
  EXPECT_EQ(strategy_engines, 3 + 1);  // each request, then the perplexity text
  // Strategy steps: 5 per request (prompt + 4 forced tokens) and 20 - 1 for the text.
  EXPECT_EQ(plans, 3 * 5 + 19);
  for (size_t i = 0; i < got_records.size(); ++i) {
    ASSERT_TRUE(got_records[i].quality_mean_kl.has_value());
    EXPECT_EQ(*got_records[i].quality_mean_kl, *want_records[i].quality_mean_kl);
    EXPECT_EQ(*got_records[i].quality_top1_agreement, *want_records[i].quality_top1_agreement);
  }
  EXPECT_EQ(got->perplexity, want->perplexity);
  EXPECT_EQ(got->perplexity_full, want->perplexity_full);
}

// infinigen: the skew is calibrated for the first request's engine and handed to every later
// manager before its engine is built; the numbers equal a fresh calibration per request.
TEST(BenchQualityTest, InfinigenCalibratesOnce) {
  auto w = Tiny();
  std::vector<RequestSpec> workload;
  std::vector<RequestRecord> records;
  SingleTurn(3, &workload, &records);
  const std::map<std::string, std::string> params = {{"dense_layers", "1"}};
  BenchQualityOptions options;
  options.sample_rate = 1.0;
  options.steps = 4;
  const QualityEngineFactory cpu = CpuQualityEngineFactory(0);
  std::vector<const kvcache::InfinigenSkew*> preset;  // the skew each manager came with
  const kvcache::InfinigenSkew* first = nullptr;
  options.engine_factory = [&](std::shared_ptr<const ModelWeights> weights,
                               kvcache::KvManager* manager,
                               int tp) -> absl::StatusOr<std::unique_ptr<GangEngine>> {
    auto* ig = dynamic_cast<kvcache::InfinigenKvManager*>(manager);
    if (ig != nullptr) preset.push_back(ig->skew());
    auto engine = cpu(std::move(weights), manager, tp);
    if (ig != nullptr && first == nullptr) first = ig->skew();
    return engine;
  };
  auto report = MeasureBenchQuality(w, "infinigen", params, Context(w->config), workload,
                                    options, &records);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->measured, 3);
  ASSERT_EQ(preset.size(), 3u);
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(preset[0], nullptr);  // calibrated by the first engine
  EXPECT_EQ(preset[1], first);
  EXPECT_EQ(preset[2], first);
  for (size_t i = 0; i < workload.size(); ++i) {
    kvcache::KvManagerContext ctx = Context(w->config);
    ctx.kv_memory_bytes = std::max<int64_t>(
        ctx.kv_memory_bytes, ctx.geometry.BytesPerToken() * (ctx.max_model_len + 64));
    auto fresh = EvaluateTeacherForced(w, "infinigen", params, ctx, workload[i].prompt, 4);
    ASSERT_TRUE(fresh.ok()) << fresh.status();
    ASSERT_TRUE(records[i].quality_mean_kl.has_value());
    EXPECT_EQ(*records[i].quality_mean_kl, fresh->mean_kl);
    EXPECT_EQ(*records[i].quality_top1_agreement, fresh->top1_agreement);
  }
}

// host_kv_storage false (for engines that keep the K/V themselves) reaches the managers: a
// CPU engine over such caches cannot run, and every request says so instead of failing the
// run.
TEST(BenchQualityTest, FactoryManagersFollowHostKvStorage) {
  auto w = Tiny();
  std::vector<RequestSpec> workload;
  std::vector<RequestRecord> records;
  SingleTurn(2, &workload, &records);
  BenchQualityOptions options;
  options.sample_rate = 1.0;
  options.steps = 3;
  options.engine_factory = CpuQualityEngineFactory(0);
  options.host_kv_storage = true;
  auto ok = MeasureBenchQuality(w, "paged", {}, Context(w->config), workload, options, &records);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->measured, 2);
  options.host_kv_storage = false;
  std::vector<RequestRecord> again;
  SingleTurn(2, &workload, &again);
  workload.resize(2);
  auto refused =
      MeasureBenchQuality(w, "paged", {}, Context(w->config), workload, options, &again);
  ASSERT_TRUE(refused.ok()) << refused.status();
  EXPECT_EQ(refused->sampled, 2);
  EXPECT_EQ(refused->measured, 0);
  EXPECT_EQ(refused->warnings.size(), 2u);
}

// A factory that cannot build the full-cache engine: a warning per sampled request, the run's
// records untouched, no error.
TEST(BenchQualityTest, FullEngineFailureIsAWarningPerRequest) {
  auto w = Tiny();
  std::vector<RequestSpec> workload;
  std::vector<RequestRecord> records;
  SingleTurn(2, &workload, &records);
  BenchQualityOptions options;
  options.sample_rate = 1.0;
  options.steps = 3;
  int calls = 0;
  options.engine_factory = [&](std::shared_ptr<const ModelWeights>, kvcache::KvManager*,
                               int) -> absl::StatusOr<std::unique_ptr<GangEngine>> {
    ++calls;
    return absl::ResourceExhaustedError("no device memory left");
  };
  auto report =
      MeasureBenchQuality(w, "h2o", {{"kv_budget", "0.5"}}, Context(w->config), workload,
                          options, &records);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->measured, 0);
  ASSERT_EQ(report->warnings.size(), 2u);
  EXPECT_NE(report->warnings[0].find("no device memory left"), std::string::npos);
  EXPECT_EQ(calls, 1);  // not retried per request
  for (const RequestRecord& r : records) EXPECT_FALSE(r.quality_mean_kl.has_value());
}

TEST(BenchQualityTest, SeededSampleIsReproducible) {
  auto w = Tiny();
  std::vector<RequestSpec> workload;
  std::vector<RequestRecord> base;
  SingleTurn(16, &workload, &base);
  for (auto& r : workload) r.prompt.resize(4);
  for (auto& r : base) r.input_tokens = 4;
  BenchQualityOptions options;
  options.sample_rate = 0.5;
  options.steps = 1;
  options.seed = 42;
  auto run = [&](uint64_t seed) {
    std::vector<RequestRecord> records = base;
    BenchQualityOptions o = options;
    o.seed = seed;
    auto report = MeasureBenchQuality(w, "paged", {}, Context(w->config), workload, o, &records);
    EXPECT_TRUE(report.ok()) << report.status();
    std::vector<bool> chosen;
    for (const auto& r : records) chosen.push_back(r.quality_mean_kl.has_value());
    return chosen;
  };
  const std::vector<bool> a = run(42), b = run(42), c = run(43);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);  // 16 draws: another seed picks another subset (fixed by the generator)
  int picked = 0;
  for (bool x : a) picked += x;
  EXPECT_GT(picked, 0);
  EXPECT_LT(picked, 16);
}

TEST(BenchQualityTest, MultiTurnPromptsAreRebuilt) {
  auto w = Tiny();
  std::vector<RequestSpec> workload(2);
  std::vector<RequestRecord> records(2);
  workload[0].prompt = {5, 6, 7};
  workload[0].output_len = 3;
  workload[0].conversation_id = 0;
  workload[1].prompt = {8, 9};
  workload[1].output_len = 3;
  workload[1].conversation_id = 0;
  workload[1].turn = 1;
  records[0].input_tokens = 3;
  records[0].output_ids = {10, 11, 12};
  records[1].input_tokens = 8;  // 3 + 3 + 2
  BenchQualityOptions options;
  options.sample_rate = 1;
  auto report = MeasureBenchQuality(w, "paged", {}, Context(w->config), workload, options, &records);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->measured, 2);
  // A record whose size disagrees with the rebuilt prompt is skipped with a warning.
  records[1].quality_mean_kl.reset();
  records[1].input_tokens = 7;
  report = MeasureBenchQuality(w, "paged", {}, Context(w->config), workload, options, &records);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->warnings.size(), 1u);
  EXPECT_FALSE(records[1].quality_mean_kl.has_value());
}

TEST(BenchQualityTest, RejectsBadOptions) {
  BenchQualityOptions o;
  o.sample_rate = 1.5;
  EXPECT_FALSE(ValidateBenchQualityOptions(o).ok());
  o.sample_rate = 0.5;
  o.steps = -1;
  EXPECT_FALSE(ValidateBenchQualityOptions(o).ok());
  o.steps = 0;
  EXPECT_TRUE(ValidateBenchQualityOptions(o).ok());
}

}  // namespace
}  // namespace kvscope::engine

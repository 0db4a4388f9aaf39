// The quality checks of a `backend: cuda` bench on the GPU (GpuQualityEngineFactory,
// engine/cuda/gpu_engine.h) against the same checks on the CPU engine (engine/quality.h):
// float32 engines, so that the teacher-forced KL and top-1 agreement of h2o, streaming and
// infinigen and the perplexities agree closely; and the full-cache engine staying alive next
// to each strategy engine within its bounded device pool.
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/cuda/gpu_engine.h"
#include "engine/quality.h"
#include "gtest/gtest.h"
#include "tests/gpu_engine/gpu_engine_test_util.h"
#include "tests/gpu_kernels/gpu_test_util.h"
#include "tests/quality/quality_test_util.h"

namespace kvscope::engine::cuda {
namespace {

using ::kvscope::testing::PresetWeights;

TEST(GpuQualityTest, StrategiesMeasureAsOnTheCpu) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  auto w = PresetWeights("llama-tiny");
  ASSERT_NE(w, nullptr);
  const kvcache::KvManagerContext ctx{KvGeometryFor(w->config, 1), 16LL << 20, 256};
  const std::vector<std::pair<std::string, std::map<std::string, std::string>>> strategies = {
      {"h2o", {{"kv_budget", "0.5"}}},
      {"streaming", {{"kv_budget", "0.5"}}},
      {"infinigen", {{"dense_layers", "1"}}}};
  GpuEngineOptions base;
  base.shard.dtype = DType::kF32;
  base.shard.max_tokens_per_step = 256;
  for (const auto& [strategy, params] : strategies) {
    SCOPED_TRACE(strategy);
    std::vector<RequestSpec> workload;
    std::vector<RequestRecord> cpu_records, gpu_records;
    ::kvscope::testing::SingleTurnRun(3, 30, 5, 12, 500, &workload, &cpu_records);
    gpu_records = cpu_records;
    BenchQualityOptions options;
    options.sample_rate = 1.0;
    options.steps = 8;
    for (int i = 0; i < 40; ++i) options.perplexity_ids.push_back((i * 37 + 11) % 500);
    auto cpu = MeasureBenchQuality(w, strategy, params, ctx, workload, options, &cpu_records);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    options.engine_factory = GpuQualityEngineFactory(base, ctx.max_model_len + 64);
    options.host_kv_storage = false;
    auto gpu = MeasureBenchQuality(w, strategy, params, ctx, workload, options, &gpu_records);
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    EXPECT_TRUE(gpu->warnings.empty()) << gpu->warnings.front();
    EXPECT_EQ(gpu->measured, 3);
    for (size_t i = 0; i < workload.size(); ++i) {
      ASSERT_TRUE(gpu_records[i].quality_mean_kl.has_value());
      ASSERT_TRUE(cpu_records[i].quality_mean_kl.has_value());
      EXPECT_NEAR(*gpu_records[i].quality_mean_kl, *cpu_records[i].quality_mean_kl,
                  1e-4 + 1e-3 * *cpu_records[i].quality_mean_kl);
      EXPECT_EQ(*gpu_records[i].quality_top1_agreement, *cpu_records[i].quality_top1_agreement);
    }
    ASSERT_TRUE(gpu->perplexity.has_value()) << gpu->perplexity_error;
    ASSERT_TRUE(gpu->perplexity_full.has_value());
    EXPECT_NEAR(*gpu->perplexity, *cpu->perplexity, 1e-4 * *cpu->perplexity);
    EXPECT_NEAR(*gpu->perplexity_full, *cpu->perplexity_full, 1e-4 * *cpu->perplexity_full);
  }
}

// The full-cache engine gets a device pool of full_cache_tokens (not all free memory), so
// that the strategy's engine can be built next to it.
TEST(GpuQualityTest, FullCacheEngineIsBounded) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  auto w = PresetWeights("llama-tiny");
  ASSERT_NE(w, nullptr);
  GpuEngineOptions base;
  base.shard.dtype = DType::kF32;
  const QualityEngineFactory make = GpuQualityEngineFactory(base, 300);
  auto full = make(w, nullptr, 1);
  ASSERT_TRUE(full.ok()) << full.status();
  auto* gpu = dynamic_cast<GpuEngine*>(full->get());
  ASSERT_NE(gpu, nullptr);
  EXPECT_EQ(gpu->shard(0).memory().num_kv_blocks, (300 + 15) / 16 + 1);
  EXPECT_FALSE(gpu->shard(0).memory().plan.has_value());
}

}  // namespace
}  // namespace kvscope::engine::cuda

// Host-side cost of one continuous-batching step with 256 running sequences decoding:
// Scheduler::Schedule (which calls the KV manager's Append and Plan) plus Scheduler::Update.
// No model runs; the sampled token is fixed. Google Benchmark, median of repetitions.
//
//   build/bench/scheduler_bench --benchmark_repetitions=5
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "engine/scheduler.h"
#include "kvcache/registry.h"

namespace kvscope::engine {
namespace {

void BM_ScheduleDecodeStep(benchmark::State& state, const std::string& strategy,
                           std::map<std::string, std::string> params) {
  constexpr int kSeqs = 256;
  constexpr int kPrompt = 512;
  kvcache::KvGeometry g;  // Llama-2-7B-like per-token KV, float32
  g.num_layers = 32;
  g.kv_heads_per_rank = 32;
  g.head_dim = 128;
  g.num_heads_per_rank = 32;
  const int64_t tokens = static_cast<int64_t>(kSeqs) * (kPrompt + 4096);
  kvcache::KvManagerContext context{g, tokens * g.BytesPerToken(), 8192};
  auto kv = kvcache::CreateKvManager(strategy, params, context);
  if (!kv.ok()) {
    state.SkipWithError(std::string(kv.status().message()).c_str());
    return;
  }
  SchedulerOptions options;
  options.max_num_seqs = kSeqs;
  options.max_num_batched_tokens = kSeqs * kPrompt;
  options.max_model_len = 8192;
  Scheduler scheduler(options, **kv);
  for (int i = 0; i < kSeqs; ++i) {
    std::vector<int32_t> prompt(kPrompt);
    for (int t = 0; t < kPrompt; ++t) prompt[t] = 3 + (i * 7919 + t * 31) % 30000;
    scheduler.Add({i, prompt, 4000, {}});
  }
  // Prefill everyone (not timed).
  auto first = scheduler.Schedule();
  std::vector<int32_t> sampled(kSeqs, 5);
  scheduler.Update(*first, sampled);
  for (auto _ : state) {
    auto out = scheduler.Schedule();
    if (!out.ok() || out->seqs.size() != kSeqs) {
      state.SkipWithError("schedule failed");
      break;
    }
    benchmark::DoNotOptimize(scheduler.Update(*out, sampled));
  }
  state.counters["seqs"] = kSeqs;
}

BENCHMARK_CAPTURE(BM_ScheduleDecodeStep, paged, "paged", {})
    ->Iterations(2000)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_ScheduleDecodeStep, paged_no_prefix_cache, "paged",
                  {{"enable_prefix_caching", "false"}})
    ->Iterations(2000)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_ScheduleDecodeStep, contiguous, "contiguous", {{"reserve", "prompt_plus_output"}})
    ->Iterations(2000)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace kvscope::engine

BENCHMARK_MAIN();

// Host cost of the KV managers' per-step bookkeeping (Google Benchmark).
//
//   build/bench/kv_manager_bench [--benchmark_filter=...]
//
// One decode step = Append(one token) for each of 256 running sequences, then Plan over
// all of them (new-token slots and every sequence's view), which is what the scheduler does
// before each forward pass. Sequences start from 512-token prompts; a run is 2000 steps
// (contexts grow to 2512 tokens), repeated, median reported. Only bookkeeping is measured:
// no rank cache and no KV memory is involved. Geometry: a 7B-class model per rank (32
// layers, 32 KV heads of 128, fp16), so the pool has tens of thousands of blocks.
// Goal: < 100 us per step.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "kvcache/registry.h"

namespace kvscope::kvcache {
namespace {

constexpr int kSeqs = 256;
constexpr int kPrompt = 512;
constexpr int kSteps = 2000;

KvManagerContext Context() {
  KvManagerContext context;
  context.geometry.num_layers = 32;
  context.geometry.kv_heads_per_rank = 32;
  context.geometry.head_dim = 128;
  context.geometry.bytes_per_element = 2;
  context.geometry.num_heads_per_rank = 32;
  context.max_model_len = kPrompt + kSteps + 16;
  context.kv_memory_bytes =
      static_cast<int64_t>(kSeqs + 1) * (kPrompt + kSteps + 16) * context.geometry.BytesPerToken();
  return context;
}

void DecodeSteps(benchmark::State& state, const std::string& strategy,
                 const std::map<std::string, std::string>& params) {
  auto created = CreateKvManager(strategy, params, Context());
  if (!created.ok()) {
    state.SkipWithError(std::string(created.status().message()).c_str());
    return;
  }
  KvManager& m = **created;
  std::vector<SeqStep> steps(kSeqs);
  for (int i = 0; i < kSeqs; ++i) {
    std::vector<int32_t> prompt(kPrompt);
    for (int t = 0; t < kPrompt; ++t) prompt[t] = (i * 7919 + t * 104729) % 32000;
    auto cached = m.Admit(SeqRequest{i, prompt, kSteps});
    if (!cached.ok() || !m.Append(i, absl::MakeConstSpan(prompt).subspan(*cached))) {
      state.SkipWithError("admission failed");
      return;
    }
    steps[i] = SeqStep{i, kPrompt - *cached, *cached};
  }
  if (!m.Plan(steps).ok()) {
    state.SkipWithError("prefill plan failed");
    return;
  }
  int32_t token = 1;
  for (auto _ : state) {
    for (int i = 0; i < kSeqs; ++i) {
      token = (token * 48271) % 32000;
      if (!m.Append(i, absl::MakeConstSpan(&token, 1))) {
        state.SkipWithError("append failed");
        return;
      }
      steps[i] = SeqStep{i, 1, m.NumTokens(i) - 1};
    }
    auto plan = m.Plan(steps);
    benchmark::DoNotOptimize(plan);
  }
  state.counters["seqs"] = kSeqs;
  state.counters["tokens_per_s"] =
      benchmark::Counter(static_cast<double>(kSeqs), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_PagedDecodeStep(benchmark::State& state) {
  DecodeSteps(state, "paged", {{"enable_prefix_caching", state.range(0) ? "true" : "false"}});
}
BENCHMARK(BM_PagedDecodeStep)
    ->ArgName("prefix_caching")
    ->Arg(1)
    ->Arg(0)
    ->Iterations(kSteps)
    ->Repetitions(7)
    ->ReportAggregatesOnly(true)
    ->Unit(benchmark::kMicrosecond);

void BM_ContiguousDecodeStep(benchmark::State& state) { DecodeSteps(state, "contiguous", {}); }
BENCHMARK(BM_ContiguousDecodeStep)
    ->Iterations(kSteps)
    ->Repetitions(7)
    ->ReportAggregatesOnly(true)
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace kvscope::kvcache

BENCHMARK_MAIN();

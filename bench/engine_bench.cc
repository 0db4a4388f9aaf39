// Prefill and decode throughput of the CPU engine (Google Benchmark).
//
//   build/bench/engine_bench [--benchmark_filter=...]
//
// Models: TinyStories-656K from KVSCOPE_SHARED_DIR (default ../shared, skipped if absent)
// and the llama-100m preset (synthetic weights). Batch 1 and 16, tensor-parallel 1 and 2.
// Prefill: a batch of 128-token prompts in one step. Decode: one token per sequence per
// step over 64-token contexts. Counters report tokens/s (median of repetitions).
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "benchmark/benchmark.h"
#include "engine/engine.h"
#include "engine/model_source.h"

namespace kvscope::engine {
namespace {

std::shared_ptr<const ModelWeights> Model(const std::string& name) {
  static std::map<std::string, std::shared_ptr<const ModelWeights>> cache;
  auto it = cache.find(name);
  if (it != cache.end()) return it->second;
  std::string spec = name;
  if (name == "tinystories") {
    const char* shared = std::getenv("KVSCOPE_SHARED_DIR");
    spec = std::string(shared != nullptr ? shared : "../shared") + "/models/tinystories-656k";
    if (!std::filesystem::exists(spec)) return nullptr;
  }
  auto model = LoadModel(spec, {});
  if (!model.ok()) return nullptr;
  return cache[name] = model->weights;
}

std::vector<int32_t> Prompt(int64_t len, int64_t vocab, int seed) {
  std::vector<int32_t> ids(len);
  for (int64_t i = 0; i < len; ++i) ids[i] = static_cast<int32_t>((i * 7919 + seed * 104729) % vocab);
  return ids;
}

void Run(benchmark::State& state, const std::string& name, bool decode) {
  const int batch = static_cast<int>(state.range(0));
  const int tp = static_cast<int>(state.range(1));
  auto weights = Model(name);
  if (weights == nullptr) {
    state.SkipWithError(("model " + name + " unavailable").c_str());
    return;
  }
  EngineOptions options;
  options.tp_size = tp;
  auto engine = Engine::Create(weights, options);
  if (!engine.ok()) {
    state.SkipWithError(std::string(engine.status().message()).c_str());
    return;
  }
  const int64_t vocab = weights->config.vocab_size;
  const int64_t prompt_len = decode ? 64 : 128;
  std::vector<std::vector<int32_t>> prompts;
  for (int b = 0; b < batch; ++b) prompts.push_back(Prompt(prompt_len, vocab, b));
  int64_t next_id = 1;
  int64_t tokens = 0;
  for (auto _ : state) {
    state.PauseTiming();
    std::vector<SeqInput> batch_in;
    std::vector<int64_t> ids;
    for (int b = 0; b < batch; ++b) {
      ids.push_back(next_id++);
      batch_in.push_back({ids.back(), prompts[b], 0, false});
    }
    if (decode) {
      // Fill the context outside the timed region.
      if (!(*engine)->Forward(batch_in).ok()) state.SkipWithError("prefill failed");
      state.ResumeTiming();
      const int32_t token = 1;
      for (int step = 0; step < 16; ++step) {
        std::vector<SeqInput> step_in;
        for (int b = 0; b < batch; ++b) {
          step_in.push_back({ids[b], absl::MakeConstSpan(&token, 1),
                             static_cast<int32_t>(prompt_len + step), false});
        }
        auto out = (*engine)->Forward(step_in);
        benchmark::DoNotOptimize(out);
        tokens += batch;
      }
      state.PauseTiming();
    } else {
      state.ResumeTiming();
      auto out = (*engine)->Forward(batch_in);
      benchmark::DoNotOptimize(out);
      tokens += batch * prompt_len;
      state.PauseTiming();
    }
    for (int64_t id : ids) (*engine)->Release(id);
    state.ResumeTiming();
  }
  state.counters["tokens_per_s"] = benchmark::Counter(tokens, benchmark::Counter::kIsRate);
  state.counters["params_M"] = weights->config.NumParameters() / 1e6;
}

void Args(benchmark::internal::Benchmark* b) {
  for (int batch : {1, 16}) {
    for (int tp : {1, 2}) b->Args({batch, tp});
  }
  b->ArgNames({"batch", "tp"})->UseRealTime()->Unit(benchmark::kMillisecond);
}

void BM_PrefillTinyStories(benchmark::State& s) { Run(s, "tinystories", false); }
void BM_DecodeTinyStories(benchmark::State& s) { Run(s, "tinystories", true); }
void BM_PrefillLlama100m(benchmark::State& s) { Run(s, "preset:llama-100m", false); }
void BM_DecodeLlama100m(benchmark::State& s) { Run(s, "preset:llama-100m", true); }
BENCHMARK(BM_PrefillTinyStories)->Apply(Args);
BENCHMARK(BM_DecodeTinyStories)->Apply(Args);
BENCHMARK(BM_PrefillLlama100m)->Apply(Args);
BENCHMARK(BM_DecodeLlama100m)->Apply(Args);

}  // namespace
}  // namespace kvscope::engine

BENCHMARK_MAIN();

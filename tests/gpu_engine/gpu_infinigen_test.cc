// InfiniGen on the GPU engine (engine/cuda/gpu_infinigen.h) against the CPU engine on the
// same inputs, both driven through their own infinigen manager: per-layer selections (the
// token set of every speculated layer, sequence and KV head) identical and logits within
// 1e-4 (normalized) in float32, within Tolerance() in bf16, for llama-tiny and opt-tiny
// (a scenario with prefills, decodes and a mixed prefill+decode step) and the TinyStories
// model (teacher-forced decode and an identical greedy continuation); tensor parallelism
// (TP=2, host-staged) equal to the CPU engine's TP=2; the two gather methods (zero copy and
// copy engine) bit-identical; a setting that selects every token equal to the full cache;
// the memory report counting the pinned host pool and the gathered bytes; the refusal of an
// infinigen cache on a shard that was not enabled.
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "common/status_macros.h"
#include "engine/cuda/gpu_engine.h"
#include "engine/cuda/gpu_model_shard.h"
#include "engine/engine.h"
#include "engine/infinigen_calibration.h"
#include "engine/presets.h"
#include "gtest/gtest.h"
#include "kvcache/full_kv_cache.h"
#include "kvcache/infinigen_kv_cache.h"
#include "kvcache/registry.h"
#include "tests/engine/engine_test_util.h"
#include "tests/gpu_engine/gpu_engine_test_util.h"
#include "tests/gpu_kernels/gpu_test_util.h"
#include "tests/test_util.h"

namespace kvscope::engine::cuda {
namespace {

namespace gt = kernels::cuda::testing;
using ::kvscope::testing::ArgmaxRow;
using ::kvscope::testing::NormErr;
using ::kvscope::testing::PresetWeights;
using ::kvscope::testing::RowOf;
using ::kvscope::testing::Tolerance;
using Params = std::map<std::string, std::string>;

constexpr char kTinyStories[] = "models/tinystories-656k";
constexpr int32_t kMaxNew = 24;

// One engine over its own manager (or, without params, a plain GPU engine with the full
// cache). Step() admits new sequences (their first input is the whole prompt), appends,
// plans and runs the step.
struct Side {
  std::unique_ptr<kvcache::KvManager> manager;
  std::unique_ptr<Engine> cpu;
  std::unique_ptr<GpuEngine> gpu;
  std::set<int64_t> admitted;
  // A sequence's whole prompt when its first input is only a chunk of it (chunked prefill);
  // otherwise the first input is the prompt.
  std::map<int64_t, std::vector<int32_t>> prompts;
  int tp = 1;

  absl::StatusOr<ForwardOutput> Step(absl::Span<const SeqInput> batch) {
    if (manager != nullptr) {
      std::vector<kvcache::SeqStep> steps;
      for (const SeqInput& s : batch) {
        if (admitted.insert(s.seq_id).second) {
          const auto chunked = prompts.find(s.seq_id);
          const std::vector<int32_t> prompt =
              chunked != prompts.end() ? chunked->second
                                       : std::vector<int32_t>(s.tokens.begin(), s.tokens.end());
          KVSCOPE_RETURN_IF_ERROR(
              manager->Admit(kvcache::SeqRequest{s.seq_id, prompt, kMaxNew}).status());
        }
        if (!manager->Append(s.seq_id, s.tokens)) {
          return absl::InternalError("append refused");
        }
        steps.push_back(
            {s.seq_id, static_cast<int32_t>(s.tokens.size()), s.start_position});
      }
      KVSCOPE_RETURN_IF_ERROR(manager->Plan(steps).status());
    }
    return cpu != nullptr ? cpu->Forward(batch) : gpu->Forward(batch);
  }
  kvcache::InfinigenKvCache* cache(int rank = 0) {
    kvcache::KvCache& c = cpu != nullptr ? cpu->kv_cache(rank) : gpu->kv_cache(rank);
    return dynamic_cast<kvcache::InfinigenKvCache*>(&c);
  }
};

kvcache::KvManagerContext Context(const ModelConfig& config, int tp) {
  kvcache::KvManagerContext context;
  context.geometry = KvGeometryFor(config, tp);
  context.kv_memory_bytes = 8192 * context.geometry.BytesPerToken();
  context.max_model_len = 512;
  return context;
}

// params empty and gpu: a plain GPU engine (full cache).
std::unique_ptr<Side> MakeSide(std::shared_ptr<const ModelWeights> w, const Params& params,
                               bool on_gpu, DType dtype = DType::kF32,
                               InfinigenGather gather = InfinigenGather::kZeroCopy, int tp = 1) {
  auto side = std::make_unique<Side>();
  side->tp = tp;
  std::function<std::unique_ptr<kvcache::KvCache>(const kvcache::KvShape&, int)> factory;
  if (!params.empty()) {
    kvcache::KvManagerContext context = Context(w->config, tp);
    context.host_kv_storage = !on_gpu;  // as kvscope bench builds the GPU engine's caches
    auto manager = kvcache::CreateKvManager("infinigen", params, context);
    EXPECT_TRUE(manager.ok()) << manager.status();
    if (!manager.ok()) return nullptr;
    side->manager = std::move(*manager);
    kvcache::KvManager* m = side->manager.get();
    factory = [m](const kvcache::KvShape&, int rank) { return m->CreateRankCache(rank); };
  }
  if (on_gpu) {
    GpuEngineOptions options;
    options.tp_size = tp;
    options.shard.dtype = dtype;
    options.shard.max_tokens_per_step = 128;
    options.shard.logits_chunk_rows = 16;
    options.shard.infinigen_gather = gather;
    if (params.empty()) options.shard.num_kv_blocks = 64;
    options.kv_factory = factory;
    auto engine = GpuEngine::Create(std::move(w), options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    if (!engine.ok()) return nullptr;
    side->gpu = std::move(*engine);
  } else {
    EngineOptions options;
    options.tp_size = tp;
    options.kv_factory = factory;
    auto engine = Engine::Create(std::move(w), options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    if (!engine.ok()) return nullptr;
    side->cpu = std::move(*engine);
  }
  return side;
}

// What one step left: its logits and, per rank, speculated layer, step sequence and local KV
// head, the selected positions (empty lists for sequences that did not speculate).
struct StepRecord {
  ForwardOutput out;
  std::vector<std::vector<int32_t>> selections;
  int64_t sparse_selections = 0;  // selections smaller than the sequence's history
};

StepRecord Record(Side& side, ForwardOutput out, absl::Span<const SeqInput> batch) {
  StepRecord rec;
  rec.out = std::move(out);
  for (int rank = 0; rank < side.tp; ++rank) {
    kvcache::InfinigenKvCache* cache = side.cache(rank);
    if (cache == nullptr) continue;
    const int32_t layers = cache->shape().num_layers;
    for (int32_t l = cache->manager().dense_layers(); l < layers; ++l) {
      for (int32_t i = 0; i < static_cast<int32_t>(batch.size()); ++i) {
        for (int32_t kh = 0; kh < cache->shape().num_kv_heads; ++kh) {
          rec.selections.push_back(cache->SelectedPositions(l, i, kh));
          const auto& sel = rec.selections.back();
          if (!sel.empty() && static_cast<int32_t>(sel.size()) < batch[i].start_position) {
            ++rec.sparse_selections;
          }
        }
      }
    }
  }
  return rec;
}

// Teacher-forced scenario (seeded tokens, so both sides see the same inputs):
//   step 0: prefill 1 (40 tokens) and 2 (29)
//   steps 1-5: decode 1, 2
//   step 6: decode 1, the first 15 tokens of 3's 23-token prompt, decode 2 (a mixed step:
//           PrefillAttention over the speculated per-head views)
//   step 7: decode 1, the other 8 prompt tokens of 3 (a chunk after the first: the
//           offloaded layers gather its 15 earlier rows from the host pool), decode 2
//   steps 8-11: decode 1, 2, 3
std::vector<StepRecord> RunScenario(Side& side, int64_t vocab) {
  std::mt19937 rng(99);
  std::deque<std::vector<int32_t>> storage;
  auto tokens = [&](int n) -> absl::Span<const int32_t> {
    std::vector<int32_t> t(n);
    for (int32_t& id : t) id = static_cast<int32_t>(rng() % vocab);
    storage.push_back(std::move(t));
    return storage.back();
  };
  std::map<int64_t, int32_t> length;
  auto seq = [&](int64_t id, int n) {
    SeqInput s{id, tokens(n), length[id], false};
    length[id] += n;
    return s;
  };
  std::vector<StepRecord> records;
  auto step = [&](std::vector<SeqInput> batch) {
    auto out = side.Step(batch);
    EXPECT_TRUE(out.ok()) << out.status();
    if (!out.ok()) return false;
    records.push_back(Record(side, std::move(*out), batch));
    return true;
  };
  if (!step({seq(1, 40), seq(2, 29)})) return {};
  for (int i = 0; i < 5; ++i) {
    if (!step({seq(1, 1), seq(2, 1)})) return {};
  }
  const absl::Span<const int32_t> prompt3 = tokens(23);
  side.prompts[3] = std::vector<int32_t>(prompt3.begin(), prompt3.end());
  if (!step({seq(1, 1), SeqInput{3, prompt3.subspan(0, 15), 0, false}, seq(2, 1)})) return {};
  if (!step({seq(1, 1), SeqInput{3, prompt3.subspan(15, 8), 15, false}, seq(2, 1)})) return {};
  length[3] = 23;
  for (int i = 0; i < 4; ++i) {
    if (!step({seq(1, 1), seq(2, 1), seq(3, 1)})) return {};
  }
  return records;
}

// Logits within tol per step; with `same_selections`, identical selections every step.
void ExpectRecordsMatch(const std::vector<StepRecord>& got, const std::vector<StepRecord>& want,
                        double tol, bool same_selections) {
  ASSERT_EQ(got.size(), want.size());
  ASSERT_FALSE(want.empty());
  int64_t sparse = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE("step " + std::to_string(i));
    EXPECT_EQ(got[i].out.row_begin, want[i].out.row_begin);
    EXPECT_LE(NormErr(got[i].out.logits, want[i].out.logits), tol);
    if (same_selections) {
      EXPECT_EQ(got[i].selections, want[i].selections);
    }
    sparse += want[i].sparse_selections;
  }
  // The scenario really selected subsets (max_num_kv is a fifth of the sequence).
  EXPECT_GT(sparse, 0);
}

class GpuInfinigenVsCpuTest : public ::testing::TestWithParam<std::tuple<std::string, DType>> {};

TEST_P(GpuInfinigenVsCpuTest, SelectionsAndLogitsMatchCpuEngine) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  const auto& [preset, dtype] = GetParam();
  auto weights = PresetWeights(preset);
  ASSERT_NE(weights, nullptr);
  const Params params = {{"dense_layers", "1"}};
  auto cpu = MakeSide(weights, params, false);
  auto gpu = MakeSide(weights, params, true, dtype);
  ASSERT_NE(cpu, nullptr);
  ASSERT_NE(gpu, nullptr);
  const auto want = RunScenario(*cpu, weights->config.vocab_size);
  const auto got = RunScenario(*gpu, weights->config.vocab_size);
  // bf16 rounds the partial scores differently: near-ties may select other tokens.
  ExpectRecordsMatch(got, want, Tolerance(dtype), dtype == DType::kF32);
  // The host bookkeeping saw the same selections.
  const kvcache::KvCounters c = cpu->manager->Counters();
  const kvcache::KvCounters g = gpu->manager->Counters();
  EXPECT_EQ(g.selections, c.selections);
  if (dtype == DType::kF32) {
    EXPECT_EQ(g.selected_tokens, c.selected_tokens);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Presets, GpuInfinigenVsCpuTest,
    ::testing::Combine(::testing::Values("llama-tiny", "opt-tiny"),
                       ::testing::Values(DType::kF32, DType::kBF16)),
    ::kvscope::testing::PresetDTypeName);

// The reference's default of two dense layers, and tensor parallelism (each rank speculates
// for its own heads) against the CPU engine's TP=2.
TEST(GpuInfinigenTest, DefaultDenseLayersAndTensorParallelMatchCpu) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  auto weights = PresetWeights("llama-tiny");
  ASSERT_NE(weights, nullptr);
  for (int tp : {1, 2}) {
    SCOPED_TRACE("tp " + std::to_string(tp));
    const Params params = {{"max_kv_ratio", "0.2"}};
    auto cpu = MakeSide(weights, params, false, DType::kF32, InfinigenGather::kZeroCopy, tp);
    auto gpu = MakeSide(weights, params, true, DType::kF32, InfinigenGather::kZeroCopy, tp);
    ASSERT_NE(cpu, nullptr);
    ASSERT_NE(gpu, nullptr);
    ExpectRecordsMatch(RunScenario(*gpu, weights->config.vocab_size),
                       RunScenario(*cpu, weights->config.vocab_size), 1e-4, true);
  }
}

// Zero copy and the copy engine move the same bytes: bit-identical logits and selections.
TEST(GpuInfinigenTest, GatherMethodsAreBitIdentical) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  for (const std::string preset : {"llama-tiny", "opt-tiny"}) {
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      SCOPED_TRACE(preset + " " + gt::DTypeLabel(dtype));
      auto weights = PresetWeights(preset);
      ASSERT_NE(weights, nullptr);
      const Params params = {{"dense_layers", "1"}};
      auto zero = MakeSide(weights, params, true, dtype, InfinigenGather::kZeroCopy);
      auto copy = MakeSide(weights, params, true, dtype, InfinigenGather::kCopyEngine);
      ASSERT_NE(zero, nullptr);
      ASSERT_NE(copy, nullptr);
      const auto a = RunScenario(*zero, weights->config.vocab_size);
      const auto b = RunScenario(*copy, weights->config.vocab_size);
      ASSERT_EQ(a.size(), b.size());
      ASSERT_FALSE(a.empty());
      for (size_t i = 0; i < a.size(); ++i) {
        SCOPED_TRACE("step " + std::to_string(i));
        EXPECT_EQ(a[i].selections, b[i].selections);
        ASSERT_EQ(a[i].out.logits.size(), b[i].out.logits.size());
        EXPECT_EQ(std::memcmp(a[i].out.logits.data(), b[i].out.logits.data(),
                              a[i].out.logits.size() * sizeof(float)),
                  0);
      }
      // Both count the gathered rows as host-to-device bytes.
      EXPECT_EQ(zero->gpu->shard(0).memory().h2d_bytes - copy->gpu->shard(0).memory().h2d_bytes,
                0);
    }
  }
}

// alpha huge and max_num_kv = the whole sequence: every earlier token is selected, and the
// logits are the full cache's (up to the rounding of the skewed q/k).
TEST(GpuInfinigenTest, SelectingEverythingEqualsTheFullCache) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  for (const std::string preset : {"llama-tiny", "opt-tiny"}) {
    SCOPED_TRACE(preset);
    auto weights = PresetWeights(preset);
    ASSERT_NE(weights, nullptr);
    const Params params = {{"dense_layers", "1"}, {"alpha", "1000000"}, {"max_kv_ratio", "1"}};
    auto ig = MakeSide(weights, params, true);
    auto full = MakeSide(weights, {}, true);
    ASSERT_NE(ig, nullptr);
    ASSERT_NE(full, nullptr);
    const auto a = RunScenario(*ig, weights->config.vocab_size);
    const auto b = RunScenario(*full, weights->config.vocab_size);
    ASSERT_EQ(a.size(), b.size());
    ASSERT_FALSE(a.empty());
    for (size_t i = 0; i < a.size(); ++i) {
      SCOPED_TRACE("step " + std::to_string(i));
      EXPECT_LE(NormErr(a[i].out.logits, b[i].out.logits), 1e-4);
      EXPECT_EQ(a[i].sparse_selections, 0);
    }
    EXPECT_GT(ig->manager->Counters().selected_tokens, 0);
  }
}

// The offloaded layers hold no device pool: the KV pool is the dense layer's alone. The
// report counts the pinned host pool of the offloaded layers and, per decode step, at least
// the gathered K/V bytes (host to device) and the new rows written to the host pool (device
// to host); a prefill chunk after the first gathers its earlier rows in every offloaded layer.
TEST(GpuInfinigenTest, MemoryReportCountsHostPoolAndGatheredBytes) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  for (InfinigenGather gather : {InfinigenGather::kZeroCopy, InfinigenGather::kCopyEngine}) {
    auto weights = PresetWeights("llama-tiny");
    ASSERT_NE(weights, nullptr);
    auto side = MakeSide(weights, {{"dense_layers", "1"}}, true, DType::kBF16, gather);
    ASSERT_NE(side, nullptr);
    const GpuModelShard& shard = side->gpu->shard(0);
    const ModelConfig& c = weights->config;
    const int64_t kv_heads = shard.kv_shape().num_kv_heads;
    const int64_t es = 2;
    const int64_t sparse_layers = c.num_layers - 1;
    const int64_t host_pool =
        sparse_layers * 2 * shard.memory().num_kv_blocks * shard.device_pool(0).block_elems() * es;
    EXPECT_GE(shard.memory().pinned_host_bytes, host_pool);
    EXPECT_EQ(shard.memory().kv_pool_bytes,
              2 * shard.memory().num_kv_blocks * shard.device_pool(0).block_elems() * es);
    EXPECT_NE(shard.device_pool(0).k, nullptr);
    for (int64_t l = 1; l < c.num_layers; ++l) EXPECT_EQ(shard.device_pool(l).k, nullptr);
    std::vector<int32_t> prompt(37);
    for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>(i * 7 % 500 + 3);
    ASSERT_TRUE(side->Step({SeqInput{1, prompt, 0, false}}).ok());
    for (int32_t pos = 37; pos < 45; ++pos) {
      const GpuMemoryReport before = shard.memory();
      const int64_t selected_before = side->manager->Counters().selected_tokens;
      const int32_t token = 11;
      ASSERT_TRUE(side->Step({SeqInput{1, absl::MakeConstSpan(&token, 1), pos, false}}).ok());
      const GpuMemoryReport after = shard.memory();
      const int64_t selected = side->manager->Counters().selected_tokens - selected_before;
      EXPECT_GT(selected, 0);
      EXPECT_LT(selected, sparse_layers * pos);  // a subset
      EXPECT_GE(after.h2d_bytes - before.h2d_bytes, selected * kv_heads * 2 * c.head_dim * es);
      EXPECT_GE(after.d2h_bytes - before.d2h_bytes, sparse_layers * kv_heads * 2 * c.head_dim * es);
      EXPECT_GE(after.pinned_host_bytes, host_pool);
    }
    // A second sequence's 30-token prompt in two chunks: the second gathers the first's
    // 20 rows in every offloaded layer.
    side->prompts[2] = std::vector<int32_t>(prompt.begin(), prompt.begin() + 30);
    ASSERT_TRUE(side->Step({SeqInput{2, absl::MakeConstSpan(prompt).subspan(0, 20), 0, false}})
                    .ok());
    const GpuMemoryReport before = shard.memory();
    ASSERT_TRUE(side->Step({SeqInput{2, absl::MakeConstSpan(prompt).subspan(20, 10), 20, false}})
                    .ok());
    EXPECT_GE(shard.memory().h2d_bytes - before.h2d_bytes,
              sparse_layers * 20 * kv_heads * 2 * c.head_dim * es);
  }
}

// The TinyStories model (2 layers; dense_layers 1 speculates for layer 1): a story prefix
// prefilled, the rest teacher-forced, then a greedy continuation; float32 selections and
// tokens identical to the CPU engine, bf16 logits within Tolerance().
TEST(GpuInfinigenTinyStoriesTest, SelectionsLogitsAndGreedyTokensMatchCpu) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  KVSCOPE_REQUIRE_SHARED(dir, kTinyStories);
  const nlohmann::json ref = testing::ReadJsonOrDie(dir + "/reference.json");
  auto weights = testing::LoadWeightsOrDie(dir);
  ASSERT_NE(weights, nullptr);
  const auto story = ref["stories"][0]["ids"].get<std::vector<int32_t>>();
  ASSERT_GE(story.size(), 16u);
  const size_t half = story.size() / 2;
  const size_t decode = std::min<size_t>(story.size() - half, kMaxNew);
  const Params params = {{"dense_layers", "1"}};
  auto run = [&](Side& side) {
    std::vector<StepRecord> records;
    std::vector<SeqInput> batch = {
        SeqInput{1, absl::MakeConstSpan(story).subspan(0, half), 0, false}};
    for (size_t i = 0; i <= decode; ++i) {
      auto out = side.Step(batch);
      EXPECT_TRUE(out.ok()) << out.status();
      if (!out.ok()) return records;
      records.push_back(Record(side, std::move(*out), batch));
      if (half + i >= story.size()) break;
      batch = {SeqInput{1, absl::MakeConstSpan(&story[half + i], 1),
                        static_cast<int32_t>(half + i), false}};
    }
    return records;
  };
  auto greedy = [&](Side& side, int n) {
    const auto prompt = ref["greedy"]["input_ids"].get<std::vector<int32_t>>();
    std::vector<int32_t> generated;
    std::vector<int32_t> keep = prompt;
    int32_t position = 0;
    absl::Span<const int32_t> input = keep;
    for (int i = 0; i < n; ++i) {
      auto out = side.Step({SeqInput{2, input, position, false}});
      EXPECT_TRUE(out.ok()) << out.status();
      if (!out.ok()) break;
      position += static_cast<int32_t>(input.size());
      const float* row = out->Row(0);
      int64_t best = 0;
      for (int64_t v = 1; v < out->vocab_size; ++v) {
        if (row[v] > row[best]) best = v;
      }
      generated.push_back(static_cast<int32_t>(best));
      input = absl::MakeConstSpan(&generated.back(), 1);
    }
    return generated;
  };
  auto cpu = MakeSide(weights, params, false);
  ASSERT_NE(cpu, nullptr);
  const auto want = run(*cpu);
  const auto want_tokens = greedy(*cpu, 16);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(gt::DTypeLabel(dtype));
    auto gpu = MakeSide(weights, params, true, dtype);
    ASSERT_NE(gpu, nullptr);
    ExpectRecordsMatch(run(*gpu), want, Tolerance(dtype), dtype == DType::kF32);
    if (dtype == DType::kF32) {
      EXPECT_EQ(greedy(*gpu, 16), want_tokens);
    }
  }
}

// kv_layers: a shard without device pools for some layers refuses a cache that keeps them
// on the device, and infinigen needs a pool for each of its dense layers.
TEST(GpuInfinigenTest, LayersWithoutADevicePoolAreOnlyForOffloading) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  auto weights = PresetWeights("llama-tiny");
  ASSERT_NE(weights, nullptr);
  ASSERT_GE(weights->config.num_layers, 2);
  GpuShardOptions options;
  options.dtype = DType::kF32;
  options.num_kv_blocks = 8;
  options.kv_layers = 1;
  auto shard = GpuModelShard::Create(*weights, 0, 1, options);
  ASSERT_TRUE(shard.ok()) << shard.status();
  EXPECT_EQ((*shard)->memory().kv_pool_bytes,
            2 * 8 * (*shard)->device_pool(0).block_elems() * 4);
  EXPECT_EQ((*shard)->device_pool(1).k, nullptr);
  kvcache::FullKvCache full((*shard)->kv_shape(),
                            kvcache::FullKvCache::Options{16, 64, /*allocate_storage=*/false});
  LocalCommGroup group(1);
  auto comm = CreateHostStagedCommunicator(group.ForRank(0));
  const std::vector<int32_t> ids = {1, 2, 3};
  ForwardOutput out;
  absl::Status st = (*shard)->Forward({SeqInput{1, ids, 0, false}}, full, *comm, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_NE(st.message().find("no device KV pool for layer 1"), std::string::npos) << st;
  EXPECT_FALSE((*shard)->step_prepared());

  auto manager = kvcache::CreateKvManager("infinigen", {{"dense_layers", "2"}},
                                          Context(weights->config, 1));
  ASSERT_TRUE(manager.ok()) << manager.status();
  auto cache = (*manager)->CreateRankCache(0);
  auto* ig = dynamic_cast<kvcache::InfinigenKvCache*>(cache.get());
  ASSERT_NE(ig, nullptr);
  ASSERT_TRUE(PrepareInfinigen(*weights, *cache).ok());
  st = (*shard)->EnableInfinigen(*weights, *ig->skew(), 2);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(st.message().find("dense layer 1 has no device KV pool"), std::string::npos) << st;
}

// A shard that was not enabled for infinigen refuses such a cache before touching it.
TEST(GpuInfinigenTest, ShardWithoutEnableIsRefused) {
  KVSCOPE_SKIP_WITHOUT_GPU();
  auto weights = PresetWeights("llama-tiny");
  ASSERT_NE(weights, nullptr);
  auto manager = kvcache::CreateKvManager("infinigen", {}, Context(weights->config, 1));
  ASSERT_TRUE(manager.ok()) << manager.status();
  auto cache = (*manager)->CreateRankCache(0);
  EXPECT_TRUE(CheckGpuSupportsCache(*cache).ok());
  GpuShardOptions options;
  options.num_kv_blocks = 8;
  auto shard = GpuModelShard::Create(*weights, 0, 1, options);
  ASSERT_TRUE(shard.ok()) << shard.status();
  LocalCommGroup group(1);
  auto comm = CreateHostStagedCommunicator(group.ForRank(0));
  const std::vector<int32_t> ids = {1, 2, 3};
  ForwardOutput out;
  const absl::Status st = (*shard)->Forward({SeqInput{1, ids, 0, false}}, *cache, *comm, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_FALSE((*shard)->step_prepared());
}

}  // namespace
}  // namespace kvscope::engine::cuda

// A ragged batch (prompts of different lengths, prefill and decode in one code path) gives
// each prompt the logits and tokens it gets alone; seeded sampling is batch-invariant.
#include <memory>
#include <vector>

#include "engine/presets.h"
#include "gtest/gtest.h"
#include "kvcache/full_kv_cache.h"
#include "tests/engine/engine_test_util.h"

namespace kvscope::engine {
namespace {

using ::kvscope::testing::MaxAbsDiff;

std::vector<GenerateRequest> Prompts(const SamplingParams& sampling) {
  return {{{1, 80, 147, 201, 282}, 8, sampling},
          {{1, 80, 1443, 410, 555, 4, 80, 247, 183, 122, 39, 57, 172}, 8, sampling},
          {{1, 85}, 8, sampling}};
}

TEST(BatchingTest, BatchOfDifferentLengthsMatchesEachAlone) {
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  auto weights = testing::LoadWeightsOrDie(dir);
  auto engine = testing::MakeEngine(weights);
  ASSERT_NE(engine, nullptr);
  GenerateOptions options;
  options.keep_logits = true;
  const auto requests = Prompts({});
  auto batched = Generate(*engine, requests, options);
  ASSERT_TRUE(batched.ok()) << batched.status();
  for (size_t i = 0; i < requests.size(); ++i) {
    auto alone = Generate(*engine, {requests[i]}, options);
    ASSERT_TRUE(alone.ok()) << alone.status();
    const GenerateResult& a = (*alone)[0];
    const GenerateResult& b = (*batched)[i];
    EXPECT_EQ(a.tokens, b.tokens) << "request " << i;
    ASSERT_EQ(a.prefill_logits.size(), b.prefill_logits.size());
    for (size_t p = 0; p < a.prefill_logits.size(); ++p) {
      EXPECT_LE(MaxAbsDiff(a.prefill_logits[p], b.prefill_logits[p]), 1e-5);
    }
    ASSERT_EQ(a.step_logits.size(), b.step_logits.size());
    for (size_t s = 0; s < a.step_logits.size(); ++s) {
      EXPECT_LE(MaxAbsDiff(a.step_logits[s], b.step_logits[s]), 1e-5);
    }
  }
}

TEST(BatchingTest, SeededSamplingIsBatchInvariantAndSeedDependent) {
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  auto engine = testing::MakeEngine(testing::LoadWeightsOrDie(dir));
  ASSERT_NE(engine, nullptr);
  SamplingParams sampling{1.0f, 50, 0.95f, 1234};
  auto requests = Prompts(sampling);
  requests[1].sampling.seed = 99;
  auto batched = Generate(*engine, requests, {});
  ASSERT_TRUE(batched.ok()) << batched.status();
  for (size_t i = 0; i < requests.size(); ++i) {
    auto alone = Generate(*engine, {requests[i]}, {});
    ASSERT_TRUE(alone.ok());
    EXPECT_EQ((*alone)[0].tokens, (*batched)[i].tokens) << "request " << i;
  }
  // Another seed gives another continuation (8 sampled tokens at temperature 1).
  auto other = requests[0];
  other.sampling.seed = 4321;
  auto again = Generate(*engine, {other}, {});
  ASSERT_TRUE(again.ok());
  EXPECT_NE((*again)[0].tokens, (*batched)[0].tokens);
}

TEST(BatchingTest, StopsAtEndOfSequence) {
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  auto engine = testing::MakeEngine(testing::LoadWeightsOrDie(dir));
  ASSERT_NE(engine, nullptr);
  auto full = Generate(*engine, {GenerateRequest{{1, 80, 147}, 12, {}}}, {});
  ASSERT_TRUE(full.ok());
  GenerateOptions options;
  options.eos_ids = {(*full)[0].tokens[3]};  // pretend the 4th token ends the sequence
  auto stopped = Generate(*engine, {GenerateRequest{{1, 80, 147}, 12, {}}}, options);
  ASSERT_TRUE(stopped.ok());
  // It stops at the first occurrence of that token, which is kept.
  const auto& t = (*full)[0].tokens;
  const size_t first = std::find(t.begin(), t.end(), t[3]) - t.begin();
  EXPECT_EQ((*stopped)[0].tokens, std::vector<int32_t>(t.begin(), t.begin() + first + 1));
}

TEST(BatchingTest, BadRequestsAreRefusedBeforeAnyWork) {
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  auto engine = testing::MakeEngine(testing::LoadWeightsOrDie(dir));
  ASSERT_NE(engine, nullptr);
  auto out_of_vocab = Generate(*engine, {GenerateRequest{{1, 5000}, 4, {}}}, {});
  ASSERT_FALSE(out_of_vocab.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(out_of_vocab.status()));
  EXPECT_NE(out_of_vocab.status().message().find("token id 5000"), std::string::npos);
  auto negative = Generate(*engine, {GenerateRequest{{1, -3}, 4, {}}}, {});
  EXPECT_TRUE(absl::IsInvalidArgument(negative.status()));
  std::vector<int32_t> long_prompt(600, 80);  // context is 512
  auto too_long = Generate(*engine, {GenerateRequest{long_prompt, 4, {}}}, {});
  EXPECT_TRUE(absl::IsOutOfRange(too_long.status())) << too_long.status();
  auto empty = Generate(*engine, {GenerateRequest{{}, 4, {}}}, {});
  EXPECT_TRUE(absl::IsInvalidArgument(empty.status()));
  auto bad_sampling = Generate(*engine, {GenerateRequest{{1}, 4, {1.0f, 0, 1.5f, 0}}}, {});
  EXPECT_TRUE(absl::IsInvalidArgument(bad_sampling.status()));
  // The engine still works afterwards and holds no leftover sequences.
  auto fine = Generate(*engine, {GenerateRequest{{1, 80}, 2, {}}}, {});
  EXPECT_TRUE(fine.ok()) << fine.status();
  EXPECT_EQ(engine->kv_cache(0).UsedBytes(), 0);
}

TEST(BatchingTest, FullKvCacheIsReportedNotCrashing) {
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  EngineOptions options;
  options.max_kv_tokens = 10;
  auto engine = Engine::Create(testing::LoadWeightsOrDie(dir), options);
  ASSERT_TRUE(engine.ok());
  auto result = Generate(**engine, {GenerateRequest{{1, 80, 147, 201, 282}, 20, {}}}, {});
  EXPECT_TRUE(absl::IsResourceExhausted(result.status())) << result.status();
  // Nothing leaks and the engine keeps serving requests that fit.
  EXPECT_EQ((*engine)->kv_cache(0).UsedBytes(), 0);
  auto fits = Generate(**engine, {GenerateRequest{{1, 80, 147}, 4, {}}}, {});
  EXPECT_TRUE(fits.ok()) << fits.status();
}

// A cache made for the GPU engine (no host K/V storage) is refused by the CPU engine with
// a message that says why, not dereferenced.
TEST(BatchingTest, CacheWithoutHostStorageIsRefused) {
  auto config = PresetConfig("llama-tiny");
  ASSERT_TRUE(config.ok()) << config.status();
  auto weights = SyntheticWeights(*config, 3);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EngineOptions options;
  options.kv_factory = [](const kvcache::KvShape& shape, int) {
    return std::make_unique<kvcache::FullKvCache>(
        shape, kvcache::FullKvCache::Options{16, 0, /*allocate_storage=*/false});
  };
  auto engine = Engine::Create(std::make_shared<ModelWeights>(std::move(*weights)), options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  const std::vector<int32_t> prompt = {1, 5, 9};
  auto out = (*engine)->Forward({SeqInput{1, prompt, 0, true}});
  EXPECT_TRUE(absl::IsFailedPrecondition(out.status())) << out.status();
  EXPECT_NE(out.status().message().find("no host K/V storage"), std::string::npos)
      << out.status();
}

}  // namespace
}  // namespace kvscope::engine

// Tensor parallelism (ranks as threads, CPU communicator) gives the logits of one rank.
#include <string>

#include "engine/presets.h"
#include "gtest/gtest.h"
#include "tests/engine/engine_test_util.h"

namespace kvscope::engine {
namespace {

using ::kvscope::testing::MaxAbsDiff;

constexpr double kTolerance = 5e-5;

// Prefill of two prompts, then 6 greedy steps, with keep_logits.
std::vector<GenerateResult> Run(std::shared_ptr<const ModelWeights> w, int tp) {
  auto engine = testing::MakeEngine(std::move(w), tp);
  if (engine == nullptr) return {};
  const int32_t vocab = static_cast<int32_t>(engine->config().vocab_size);
  std::vector<GenerateRequest> requests = {
      {{1, 5 % vocab, 9 % vocab, 17 % vocab, 33 % vocab, 2}, 6, {}},
      {{3 % vocab, 4 % vocab, 250 % vocab}, 6, {}}};
  GenerateOptions options;
  options.keep_logits = true;
  auto results = Generate(*engine, requests, options);
  EXPECT_TRUE(results.ok()) << results.status();
  return results.ok() ? *results : std::vector<GenerateResult>{};
}

void ExpectSameAsTp1(std::shared_ptr<const ModelWeights> w, const std::vector<int>& sizes) {
  const auto base = Run(w, 1);
  ASSERT_EQ(base.size(), 2u);
  for (int tp : sizes) {
    SCOPED_TRACE("tp=" + std::to_string(tp));
    const auto got = Run(w, tp);
    ASSERT_EQ(got.size(), base.size());
    for (size_t r = 0; r < base.size(); ++r) {
      EXPECT_EQ(got[r].tokens, base[r].tokens);
      for (size_t i = 0; i < base[r].prefill_logits.size(); ++i) {
        EXPECT_LE(MaxAbsDiff(got[r].prefill_logits[i], base[r].prefill_logits[i]), kTolerance);
      }
      for (size_t i = 0; i < base[r].step_logits.size(); ++i) {
        EXPECT_LE(MaxAbsDiff(got[r].step_logits[i], base[r].step_logits[i]), kTolerance);
      }
    }
  }
}

TEST(TensorParallelTest, TinyStoriesSizes2And4) {
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  ExpectSameAsTp1(testing::LoadWeightsOrDie(dir), {2, 4});
}

TEST(TensorParallelTest, ReplicatedKvHeadsLlama3Rope) {
  // 4 query heads, 1 KV head: sizes 2 and 4 replicate the KV head on every rank.
  KVSCOPE_REQUIRE_SHARED(dir, "fixtures/hf-reference/llama3-rope/fp32");
  ExpectSameAsTp1(testing::LoadWeightsOrDie(dir), {2, 4});
}

TEST(TensorParallelTest, QkvBiasQwen2) {
  KVSCOPE_REQUIRE_SHARED(dir, "fixtures/hf-reference/qwen2-bias/fp32");
  ExpectSameAsTp1(testing::LoadWeightsOrDie(dir), {2});
}

TEST(TensorParallelTest, OptBiasesAddedOnce) {
  KVSCOPE_REQUIRE_SHARED(dir, "fixtures/hf-reference/opt/fp32");
  ExpectSameAsTp1(testing::LoadWeightsOrDie(dir), {2, 4});
}

TEST(TensorParallelTest, SyntheticPreset) {
  auto config = PresetConfig("llama-tiny");
  ASSERT_TRUE(config.ok()) << config.status();
  auto weights = SyntheticWeights(*config, 7);
  ASSERT_TRUE(weights.ok()) << weights.status();
  ExpectSameAsTp1(std::make_shared<ModelWeights>(std::move(*weights)), {2, 4});
}

TEST(TensorParallelTest, ImpossibleSizeIsRefusedWithSizesThatWork) {
  ModelConfig c;
  c.num_heads = 8;
  c.num_kv_heads = 4;
  c.intermediate_size = 384;
  const absl::Status status = ValidateTensorParallelSize(c, 3);
  EXPECT_TRUE(absl::IsInvalidArgument(status));
  EXPECT_NE(status.message().find("sizes that work: 1, 2, 4, 8"), std::string::npos)
      << status.message();
  EXPECT_TRUE(ValidateTensorParallelSize(c, 8).ok());
  EXPECT_FALSE(ValidateTensorParallelSize(c, 0).ok());
  EXPECT_FALSE(ValidateTensorParallelSize(c, 16).ok());
}

}  // namespace
}  // namespace kvscope::engine

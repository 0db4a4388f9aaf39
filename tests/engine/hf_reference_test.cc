// Every model in ../shared/fixtures/hf-reference against Hugging Face transformers: prefill
// logits and every greedy step's logits (decoded through kvscope's KV cache) within 1e-4,
// greedy tokens identical.
//
// The fixture models were rounded to bf16 with `model.to(torch.bfloat16)` before the
// reference ran in float32; that cast also rounded the RoPE `inv_freq` buffer, so the
// Llama-family references are reproduced with RopeConfig::inv_freq_bf16 (a test below shows
// the logits move by more than the tolerance without it).
#include <string>
#include <tuple>

#include "gtest/gtest.h"
#include "tests/engine/engine_test_util.h"

namespace kvscope::engine {
namespace {

using ::kvscope::testing::JsonRow;
using ::kvscope::testing::MaxAbsDiff;

constexpr double kTolerance = 1e-4;

class HfReferenceTest : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(HfReferenceTest, LogitsAndGreedyTokensMatchTransformers) {
  const auto& [model, variant] = GetParam();
  KVSCOPE_REQUIRE_SHARED(dir, "fixtures/hf-reference/" + model + "/" + variant);
  KVSCOPE_REQUIRE_SHARED(ref_path, "fixtures/hf-reference/" + model + "/reference.json");
  auto loaded = LoadModelWeights(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  loaded->config.rope.inv_freq_bf16 = true;
  auto engine = testing::MakeEngine(std::make_shared<ModelWeights>(std::move(*loaded)));
  ASSERT_NE(engine, nullptr);
  const nlohmann::json ref = testing::ReadJsonOrDie(ref_path);
  for (const auto& prompt : ref["prompts"]) {
    const std::vector<int32_t> ids = prompt["input_ids"].get<std::vector<int32_t>>();
    const int64_t vocab = prompt["vocab_size"].get<int64_t>();
    const auto expected_tokens = prompt["greedy_tokens"].get<std::vector<int32_t>>();
    GenerateRequest request{ids, static_cast<int32_t>(expected_tokens.size()), {}};
    GenerateOptions options;
    options.keep_logits = true;
    auto results = Generate(*engine, {request}, options);
    ASSERT_TRUE(results.ok()) << results.status();
    const GenerateResult& r = (*results)[0];
    ASSERT_EQ(r.prefill_logits.size(), ids.size());
    for (size_t pos = 0; pos < ids.size(); ++pos) {
      EXPECT_LE(MaxAbsDiff(r.prefill_logits[pos], JsonRow(prompt["prefill_logits"], pos, vocab)),
                kTolerance)
          << model << "/" << variant << " prefill position " << pos;
    }
    EXPECT_EQ(r.tokens, expected_tokens) << model << "/" << variant;
    ASSERT_EQ(r.step_logits.size(), expected_tokens.size());
    for (size_t step = 0; step < expected_tokens.size(); ++step) {
      EXPECT_LE(MaxAbsDiff(r.step_logits[step],
                           prompt["greedy_step_logits"][step].get<std::vector<float>>()),
                kTolerance)
          << model << "/" << variant << " greedy step " << step;
    }
  }
}

// Without the bf16-rounded frequencies the first positions already differ by more than the
// tolerance: the rounding is what the reference holds, not slack in the comparison.
TEST(HfReferenceCauseTest, FullPrecisionFrequenciesMissTheCastReference) {
  KVSCOPE_REQUIRE_SHARED(dir, "fixtures/hf-reference/llama-gqa/fp32");
  KVSCOPE_REQUIRE_SHARED(ref_path, "fixtures/hf-reference/llama-gqa/reference.json");
  auto engine = testing::MakeEngine(testing::LoadWeightsOrDie(dir));
  ASSERT_NE(engine, nullptr);
  const nlohmann::json prompt = testing::ReadJsonOrDie(ref_path)["prompts"][0];
  const auto ids = prompt["input_ids"].get<std::vector<int32_t>>();
  auto out = engine->Forward({SeqInput{1, ids, 0, true}});
  ASSERT_TRUE(out.ok()) << out.status();
  const int64_t vocab = prompt["vocab_size"].get<int64_t>();
  const int64_t last = static_cast<int64_t>(ids.size()) - 1;
  const std::vector<float> got(out->Row(last), out->Row(last) + vocab);
  EXPECT_GT(MaxAbsDiff(got, JsonRow(prompt["prefill_logits"], last, vocab)), 5 * kTolerance);
  // Position 0 is not rotated, so it matches either way.
  const std::vector<float> first(out->Row(0), out->Row(0) + vocab);
  EXPECT_LE(MaxAbsDiff(first, JsonRow(prompt["prefill_logits"], 0, vocab)), kTolerance);
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, HfReferenceTest,
    ::testing::Values(std::make_tuple("llama-gqa", "fp32"), std::make_tuple("llama-gqa", "bf16"),
                      std::make_tuple("llama3-rope", "fp32"), std::make_tuple("llama3-rope", "bf16"),
                      std::make_tuple("llama3-rope", "fp32-v4-config"),
                      std::make_tuple("qwen2-bias", "fp32"), std::make_tuple("qwen2-bias", "bf16"),
                      std::make_tuple("opt", "fp32"), std::make_tuple("opt", "bf16")),
    [](const auto& info) {
      std::string name = std::get<0>(info.param) + "_" + std::get<1>(info.param);
      for (char& c : name) {
        if (!isalnum(static_cast<unsigned char>(c))) c = '_';
      }
      return name;
    });

}  // namespace
}  // namespace kvscope::engine

// The real TinyStories-656K model against transformers: each story's next-token
// log-probabilities within 1e-4, perplexity within 0.1%, the greedy continuation identical.
#include <cmath>

#include "engine/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/engine/engine_test_util.h"

namespace kvscope::engine {
namespace {

using ::kvscope::testing::JsonRow;
using ::kvscope::testing::MaxAbsDiff;

constexpr char kModel[] = "models/tinystories-656k";

// log softmax(row)[target], in double.
double LogProb(const float* row, int64_t vocab, int32_t target) {
  double max = row[0];
  for (int64_t i = 1; i < vocab; ++i) max = std::max<double>(max, row[i]);
  double sum = 0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(row[i] - max);
  return row[target] - max - std::log(sum);
}

TEST(TinyStoriesTest, StoryLogProbsAndPerplexity) {
  KVSCOPE_REQUIRE_SHARED(dir, kModel);
  const nlohmann::json ref = testing::ReadJsonOrDie(dir + "/reference.json");
  auto engine = testing::MakeEngine(testing::LoadWeightsOrDie(dir));
  ASSERT_NE(engine, nullptr);
  int64_t seq_id = 100;
  for (const auto& story : ref["stories"]) {
    const auto ids = story["ids"].get<std::vector<int32_t>>();
    const auto expected = story["token_logprobs"].get<std::vector<double>>();
    auto out = engine->Forward({SeqInput{seq_id, ids, 0, true}});
    ASSERT_TRUE(out.ok()) << out.status();
    ASSERT_EQ(out->row_begin[1], static_cast<int64_t>(ids.size()));
    double nll = 0;
    for (size_t i = 0; i + 1 < ids.size(); ++i) {
      const double lp = LogProb(out->Row(i), out->vocab_size, ids[i + 1]);
      EXPECT_NEAR(lp, expected[i], 1e-4) << "story token " << i;
      nll -= lp;
    }
    nll /= static_cast<double>(ids.size() - 1);
    const double ppl = std::exp(nll);
    EXPECT_NEAR(ppl, story["ppl"].get<double>(), 1e-3 * story["ppl"].get<double>());
    EXPECT_NEAR(nll, story["nll_mean"].get<double>(), 1e-4);
    engine->Release(seq_id++);
  }
}

TEST(TinyStoriesTest, GreedyContinuationIsIdentical) {
  KVSCOPE_REQUIRE_SHARED(dir, kModel);
  const nlohmann::json ref = testing::ReadJsonOrDie(dir + "/reference.json");
  const auto& greedy = ref["greedy"];
  auto engine = testing::MakeEngine(testing::LoadWeightsOrDie(dir));
  ASSERT_NE(engine, nullptr);
  const auto prompt = greedy["input_ids"].get<std::vector<int32_t>>();
  const auto expected = greedy["greedy_tokens"].get<std::vector<int32_t>>();
  GenerateOptions options;
  options.keep_logits = true;
  auto results =
      Generate(*engine, {GenerateRequest{prompt, static_cast<int32_t>(expected.size()), {}}}, options);
  ASSERT_TRUE(results.ok()) << results.status();
  const GenerateResult& r = (*results)[0];
  EXPECT_EQ(r.tokens, expected);
  const int64_t vocab = engine->config().vocab_size;
  for (size_t pos = 0; pos < prompt.size(); ++pos) {
    EXPECT_LE(MaxAbsDiff(r.prefill_logits[pos], JsonRow(greedy["prefill_logits"], pos, vocab)), 1e-4);
  }
  for (size_t step = 0; step < expected.size(); ++step) {
    EXPECT_LE(MaxAbsDiff(r.step_logits[step],
                         greedy["greedy_step_logits"][step].get<std::vector<float>>()),
              1e-4)
        << "step " << step;
  }
  // The decoded story matches the reference text.
  auto tokenizer = Tokenizer::Load(dir);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), r.tokens.begin(), r.tokens.end());
  auto text = (*tokenizer)->Decode(all);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, greedy["text"].get<std::string>());
}

}  // namespace
}  // namespace kvscope::engine

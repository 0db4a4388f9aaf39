// `kvscope generate` as a user runs it: the real binary, its output, its errors.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cli/cli_test_util.h"
#include "tests/test_util.h"

namespace kvscope {
namespace {

using ::testing::HasSubstr;

using ::kvscope::testing::Kvscope;
using ::kvscope::testing::Outcome;

std::string TempDir(const std::string& name) { return testing::FreshTempDir("" + name); }

TEST(GenerateCliTest, TellsAStory) {
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  Outcome o = Kvscope("generate --model " + dir + " --prompt 'Once upon a time'");
  ASSERT_EQ(o.code, 0) << o.output;
  // The prompt, then a continuation of 32 tokens (several words), then the speed line.
  ASSERT_EQ(o.output.rfind("Once upon a time", 0), 0u) << o.output;
  const std::string story = o.output.substr(0, o.output.find("\n["));
  EXPECT_GE(std::count(story.begin(), story.end(), ' '), 15) << story;
  EXPECT_THAT(o.output, HasSubstr("tokens/s"));
}

TEST(GenerateCliTest, LogitsOutMatchesTransformers) {
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  const nlohmann::json ref =
      nlohmann::json::parse(testing::ReadFileOrDie(dir + "/reference.json"))["greedy"];
  std::string ids;
  for (int id : ref["input_ids"]) ids += (ids.empty() ? "" : ",") + std::to_string(id);
  const std::string out = TempDir("logits") + "/logits.json";
  Outcome o = Kvscope("generate --model " + dir + " --prompt-ids " + ids +
                      " --max-new-tokens 32 --ignore-eos --logits-out " + out);
  ASSERT_EQ(o.code, 0) << o.output;
  const nlohmann::json got = nlohmann::json::parse(testing::ReadFileOrDie(out));
  EXPECT_EQ(got["prompt_ids"], ref["input_ids"]);
  EXPECT_EQ(got["tokens"], ref["greedy_tokens"]);
  ASSERT_EQ(got["prefill_logits"].size(), ref["input_ids"].size());
  const size_t vocab = got["prefill_logits"][0].size();
  double worst = 0;
  for (size_t p = 0; p < got["prefill_logits"].size(); ++p) {
    for (size_t v = 0; v < vocab; ++v) {
      worst = std::max(worst, std::fabs(got["prefill_logits"][p][v].get<double>() -
                                        ref["prefill_logits"][p * vocab + v].get<double>()));
    }
  }
  ASSERT_EQ(got["step_logits"].size(), 32u);
  for (size_t s = 0; s < 32; ++s) {
    for (size_t v = 0; v < vocab; ++v) {
      worst = std::max(worst, std::fabs(got["step_logits"][s][v].get<double>() -
                                        ref["greedy_step_logits"][s][v].get<double>()));
    }
  }
  EXPECT_LE(worst, 1e-4);
}

TEST(GenerateCliTest, TensorParallelGivesTheSameStory) {
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  Outcome one = Kvscope("generate --model " + dir + " --prompt 'The cat' --max-new-tokens 20");
  Outcome two = Kvscope("generate --model " + dir + " --prompt 'The cat' --max-new-tokens 20 --tp 2");
  ASSERT_EQ(one.code, 0) << one.output;
  ASSERT_EQ(two.code, 0) << two.output;
  EXPECT_EQ(one.output.substr(0, one.output.find('[')), two.output.substr(0, two.output.find('[')));
}

TEST(GenerateCliTest, SampledOutputIsReproducible) {
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  const std::string args = "generate --model " + dir +
                           " --prompt 'A dog' --temperature 0.8 --top-p 0.9 --top-k 40 --seed 3";
  Outcome a = Kvscope(args), b = Kvscope(args);
  ASSERT_EQ(a.code, 0) << a.output;
  EXPECT_EQ(a.output.substr(0, a.output.find('[')), b.output.substr(0, b.output.find('[')));
}

TEST(GenerateCliTest, RunsAPreset) {
  Outcome o = Kvscope("generate --model preset:llama-tiny --prompt-ids 1,2,3 --max-new-tokens 4");
  ASSERT_EQ(o.code, 0) << o.output;
  EXPECT_THAT(o.output, HasSubstr("tokens/s"));
}

TEST(GenerateCliTest, HelpListsFlags) {
  Outcome o = Kvscope("generate --help");
  EXPECT_EQ(o.code, 0);
  for (const char* flag : {"--model", "--tp", "--prompt", "--prompt-ids", "--max-new-tokens",
                           "--temperature", "--top-p", "--top-k", "--seed", "--logits-out"}) {
    EXPECT_THAT(o.output, HasSubstr(flag));
  }
  EXPECT_EQ(Kvscope("--help").code, 0);
}

// Each bad input: non-zero exit and a one-line message naming what is wrong.
TEST(GenerateCliTest, BadInputGetsAClearError) {
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  struct Case {
    std::string args;
    std::string message;
  };
  const std::string bad_config = TempDir("bad_config");
  std::ofstream(bad_config + "/config.json") << "{ not json";
  const std::string no_weights = TempDir("no_weights");
  std::filesystem::copy_file(dir + "/config.json", no_weights + "/config.json");
  std::string long_prompt = "1";
  for (int i = 0; i < 600; ++i) long_prompt += ",80";
  const std::vector<Case> cases = {
      {"generate --model /nonexistent/model --prompt hi", "/nonexistent/model"},
      {"generate --model " + bad_config + " --prompt hi", "config.json"},
      {"generate --model " + no_weights + " --prompt hi", "model.safetensors"},
      {"generate --model " + dir + " --prompt hi --tp 3", "sizes that work: 1, 2, 4, 8"},
      {"generate --model " + dir + " --prompt-ids 1,99999", "99999"},
      {"generate --model " + dir + " --prompt-ids 1,x", "'x'"},
      {"generate --model " + dir + " --prompt-ids " + long_prompt, "context"},
      {"generate --model " + dir + " --prompt hi --top-p 2", "top_p"},
      {"generate --model " + dir + " --prompt hi --bogus 1", "unknown flag --bogus"},
      {"generate --model " + dir, "--prompt"},
      {"generate --model preset:llama-tiny --prompt hi", "--prompt-ids"},
      {"generate --model preset:no-such-model --prompt-ids 1", "llama-2-7b"},
      {"frobnicate", "unknown subcommand"},
  };
  for (const Case& c : cases) {
    Outcome o = Kvscope(c.args);
    EXPECT_NE(o.code, 0) << c.args;
    EXPECT_LT(o.code, 128) << "crashed: " << c.args << "\n" << o.output;
    EXPECT_THAT(o.output, HasSubstr(c.message)) << c.args;
  }
}

}  // namespace
}  // namespace kvscope

// File: tests/tokenizer/tokenizer_reference_test.cc
//
// The tinystories-656k tokenizer against the outputs of transformers 5.17 recorded in
// ../shared/models/tinystories-656k/reference.json, and (without tokenizer_config.json,
// i.e. the file's own pipeline as Hugging Face tokenizers runs it) against outputs of
// @huggingface/tokenizers recorded in tests/data/tokenizer/tinystories_plain.json.
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace kvscope::engine {
namespace {

using ::kvscope::testing::ReadFileOrDie;
using ::kvscope::testing::SharedPath;
using ::kvscope::testing::TestDataDir;
using ::testing::ElementsAreArray;

constexpr char kModel[] = "models/tinystories-656k/tokenizer.json";

std::unique_ptr<Tokenizer> LoadTinyStories() {
  auto tokenizer = Tokenizer::Load(SharedPath("models/tinystories-656k"));
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? *std::move(tokenizer) : nullptr;
}

TEST(TinyStoriesTokenizerTest, MatchesTransformersReferenceBothWays) {
  KVSCOPE_REQUIRE_SHARED(tok_path, kModel);
  auto tokenizer = LoadTinyStories();
  ASSERT_NE(tokenizer, nullptr);
  auto reference =
      nlohmann::json::parse(ReadFileOrDie(SharedPath("models/tinystories-656k/reference.json")));
  ASSERT_EQ(reference["tokenizer"].size(), 7u);
  for (const auto& c : reference["tokenizer"]) {
    const std::string text = c["text"];
    const std::vector<int32_t> ids = c["ids"];
    auto encoded = tokenizer->Encode(text);
    ASSERT_TRUE(encoded.ok()) << encoded.status();
    EXPECT_THAT(*encoded, ElementsAreArray(ids)) << "text: " << text;
    auto decoded = tokenizer->Decode(ids, /*skip_special_tokens=*/true);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, c["decoded"].get<std::string>()) << "text: " << text;
  }
}

TEST(TinyStoriesTokenizerTest, MatchesReferenceStories) {
  KVSCOPE_REQUIRE_SHARED(tok_path, kModel);
  KVSCOPE_REQUIRE_SHARED(stories_path, "data/stories.txt");
  auto tokenizer = LoadTinyStories();
  ASSERT_NE(tokenizer, nullptr);
  auto reference =
      nlohmann::json::parse(ReadFileOrDie(SharedPath("models/tinystories-656k/reference.json")));
  std::istringstream stories(ReadFileOrDie(stories_path));
  std::string line;
  size_t i = 0;
  while (std::getline(stories, line)) {
    ASSERT_LT(i, reference["stories"].size());
    const std::vector<int32_t> ids = reference["stories"][i]["ids"];
    auto encoded = tokenizer->Encode(line);
    ASSERT_TRUE(encoded.ok()) << encoded.status();
    EXPECT_THAT(*encoded, ElementsAreArray(ids)) << "story " << i;
    auto decoded = tokenizer->Decode(ids);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, line) << "story " << i;
    ++i;
  }
  EXPECT_EQ(i, reference["stories"].size());
}

TEST(TinyStoriesTokenizerTest, SpecialIdsAndVocab) {
  KVSCOPE_REQUIRE_SHARED(tok_path, kModel);
  auto tokenizer = LoadTinyStories();
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->vocab_size(), 2048);
  EXPECT_EQ(tokenizer->bos_id(), 1);
  EXPECT_EQ(tokenizer->eos_id(), 2);
  EXPECT_EQ(tokenizer->TokenString(80), "\xE2\x96\x81");
  EXPECT_EQ(tokenizer->TokenString(1), "<|start_story|>");
  EXPECT_EQ(tokenizer->TokenString(5000), "");
  auto no_bos = tokenizer->Encode("Once upon a time", /*add_special_tokens=*/false);
  ASSERT_TRUE(no_bos.ok());
  EXPECT_THAT(*no_bos, ElementsAreArray({80, 147, 201, 282, 57}));
  auto empty = tokenizer->Encode("");
  ASSERT_TRUE(empty.ok());
  EXPECT_THAT(*empty, ElementsAreArray({1}));
  // Special tokens are kept when asked.
  auto kept = tokenizer->Decode(std::vector<int32_t>{1, 80, 147, 2}, false);
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(*kept, "<|start_story|> On<|end_story|>");
}

// The file's own pipeline (Prepend + Replace normalizer, <unk> for unknown characters),
// as tokenizers runs it when no tokenizer_config.json asks for transformers' Llama rules.
TEST(TinyStoriesTokenizerTest, PlainPipelineMatchesTokenizersJs) {
  KVSCOPE_REQUIRE_SHARED(tok_path, kModel);
  auto tokenizer = Tokenizer::FromJson(ReadFileOrDie(tok_path), "", tok_path);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto fixture =
      nlohmann::json::parse(ReadFileOrDie(TestDataDir() + "/tokenizer/tinystories_plain.json"));
  ASSERT_GE(fixture["cases"].size(), 10u);
  for (const auto& c : fixture["cases"]) {
    const std::string text = c["text"];
    const std::vector<int32_t> ids = c["ids"];
    auto encoded = (*tokenizer)->Encode(text);
    ASSERT_TRUE(encoded.ok()) << encoded.status();
    EXPECT_THAT(*encoded, ElementsAreArray(ids)) << "text: " << text;
    auto decoded = (*tokenizer)->Decode(ids, true);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, c["decoded"].get<std::string>()) << "text: " << text;
  }
}

}  // namespace
}  // namespace kvscope::engine

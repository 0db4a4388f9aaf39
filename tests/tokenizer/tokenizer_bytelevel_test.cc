// File: tests/tokenizer/tokenizer_bytelevel_test.cc
//
// Byte-level BPE tokenizers in the styles of Llama 3 (Split regex + ByteLevel without
// regex, TemplateProcessing BOS, ignore_merges, array merges), GPT-2 (ByteLevel with the
// GPT-2 regex, string merges, clean-up on decode) and Qwen2 (NFC + Split regex), checked
// against outputs of @huggingface/tokenizers recorded by tests/data/tokenizer/
// make_fixtures.mjs (see tests/data/tokenizer/README.md).
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
using ::kvscope::testing::TestDataDir;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

class ByteLevelFixtureTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::string Dir() const { return TestDataDir() + "/tokenizer/" + GetParam(); }
};

TEST_P(ByteLevelFixtureTest, EncodeAndDecodeMatchTokenizersJs) {
  auto tokenizer = Tokenizer::Load(Dir());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto expected = nlohmann::json::parse(ReadFileOrDie(Dir() + "/expected.json"));
  ASSERT_GE(expected["cases"].size(), 20u);
  for (const auto& c : expected["cases"]) {
    const std::string text = c["text"];
    SCOPED_TRACE("text: " + text);
    const std::vector<int32_t> ids = c["ids"];
    const std::vector<int32_t> ids_no_special = c["ids_no_special"];
    auto encoded = (*tokenizer)->Encode(text);
    ASSERT_TRUE(encoded.ok()) << encoded.status();
    EXPECT_THAT(*encoded, ElementsAreArray(ids));
    auto bare = (*tokenizer)->Encode(text, /*add_special_tokens=*/false);
    ASSERT_TRUE(bare.ok()) << bare.status();
    EXPECT_THAT(*bare, ElementsAreArray(ids_no_special));
    auto decoded = (*tokenizer)->Decode(ids, /*skip_special_tokens=*/true);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, c["decoded"].get<std::string>());
    auto with_special = (*tokenizer)->Decode(ids, /*skip_special_tokens=*/false);
    ASSERT_TRUE(with_special.ok()) << with_special.status();
    EXPECT_EQ(*with_special, c["decoded_with_special"].get<std::string>());
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ByteLevelFixtureTest,
                         ::testing::Values("llama3_style", "gpt2_style", "qwen2_style"));

TEST(ByteLevelTokenizerTest, Llama3StyleSpecialIds) {
  auto tokenizer = Tokenizer::Load(TestDataDir() + "/tokenizer/llama3_style");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->vocab_size(), 580);
  EXPECT_EQ((*tokenizer)->bos_id(), 576);
  EXPECT_EQ((*tokenizer)->eos_id(), 578);
  EXPECT_EQ((*tokenizer)->TokenString(576), "<|begin_of_text|>");
  EXPECT_EQ((*tokenizer)->TokenString(65), "A");
  // Ids 0..255 are the bytes; " " (0x20) is shown as U+0120 "Ġ".
  EXPECT_EQ((*tokenizer)->TokenString(32), "\xC4\xA0");
}

TEST(ByteLevelTokenizerTest, DecodesPartialUtf8Lossily) {
  auto tokenizer = Tokenizer::Load(TestDataDir() + "/tokenizer/gpt2_style");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  // The byte tokens of "é" are ids 195 ("Ã") and 169 ("©") in GPT-2's table.
  auto whole = (*tokenizer)->Decode(std::vector<int32_t>{195, 169});
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(*whole, "\xC3\xA9");
  auto half = (*tokenizer)->Decode(std::vector<int32_t>{72, 195});
  ASSERT_TRUE(half.ok());
  EXPECT_EQ(*half, "H\xEF\xBF\xBD");
}

TEST(ByteLevelTokenizerTest, NfcRejectsDecomposedText) {
  auto tokenizer = Tokenizer::Load(TestDataDir() + "/tokenizer/qwen2_style");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto encoded = (*tokenizer)->Encode("cafe\xCC\x81");  // "e" + combining acute
  ASSERT_FALSE(encoded.ok());
  EXPECT_EQ(encoded.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(encoded.status().message(), HasSubstr("byte offset 4"));
  EXPECT_TRUE((*tokenizer)->Encode("caf\xC3\xA9").ok());  // precomposed é is fine
}

}  // namespace
}  // namespace kvscope::engine

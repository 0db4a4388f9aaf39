// File: tests/tokenizer/tokenizer_errors_test.cc
//
// Bad input: every error is a one-line status naming the file and the field.
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
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using Json = nlohmann::json;

std::string Fixture() {
  return ReadFileOrDie(TestDataDir() + "/tokenizer/llama3_style/tokenizer.json");
}

absl::Status LoadError(const Json& doc, const std::string& config = "") {
  auto t = Tokenizer::FromJson(doc.dump(), config, "dir/tokenizer.json");
  return t.ok() ? absl::OkStatus() : t.status();
}

void ExpectError(const absl::Status& status, const std::string& field, const std::string& what) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(std::string(status.message()), AllOf(HasSubstr("dir/tokenizer"), HasSubstr(field),
                                                   HasSubstr(what), Not(HasSubstr("\n"))));
}

TEST(TokenizerErrorsTest, MissingFilesAndBadJson) {
  auto missing = Tokenizer::Load("/nonexistent/model");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("/nonexistent/model/tokenizer.json"));
  auto bad = Tokenizer::FromJson("{\"model\": \n[1, 2", "", "dir/tokenizer.json");
  ExpectError(bad.status(), "dir/tokenizer.json", "not valid JSON");
  ExpectError(LoadError(Json::array()), "(root)", "expected a JSON object");
}

TEST(TokenizerErrorsTest, ModelFields) {
  Json doc = Json::parse(Fixture());
  Json d = doc;
  d.erase("model");
  ExpectError(LoadError(d), "field model", "missing");
  d = doc;
  d["model"]["type"] = "Unigram";
  ExpectError(LoadError(d), "model.type", "unsupported model \"Unigram\"");
  d = doc;
  d["model"]["vocab"]["a"] = "seven";
  ExpectError(LoadError(d), "model.vocab.\"a\"", "expected an integer id");
  d = doc;
  d["model"]["vocab"]["a"] = -3;
  ExpectError(LoadError(d), "model.vocab.\"a\"", "out of range");
  d = doc;
  d["model"]["vocab"]["zzz"] = 65;
  ExpectError(LoadError(d), "model.vocab.\"", "also used by");
  d = doc;
  d["model"]["merges"][3] = Json::array({"x", "nope"});
  ExpectError(LoadError(d), "model.merges[3]", "token \"nope\" is not in model.vocab");
  d = doc;
  d["model"]["merges"][0] = "nospace";
  ExpectError(LoadError(d), "model.merges[0]", "is not \"left right\"");
  d = doc;
  d["model"]["merges"][0] = Json::array({"Q", "Z"});  // "QZ" is not a token
  ExpectError(LoadError(d), "model.merges[0]", "merged token \"QZ\"");
  d = doc;
  d["model"]["unk_token"] = "<unk>";
  ExpectError(LoadError(d), "model.unk_token", "not in model.vocab");
  d = doc;
  d["model"]["dropout"] = 0.1;
  ExpectError(LoadError(d), "model.dropout", "only null or 0");
  d = doc;
  d["model"]["ignore_merges"] = "yes";
  ExpectError(LoadError(d), "model.ignore_merges", "expected true or false");
}

TEST(TokenizerErrorsTest, ComponentFields) {
  Json doc = Json::parse(Fixture());
  Json d = doc;
  d["normalizer"] = {{"type", "NFKD"}};
  ExpectError(LoadError(d), "normalizer.type", "unsupported normalizer \"NFKD\"");
  d = doc;
  d["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  ExpectError(LoadError(d), "pre_tokenizer.pretokenizers[0].pattern.Regex", "does not compile");
  d = doc;
  d["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Sideways";
  ExpectError(LoadError(d), "pre_tokenizer.pretokenizers[0].behavior", "unknown behavior");
  d = doc;
  d["pre_tokenizer"]["pretokenizers"][1] = 5;
  ExpectError(LoadError(d), "pre_tokenizer.pretokenizers[1]", "expected an object");
  d = doc;
  d["decoder"] = {{"type", "Strip"}, {"content", "ab"}, {"start", 1}, {"stop", 0}};
  ExpectError(LoadError(d), "decoder.content", "exactly one character");
  d = doc;
  d["decoder"] = {{"type", "WordPiece"}};
  ExpectError(LoadError(d), "decoder.type", "unsupported decoder");
  d = doc;
  d["post_processor"]["processors"][1]["single"][0]["SpecialToken"]["id"] = "<nope>";
  ExpectError(LoadError(d), "post_processor.processors[1].special_tokens.\"<nope>\"", "missing");
  d = doc;
  d["added_tokens"][1]["id"] = 1.5;
  ExpectError(LoadError(d), "added_tokens[1].id", "expected an integer id");
  d = doc;
  d["added_tokens"][1]["id"] = d["added_tokens"][0]["id"];
  ExpectError(LoadError(d), "added_tokens[1].id", "added twice");
  // Deeply nested Sequences are refused, not recursed into without bound.
  Json nested = {{"type", "Lowercase"}};
  for (int i = 0; i < 40; ++i) nested = {{"type", "Sequence"}, {"normalizers", {nested}}};
  d = doc;
  d["normalizer"] = nested;
  ExpectError(LoadError(d), "normalizer.normalizers[0]", "nesting too deep");
}

TEST(TokenizerErrorsTest, ConfigFields) {
  Json doc = Json::parse(Fixture());
  auto t = Tokenizer::FromJson(doc.dump(), "{\"add_bos_token\": \"yes\"}", "dir/tokenizer.json");
  EXPECT_THAT(std::string(t.status().message()),
              AllOf(HasSubstr("dir/tokenizer_config.json"), HasSubstr("add_bos_token")));
  t = Tokenizer::FromJson(doc.dump(), "{\"bos_token\": \"<missing>\"}", "dir/tokenizer.json");
  EXPECT_THAT(std::string(t.status().message()),
              AllOf(HasSubstr("dir/tokenizer_config.json"), HasSubstr("bos_token"),
                    HasSubstr("not in the vocabulary")));
  t = Tokenizer::FromJson(doc.dump(), "not json", "dir/tokenizer.json");
  EXPECT_THAT(std::string(t.status().message()),
              HasSubstr("dir/tokenizer_config.json: not valid JSON"));
  doc["post_processor"] = nullptr;
  t = Tokenizer::FromJson(doc.dump(), "{\"add_eos_token\": true}", "dir/tokenizer.json");
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("add_eos_token: no eos_token given"));
}

TEST(TokenizerErrorsTest, InvalidUtf8AndBadIds) {
  auto t = Tokenizer::Load(TestDataDir() + "/tokenizer/llama3_style");
  ASSERT_TRUE(t.ok());
  auto encoded = (*t)->Encode(
      "abc\xFF"
      "def");
  EXPECT_EQ(encoded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(encoded.status().message()), HasSubstr("byte offset 3"));
  auto decoded = (*t)->Decode(std::vector<int32_t>{1, 2, 580});
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(decoded.status().message()), HasSubstr("id 580 at position 2"));
  decoded = (*t)->Decode(std::vector<int32_t>{-1});
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*t)->TokenString(-1), "");
  auto empty = (*t)->Decode(std::vector<int32_t>{});
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(*empty, "");
}

}  // namespace
}  // namespace kvscope::engine

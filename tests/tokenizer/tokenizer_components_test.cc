// File: tests/tokenizer/tokenizer_components_test.cc
//
// Unit tests of the tokenizer's parts on small hand-written tokenizer.json documents, with
// expected values derived by hand from Hugging Face tokenizers' documented behaviour.
#include <string>
#include <vector>

#include "engine/tokenizer.h"
#include "engine/tokenizer_pretokenize.h"
#include "engine/tokenizer_unicode.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvscope::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using Json = nlohmann::json;
namespace ti = tokenizer_internal;

// A BPE tokenizer.json with the given vocab (token -> id) and merges, no pipeline.
Json Doc(const Json& vocab, const Json& merges) {
  return Json{{"version", "1.0"},
              {"added_tokens", Json::array()},
              {"normalizer", nullptr},
              {"pre_tokenizer", nullptr},
              {"post_processor", nullptr},
              {"decoder", nullptr},
              {"model",
               {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", false},
                {"vocab", vocab},
                {"merges", merges}}}};
}

std::unique_ptr<Tokenizer> Make(const Json& doc, const Json& config = nullptr) {
  auto t = Tokenizer::FromJson(doc.dump(), config.is_null() ? "" : config.dump(), "test.json");
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

std::vector<int32_t> Ids(const Tokenizer& t, const std::string& text, bool special = true) {
  auto ids = t.Encode(text, special);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{-999};
}

std::string Text(const Tokenizer& t, const std::vector<int32_t>& ids, bool skip = true) {
  auto text = t.Decode(ids, skip);
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? *text : "<error>";
}

const Json kAbcVocab = {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}, {"abc", 5}, {"aa", 6}};

TEST(BpeTest, LowestRankMergesFirst) {
  auto t = Make(Doc(kAbcVocab, {"b c", "a b", "a bc"}));
  EXPECT_THAT(Ids(*t, "abc"), ElementsAre(5));  // bc first, then a+bc
  auto u = Make(Doc(kAbcVocab, {"a b", "b c"}));
  EXPECT_THAT(Ids(*u, "abc"), ElementsAre(3, 2));  // ab first; "ab c" is no merge
}

TEST(BpeTest, EqualRanksMergeLeftmostFirst) {
  auto t = Make(Doc(kAbcVocab, {"a a"}));
  EXPECT_THAT(Ids(*t, "aaa"), ElementsAre(6, 0));
  EXPECT_THAT(Ids(*t, "aaaaa"), ElementsAre(6, 6, 0));
}

TEST(BpeTest, ArrayAndStringMergesAgree) {
  auto s = Make(Doc(kAbcVocab, {"b c", "a bc"}));
  auto a = Make(Doc(kAbcVocab, Json::array({Json::array({"b", "c"}), Json::array({"a", "bc"})})));
  for (const char* text : {"abc", "cab", "bcbca", "aabcc"}) {
    EXPECT_EQ(Ids(*s, text), Ids(*a, text)) << text;
  }
}

TEST(BpeTest, IgnoreMergesEmitsWholeWordsFromTheVocab) {
  Json doc = Doc(kAbcVocab, {"a b"});
  EXPECT_THAT(Ids(*Make(doc), "abc"), ElementsAre(3, 2));
  doc["model"]["ignore_merges"] = true;
  EXPECT_THAT(Ids(*Make(doc), "abc"), ElementsAre(5));
  EXPECT_THAT(Ids(*Make(doc), "abcc"), ElementsAre(3, 2, 2));  // not in vocab: merges apply
}

TEST(BpeTest, UnknownCharactersBecomeUnkFusedOrNot) {
  Json doc = Doc({{"<unk>", 0}, {"a", 1}}, Json::array());
  doc["model"]["unk_token"] = "<unk>";
  EXPECT_THAT(Ids(*Make(doc),
                  "a\xC2\xA7\xC2\xA7"
                  "a"),
              ElementsAre(1, 0, 0, 1));
  doc["model"]["fuse_unk"] = true;
  EXPECT_THAT(Ids(*Make(doc),
                  "a\xC2\xA7\xC2\xA7"
                  "a"),
              ElementsAre(1, 0, 1));
  doc["model"]["unk_token"] = nullptr;  // no unk: dropped
  EXPECT_THAT(Ids(*Make(doc),
                  "a\xC2\xA7\xC2\xA7"
                  "a"),
              ElementsAre(1, 1));
}

TEST(BpeTest, ByteFallbackUsesByteTokensAndDecodesThem) {
  Json vocab = {{"<unk>", 0}, {"a", 1}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    snprintf(name, sizeof(name), "<0x%02X>", b);
    vocab[name] = 2 + b;
  }
  Json doc = Doc(vocab, Json::array());
  doc["model"]["unk_token"] = "<unk>";
  doc["model"]["byte_fallback"] = true;
  doc["decoder"] = {{"type", "Sequence"},
                    {"decoders", {{{"type", "ByteFallback"}}, {{"type", "Fuse"}}}}};
  auto t = Make(doc);
  EXPECT_THAT(Ids(*t, "a\xC3\xA9"), ElementsAre(1, 2 + 0xC3, 2 + 0xA9));
  EXPECT_EQ(Text(*t, {1, 2 + 0xC3, 2 + 0xA9}), "a\xC3\xA9");
  // An incomplete sequence becomes one U+FFFD per byte token.
  EXPECT_EQ(Text(*t, {2 + 0xE2, 2 + 0x82, 1}),
            "\xEF\xBF\xBD\xEF\xBF\xBD"
            "a");
}

TEST(BpeTest, SubwordPrefixAndWordSuffix) {
  Json doc = Doc({{"a", 0}, {"##b", 1}, {"ab", 2}}, {"a ##b"});
  doc["model"]["continuing_subword_prefix"] = "##";
  EXPECT_THAT(Ids(*Make(doc), "ab"), ElementsAre(2));
  Json suffixed = Doc({{"a", 0}, {"b</w>", 1}, {"ab</w>", 2}}, {"a b</w>"});
  suffixed["model"]["end_of_word_suffix"] = "</w>";
  EXPECT_THAT(Ids(*Make(suffixed), "ab"), ElementsAre(2));
}

TEST(BpeTest, LongWordIsFast) {
  // 200k symbols in one word: the merge loop must be O(n log n).
  auto t = Make(Doc(kAbcVocab, {"a a", "b c", "a bc"}));
  std::string text;
  for (int i = 0; i < 50000; ++i) text += "abca";
  auto ids = t->Encode(text);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->size(), 100000u);  // "abc" "a" per repeat
}

// tokenizers' documented example for "the-final--countdown" split on "-".
TEST(SplitTest, DelimiterBehaviours) {
  const std::string text = "the-final--countdown";
  std::vector<std::pair<size_t, size_t>> dashes = {{3, 4}, {9, 10}, {10, 11}};
  auto pieces = [&](ti::SplitBehavior b, bool invert = false) {
    std::vector<std::string> out;
    for (auto [begin, end] : ti::SplitByMatches(text.size(), dashes, b, invert)) {
      out.push_back(text.substr(begin, end - begin));
    }
    return out;
  };
  EXPECT_THAT(pieces(ti::SplitBehavior::kRemoved), ElementsAre("the", "final", "countdown"));
  EXPECT_THAT(pieces(ti::SplitBehavior::kIsolated),
              ElementsAre("the", "-", "final", "-", "-", "countdown"));
  EXPECT_THAT(pieces(ti::SplitBehavior::kMergedWithPrevious),
              ElementsAre("the-", "final-", "-", "countdown"));
  EXPECT_THAT(pieces(ti::SplitBehavior::kMergedWithNext),
              ElementsAre("the", "-final", "-", "-countdown"));
  EXPECT_THAT(pieces(ti::SplitBehavior::kContiguous),
              ElementsAre("the", "-", "final", "--", "countdown"));
  EXPECT_THAT(pieces(ti::SplitBehavior::kRemoved, /*invert=*/true), ElementsAre("-", "-", "-"));
}

// A vocabulary of single characters, so that ids show the pre-tokenized pieces' text.
Json CharDoc(const std::string& chars) {
  Json vocab = Json::object();
  size_t pos = 0;
  while (pos < chars.size()) {
    size_t start = pos;
    ti::NextCodePoint(chars, &pos);
    vocab[chars.substr(start, pos - start)] = static_cast<int>(vocab.size());
  }
  return Doc(vocab, Json::array());
}

TEST(PreTokenizerTest, SplitPatternPiecesReachTheModelSeparately) {
  // Vocab has "ab" and merge "a b": a split between a and b prevents the merge.
  Json doc = Doc({{"a", 0}, {"b", 1}, {"ab", 2}, {"-", 3}}, {"a b"});
  doc["pre_tokenizer"] = {{"type", "Split"},
                          {"pattern", {{"String", "-"}}},
                          {"behavior", "Removed"},
                          {"invert", false}};
  EXPECT_THAT(Ids(*Make(doc), "ab-ab"), ElementsAre(2, 2));
  doc["pre_tokenizer"] = {{"type", "Split"},
                          {"pattern", {{"Regex", "b"}}},
                          {"behavior", "Isolated"},
                          {"invert", false}};
  EXPECT_THAT(Ids(*Make(doc), "ab-ab"), ElementsAre(0, 1, 3, 0, 1));
}

TEST(PreTokenizerTest, DigitsIndividualOrContiguous) {
  Json doc = Doc({{"1", 0}, {"2", 1}, {"12", 2}, {"x", 3}}, {"1 2"});
  doc["pre_tokenizer"] = {{"type", "Digits"}, {"individual_digits", true}};
  EXPECT_THAT(Ids(*Make(doc), "x12"), ElementsAre(3, 0, 1));
  doc["pre_tokenizer"]["individual_digits"] = false;
  EXPECT_THAT(Ids(*Make(doc), "x12"), ElementsAre(3, 2));
}

TEST(PreTokenizerTest, MetaspaceSchemesAndSplit) {
  const std::string m = "\xE2\x96\x81";  // ▁
  Json doc = Doc({{m, 0}, {"a", 1}, {"b", 2}, {m + "a", 3}, {m + "b", 4}, {"<s>", 5}},
                 Json::array({Json::array({m, "a"}), Json::array({m, "b"})}));
  doc["added_tokens"] = {{{"id", 5},
                          {"content", "<s>"},
                          {"special", true},
                          {"normalized", false},
                          {"lstrip", false},
                          {"rstrip", false},
                          {"single_word", false}}};
  doc["pre_tokenizer"] = {
      {"type", "Metaspace"}, {"replacement", m}, {"prepend_scheme", "always"}, {"split", true}};
  EXPECT_THAT(Ids(*Make(doc), "a b"), ElementsAre(3, 4));
  EXPECT_THAT(Ids(*Make(doc), " a"), ElementsAre(3));  // already starts with ▁
  EXPECT_THAT(Ids(*Make(doc), "<s>a"), ElementsAre(5, 3));
  doc["pre_tokenizer"]["prepend_scheme"] = "first";
  EXPECT_THAT(Ids(*Make(doc), "a<s>a"), ElementsAre(3, 5, 1));  // only at the very start
  doc["pre_tokenizer"]["prepend_scheme"] = "never";
  EXPECT_THAT(Ids(*Make(doc), "a b"), ElementsAre(1, 4));
  doc["decoder"] = {
      {"type", "Metaspace"}, {"replacement", m}, {"prepend_scheme", "always"}, {"split", true}};
  EXPECT_EQ(Text(*Make(doc), {3, 4, 0, 1}), "a b a");
}

TEST(PreTokenizerTest, ByteLevelPrefixSpaceAndRegex) {
  const auto& alphabet = ti::ByteLevelAlphabet();
  Json vocab = Json::object();
  for (int b = 0; b < 256; ++b) vocab[alphabet[b]] = b;
  vocab[alphabet[' '] + "a"] = 256;
  Json doc = Doc(vocab, Json::array({Json::array({alphabet[' '], "a"})}));
  doc["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}};
  doc["decoder"] = {{"type", "ByteLevel"}};
  auto t = Make(doc);
  EXPECT_THAT(Ids(*t, "a a"), ElementsAre(256, 256));
  EXPECT_THAT(Ids(*t, "a's"), ElementsAre(256, '\'', 's'));  // 's is its own piece
  EXPECT_EQ(Text(*t, {256, 256}), " a a");
}

TEST(NormalizerTest, LowercaseStripReplacePrepend) {
  Json doc = CharDoc("abc\xC3\xA0\xCF\x83\xCF\x82_x ");  // a b c à σ ς _ x space
  doc["normalizer"] = {{"type", "Sequence"},
                       {"normalizers",
                        {{{"type", "Strip"}, {"strip_left", true}, {"strip_right", true}},
                         {{"type", "Lowercase"}},
                         {{"type", "Replace"}, {"pattern", {{"Regex", "\\s+"}}}, {"content", "_"}},
                         {{"type", "Prepend"}, {"prepend", "x"}}}}};
  doc["decoder"] = {{"type", "Fuse"}};
  auto t = Make(doc);
  EXPECT_EQ(Text(*t, Ids(*t, "  AB \t C\xC3\x80 ")), "xab_c\xC3\xA0");
  // Final sigma: ΣΣ -> σς at the end of a word.
  EXPECT_EQ(Text(*t, Ids(*t, "A\xCE\xA3\xCE\xA3")), "xa\xCF\x83\xCF\x82");
  EXPECT_THAT(Ids(*t, "   "), ElementsAre());  // Prepend leaves "" alone
}

TEST(AddedTokensTest, LongestMatchStripAndSingleWord) {
  Json doc = CharDoc("abc ");
  auto added = [](int id, const std::string& content, bool lstrip, bool rstrip, bool single) {
    return Json{
        {"id", id},         {"content", content}, {"special", false},     {"normalized", false},
        {"lstrip", lstrip}, {"rstrip", rstrip},   {"single_word", single}};
  };
  doc["added_tokens"] = {added(10, "ab", false, false, false),
                         added(11, "abc", false, false, false), added(12, "c", true, true, false),
                         added(13, "b", false, false, true)};
  auto t = Make(doc);
  EXPECT_THAT(Ids(*t, "abca"), ElementsAre(11, 0));        // longest wins
  EXPECT_THAT(Ids(*t, "a  c  a"), ElementsAre(0, 12, 0));  // c swallows the spaces
  EXPECT_THAT(Ids(*t, "b"), ElementsAre(13));
  EXPECT_THAT(Ids(*t, "a b a"), ElementsAre(0, 3, 13, 3, 0));
  EXPECT_THAT(Ids(*t, "bb"), ElementsAre(1, 1));  // inside a word: not a single word
}

TEST(AddedTokensTest, SkipSpecialTokensOnDecode) {
  Json doc = CharDoc("ab");
  doc["added_tokens"] = {
      {{"id", 5}, {"content", "<s>"}, {"special", true}, {"normalized", false}},
      {{"id", 6}, {"content", "<t>"}, {"special", false}, {"normalized", false}}};
  doc["decoder"] = {{"type", "Fuse"}};
  auto t = Make(doc);
  EXPECT_THAT(Ids(*t, "<s>a<t>b"), ElementsAre(5, 0, 6, 1));
  EXPECT_EQ(Text(*t, {5, 0, 6, 1}, true), "a<t>b");
  EXPECT_EQ(Text(*t, {5, 0, 6, 1}, false), "<s>a<t>b");
  EXPECT_EQ(t->vocab_size(), 7);
}

TEST(PostProcessorTest, ConfigBosEosWhenNoPostProcessor) {
  Json doc = CharDoc("ab");
  doc["added_tokens"] = {{{"id", 5}, {"content", "<s>"}, {"special", true}},
                         {{"id", 6}, {"content", "</s>"}, {"special", true}}};
  Json config = {{"add_bos_token", true},
                 {"add_eos_token", true},
                 {"bos_token", {{"content", "<s>"}, {"lstrip", false}}},
                 {"eos_token", "</s>"}};
  auto t = Make(doc, config);
  EXPECT_THAT(Ids(*t, "ab"), ElementsAre(5, 0, 1, 6));
  EXPECT_THAT(Ids(*t, "ab", false), ElementsAre(0, 1));
  EXPECT_EQ(t->bos_id(), 5);
  EXPECT_EQ(t->eos_id(), 6);
  // A post_processor wins over the config.
  doc["post_processor"] = {{"type", "BertProcessing"}, {"cls", {"</s>", 6}}, {"sep", {"<s>", 5}}};
  EXPECT_THAT(Ids(*Make(doc, config), "a"), ElementsAre(6, 0, 5));
  doc["post_processor"] = {
      {"type", "Sequence"},
      {"processors",
       {{{"type", "ByteLevel"}},
        {{"type", "TemplateProcessing"},
         {"single",
          {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
           {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
           {{"SpecialToken", {{"id", "</s>"}, {"type_id", 0}}}}}},
         {"special_tokens",
          {{"<s>", {{"id", "<s>"}, {"ids", {5}}, {"tokens", {"<s>"}}}},
           {"</s>", {{"id", "</s>"}, {"ids", {6}}, {"tokens", {"</s>"}}}}}}}}}};
  EXPECT_THAT(Ids(*Make(doc), "b"), ElementsAre(5, 1, 6));
}

TEST(DecoderTest, StripReplaceAndDefaultJoin) {
  Json doc = CharDoc("ab_");
  auto t = Make(doc);
  EXPECT_EQ(Text(*t, {0, 1, 2}), "a b _");  // no decoder: joined with spaces
  doc["decoder"] = {{"type", "Sequence"},
                    {"decoders",
                     {{{"type", "Replace"}, {"pattern", {{"String", "_"}}}, {"content", " "}},
                      {{"type", "Fuse"}},
                      {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 1}}}}};
  EXPECT_EQ(Text(*Make(doc), {2, 2, 0, 2, 1, 2, 2}), " a b ");
}

// transformers 5 rebuilds a LlamaTokenizer's pipeline (see engine/tokenizer.cc).
TEST(TransformersLlamaTest, MetaspaceFirstAndDroppedUnknowns) {
  const std::string m = "\xE2\x96\x81";
  Json doc = Doc({{"<unk>", 0}, {"<s>", 1}, {m, 2}, {"a", 3}, {"b", 4}, {m + "a", 5}},
                 Json::array({m + " a"}));
  doc["model"]["unk_token"] = "<unk>";
  doc["model"]["byte_fallback"] = true;
  doc["model"]["fuse_unk"] = true;
  doc["added_tokens"] = {
      {{"id", 0}, {"content", "<unk>"}, {"special", true}, {"normalized", false}},
      {{"id", 1}, {"content", "<s>"}, {"special", true}, {"normalized", false}}};
  doc["normalizer"] = {{"type", "Sequence"},
                       {"normalizers",
                        {{{"type", "Prepend"}, {"prepend", m}},
                         {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", m}}}}};
  doc["decoder"] = {{"type", "Sequence"},
                    {"decoders",
                     {{{"type", "Replace"}, {"pattern", {{"String", m}}}, {"content", " "}},
                      {{"type", "ByteFallback"}},
                      {{"type", "Fuse"}},
                      {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  auto plain = Make(doc);
  EXPECT_THAT(Ids(*plain, " a"), ElementsAre(2, 5));
  EXPECT_THAT(Ids(*plain, "<s>a"), ElementsAre(1, 5));
  EXPECT_THAT(Ids(*plain,
                  "a\xE2\x82\xAC"
                  "b"),
              ElementsAre(5, 0, 4));
  Json config = {{"tokenizer_class", "LlamaTokenizer"}, {"legacy", false}};
  auto llama = Make(doc, config);
  EXPECT_THAT(Ids(*llama, " a"), ElementsAre(5));
  EXPECT_THAT(Ids(*llama, "<s>a"), ElementsAre(1, 3));
  EXPECT_THAT(Ids(*llama,
                  "a\xE2\x82\xAC"
                  "b"),
              ElementsAre(5, 4));
  EXPECT_EQ(Text(*llama, {5, 2, 4}), "a b");
  config["legacy"] = true;  // prepend scheme "always"
  EXPECT_THAT(Ids(*Make(doc, config), "<s>a"), ElementsAre(1, 5));
  // The config's add_bos_token / add_eos_token replace the file's post-processor.
  doc["post_processor"] = {{"type", "BertProcessing"}, {"cls", {"<s>", 1}}, {"sep", {"<s>", 1}}};
  EXPECT_THAT(Ids(*Make(doc, config), "a"), ElementsAre(1, 5, 1));
  config["bos_token"] = "<s>";
  config["eos_token"] = "<unk>";
  config["add_bos_token"] = false;
  config["add_eos_token"] = true;
  EXPECT_THAT(Ids(*Make(doc, config), "a"), ElementsAre(5, 0));
}

TEST(UnicodeTest, ValidationNamesTheOffset) {
  EXPECT_TRUE(ti::ValidateUtf8("a\xC3\xA9\xF0\x9F\x99\x82").ok());
  auto offset = [](std::string_view s) { return std::string(ti::ValidateUtf8(s).message()); };
  EXPECT_EQ(offset("ab\xC0\x80"), "invalid UTF-8 at byte offset 2");        // overlong
  EXPECT_EQ(offset("a\xED\xA0\x80"), "invalid UTF-8 at byte offset 1");     // surrogate
  EXPECT_EQ(offset("\xF4\x90\x80\x80"), "invalid UTF-8 at byte offset 0");  // > U+10FFFF
  EXPECT_EQ(offset("abc\xE2\x82"), "invalid UTF-8 at byte offset 3");       // truncated
  EXPECT_EQ(offset("\x80"), "invalid UTF-8 at byte offset 0");
}

TEST(UnicodeTest, LossyDecodingReplacesMaximalInvalidPrefixes) {
  // Examples from Rust's String::from_utf8_lossy documentation and Unicode 3.9.
  EXPECT_EQ(ti::Utf8Lossy("Hello \xF0\x90\x80World"), "Hello \xEF\xBF\xBDWorld");
  EXPECT_EQ(ti::Utf8Lossy("a\xC0\x80"
                          "b"),
            "a\xEF\xBF\xBD\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(ti::Utf8Lossy("\xE0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(ti::Utf8Lossy("\xE1\x80"), "\xEF\xBF\xBD");
}

TEST(UnicodeTest, ByteLevelAlphabetIsABijection) {
  const auto& alphabet = ti::ByteLevelAlphabet();
  EXPECT_EQ(alphabet['A'], "A");
  EXPECT_EQ(alphabet[' '], "\xC4\xA0");   // Ġ
  EXPECT_EQ(alphabet['\n'], "\xC4\x8A");  // Ċ
  for (int b = 0; b < 256; ++b) {
    size_t pos = 0;
    EXPECT_EQ(ti::ByteLevelByte(ti::NextCodePoint(alphabet[b], &pos)), b);
  }
}

TEST(UnicodeTest, NfcCheckAndLowercase) {
  EXPECT_EQ(ti::FirstNfcUnsafe("plain caf\xC3\xA9 \xE6\x97\xA5\xF0\x9F\x99\x82"),
            std::string_view::npos);
  EXPECT_EQ(ti::FirstNfcUnsafe("cafe\xCC\x81"), 4u);
  EXPECT_EQ(ti::ToLower("\xC3\x80"
                        "BC \xC4\xB0 \xD0\x96"),
            "\xC3\xA0"
            "bc i\xCC\x87 \xD0\xB6");
}

}  // namespace
}  // namespace kvscope::engine

// File: tests/tokenizer/tokenizer_perf_test.cc
//
// Encoding 100 KB must take well under a second, including the tinystories tokenizer,
// whose pipeline has no splitting pre-tokenizer (the whole text is one BPE word).
#include <chrono>
#include <string>

#include "engine/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace kvscope::engine {
namespace {

using ::kvscope::testing::ReadFileOrDie;
using ::kvscope::testing::SharedPath;
using ::kvscope::testing::TestDataDir;

constexpr size_t kTextBytes = 100 * 1024;

std::string Story() {
  std::string path = SharedPath("data/stories.txt");
  if (!path.empty()) return ReadFileOrDie(path);
  return "Once upon a time, there was a little girl named Mia. She liked to play.\n";
}

std::string Repeat(const std::string& unit) {
  std::string text;
  while (text.size() < kTextBytes) text += unit;
  text.resize(kTextBytes);
  while ((static_cast<unsigned char>(text.back()) & 0xC0) == 0x80 ||
         static_cast<unsigned char>(text.back()) >= 0xC0) {
    text.pop_back();  // keep valid UTF-8
  }
  return text;
}

double EncodeSeconds(const Tokenizer& t, const std::string& text, size_t* count) {
  auto start = std::chrono::steady_clock::now();
  auto ids = t.Encode(text);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_TRUE(ids.ok()) << ids.status();
  *count = ids.ok() ? ids->size() : 0;
  return seconds;
}

void CheckFast(const std::string& model_dir, const std::string& label) {
  auto t = Tokenizer::Load(model_dir);
  ASSERT_TRUE(t.ok()) << t.status();
  const std::pair<const char*, std::string> texts[] = {
      {"stories", Repeat(Story())},
      {"spaces", std::string(kTextBytes, ' ')},
      {"one letter", std::string(kTextBytes, 'a')},
      {"mixed unicode", Repeat("caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x99\x82 12345\n\t")},
  };
  for (const auto& [name, text] : texts) {
    size_t count = 0;
    double seconds = EncodeSeconds(**t, text, &count);
    std::printf("%s / %s: %zu bytes -> %zu ids in %.3f s\n", label.c_str(), name, text.size(),
                count, seconds);
    EXPECT_LT(seconds, 1.0) << label << " / " << name;
  }
}

TEST(TokenizerPerfTest, Encode100KbByteLevel) {
  CheckFast(TestDataDir() + "/tokenizer/llama3_style", "llama3_style");
  CheckFast(TestDataDir() + "/tokenizer/gpt2_style", "gpt2_style");
}

TEST(TokenizerPerfTest, Encode100KbTinyStoriesSingleWord) {
  KVSCOPE_REQUIRE_SHARED(path, "models/tinystories-656k/tokenizer.json");
  CheckFast(SharedPath("models/tinystories-656k"), "tinystories");
}

}  // namespace
}  // namespace kvscope::engine

// File: tests/tokenizer/tokenizer_fuzz_test.cc
//
// Randomized robustness: 20k mutated tokenizer.json / tokenizer_config.json documents
// (byte flips, truncations, insertions, deletions, duplications, and JSON-aware field type
// swaps and deletions) through FromJson, and random byte strings (much of it invalid
// UTF-8) and random ids through Encode / Decode. Nothing may crash or hang; statuses must
// be the documented ones. Fixed seed, so failures reproduce.
#include <cstdio>
#include <ctime>
#include <random>
#include <string>
#include <vector>

#include "engine/tokenizer.h"
#include "engine/tokenizer_unicode.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace kvscope::engine {
namespace {

using ::kvscope::testing::ReadFileOrDie;
using ::kvscope::testing::SharedPath;
using ::kvscope::testing::TestDataDir;
using Json = nlohmann::json;

struct Base {
  std::string name;
  std::string tokenizer_json;
  std::string config_json;
  Json doc;
  int weight;  // share of the mutated documents
};

std::vector<Base> Bases() {
  std::vector<Base> bases;
  for (const char* name : {"llama3_style", "gpt2_style", "qwen2_style"}) {
    std::string dir = TestDataDir() + "/tokenizer/" + name;
    bases.push_back({name, ReadFileOrDie(dir + "/tokenizer.json"),
                     ReadFileOrDie(dir + "/tokenizer_config.json"), Json(), 6});
  }
  std::string tiny = SharedPath("models/tinystories-656k");
  if (!tiny.empty()) {  // the real file is larger, so it gets fewer documents
    bases.push_back({"tinystories", ReadFileOrDie(tiny + "/tokenizer.json"),
                     ReadFileOrDie(tiny + "/tokenizer_config.json"), Json(), 1});
  }
  for (Base& base : bases) {
    base.doc = Json::parse(base.tokenizer_json);
    base.tokenizer_json = base.doc.dump();  // compact: more mutations per second
  }
  return bases;
}

class Fuzzer {
 public:
  explicit Fuzzer(uint32_t seed) : rng_(seed) {}

  size_t Below(size_t n) {
    return n == 0 ? 0 : std::uniform_int_distribution<size_t>(0, n - 1)(rng_);
  }

  std::string MutateBytes(std::string s) {
    static const std::string kJsonBytes = "{}[]\":,0123456789-.eEtrufalsn \\";
    switch (Below(5)) {
      case 0:  // flip bits
        for (size_t k = 0, n = 1 + Below(4); k < n && !s.empty(); ++k) {
          s[Below(s.size())] ^= static_cast<char>(1u << Below(8));
        }
        break;
      case 1:  // truncate
        s.resize(Below(s.size() + 1));
        break;
      case 2: {  // insert
        std::string bytes;
        for (size_t k = 0, n = 1 + Below(8); k < n; ++k) {
          bytes.push_back(Below(2) ? kJsonBytes[Below(kJsonBytes.size())]
                                   : static_cast<char>(Below(256)));
        }
        s.insert(Below(s.size() + 1), bytes);
        break;
      }
      case 3: {  // delete a range
        size_t at = Below(s.size() + 1);
        s.erase(at, Below(64));
        break;
      }
      default: {  // duplicate a range
        size_t at = Below(s.size() + 1);
        std::string piece = s.substr(at, Below(64));
        s.insert(Below(s.size() + 1), piece);
        break;
      }
    }
    return s;
  }

  Json RandomValue() {
    switch (Below(10)) {
      case 0:
        return nullptr;
      case 1:
        return Below(2) == 1;
      case 2:
        return -1;
      case 3:
        return 2147483647;
      case 4:
        return 1e300;
      case 5:
        return 3;
      case 6:
        return "";
      case 7:
        return "\xE2\x96\x81";
      case 8:
        return Json::array({1, "a", nullptr});
      default:
        return Json::object({{"type", "Sequence"}});
    }
  }

  // Replaces (or deletes) one node, preferring the pipeline over vocab entries.
  std::string MutateStructure(const Json& doc) {
    Json copy = doc;
    std::vector<Json*> nodes;
    std::vector<Json*> stack = {&copy};
    bool skip_big = Below(10) < 7;
    while (!stack.empty()) {
      Json* node = stack.back();
      stack.pop_back();
      nodes.push_back(node);
      if (node->is_object()) {
        for (auto it = node->begin(); it != node->end(); ++it) {
          if (skip_big && (it.key() == "vocab" || it.key() == "merges")) continue;
          stack.push_back(&it.value());
        }
      } else if (node->is_array()) {
        for (Json& child : *node) stack.push_back(&child);
      }
    }
    Json* target = nodes[Below(nodes.size())];
    if (target->is_object() && !target->empty() && Below(2) == 0) {
      auto it = target->begin();
      std::advance(it, Below(target->size()));
      target->erase(it);
    } else {
      *target = RandomValue();
    }
    return copy.dump();
  }

  // Random input text: random bytes, or random valid UTF-8 mixing scripts, marks,
  // whitespace and special-token fragments.
  std::string RandomText() {
    static const std::vector<std::string> kPieces = {"a",
                                                     "Z",
                                                     " ",
                                                     "  ",
                                                     "\n",
                                                     "\t",
                                                     "\r\n",
                                                     "'s",
                                                     "don't",
                                                     "123",
                                                     "9",
                                                     ".",
                                                     "!?",
                                                     "<|",
                                                     "|>",
                                                     "<|begin_of_text|>",
                                                     "<|endoftext|>",
                                                     "<|im_start|>",
                                                     "<|start_story|>",
                                                     "<unk>",
                                                     "\xC3\xA9",
                                                     "\xC3\xAF",
                                                     "e\xCC\x81",
                                                     "\xCE\xA3",
                                                     "\xD0\x96",
                                                     "\xE6\x97\xA5",
                                                     "\xE2\x96\x81",
                                                     "\xF0\x9F\x99\x82",
                                                     "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD",
                                                     "\xC2\xA0",
                                                     "\xE3\x80\x80",
                                                     "\x00"};
    std::string s;
    size_t n = Below(40);
    if (Below(3) == 0) {
      for (size_t k = 0; k < n * 2; ++k) s.push_back(static_cast<char>(Below(256)));
    } else {
      for (size_t k = 0; k < n; ++k) s += kPieces[Below(kPieces.size())];
    }
    return s;
  }

 private:
  std::mt19937 rng_;
};

// `strict`: the tokenizer is a known-good one (no id gaps, no empty tokens), so exactly the
// ids in [0, vocab_size) decode.
void ExerciseTokenizer(const Tokenizer& t, Fuzzer& fuzz, int rounds, bool strict, bool lossless) {
  for (int r = 0; r < rounds; ++r) {
    std::string text = fuzz.RandomText();
    bool valid = tokenizer_internal::ValidateUtf8(text).ok();
    auto ids = t.Encode(text, fuzz.Below(2) == 0);
    if (!valid) {
      ASSERT_FALSE(ids.ok());
      ASSERT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
      ASSERT_NE(ids.status().message().find("byte offset"), absl::string_view::npos);
      continue;
    }
    if (!ids.ok()) {  // only the NFC normalizer may refuse valid text
      ASSERT_EQ(ids.status().code(), absl::StatusCode::kUnimplemented) << ids.status();
      continue;
    }
    for (int32_t id : *ids) ASSERT_TRUE(id >= 0 && id < t.vocab_size()) << id;
    auto back = t.Decode(*ids, fuzz.Below(2) == 0);
    ASSERT_TRUE(back.ok()) << back.status();
    ASSERT_TRUE(tokenizer_internal::ValidateUtf8(*back).ok());
    if (lossless) {
      auto bare = t.Encode(text, false);
      ASSERT_TRUE(bare.ok());
      auto exact = t.Decode(*bare, false);
      ASSERT_TRUE(exact.ok());
      ASSERT_EQ(*exact, text);
    }
    // Random ids, some out of range.
    std::vector<int32_t> random_ids(fuzz.Below(50));
    bool in_range = true;
    for (int32_t& id : random_ids) {
      id = static_cast<int32_t>(fuzz.Below(t.vocab_size() + 6)) - 3;
      in_range = in_range && id >= 0 && id < t.vocab_size() && !t.TokenString(id).empty();
    }
    auto decoded = t.Decode(random_ids, fuzz.Below(2) == 0);
    if (strict) {
      ASSERT_EQ(decoded.ok(), in_range) << decoded.status();
    }
    if (decoded.ok()) {
      ASSERT_TRUE(tokenizer_internal::ValidateUtf8(*decoded).ok());
    } else {
      ASSERT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

TEST(TokenizerFuzzTest, MutatedDocumentsNeverCrash) {
  constexpr int kDocs = 20000;
  // CPU time, not wall time, so that a busy machine (parallel ctest) does not fail the
  // 20 s budget.
  const std::clock_t start = std::clock();
  std::vector<Base> bases = Bases();
  int total_weight = 0;
  for (const Base& b : bases) total_weight += b.weight;
  Fuzzer fuzz(20240611);
  int loaded = 0;
  for (int i = 0; i < kDocs; ++i) {
    size_t pick = fuzz.Below(total_weight);
    const Base* base = &bases[0];
    for (const Base& b : bases) {
      if (pick < static_cast<size_t>(b.weight)) {
        base = &b;
        break;
      }
      pick -= b.weight;
    }
    std::string tokenizer_json = base->tokenizer_json;
    std::string config_json = base->config_json;
    switch (fuzz.Below(10)) {
      case 0:
      case 1:
      case 2:
      case 3:
        tokenizer_json = fuzz.MutateBytes(tokenizer_json);
        break;
      case 4:
      case 5:
      case 6:
      case 7:
        tokenizer_json = fuzz.MutateStructure(base->doc);
        break;
      case 8:
        config_json = fuzz.MutateBytes(config_json);
        break;
      default:
        config_json = fuzz.MutateStructure(Json::parse(config_json));
        break;
    }
    auto t = Tokenizer::FromJson(tokenizer_json, config_json, base->name + "/tokenizer.json");
    if (!t.ok()) {
      // Errors are documented codes with one-line messages; never an escaped exception.
      ASSERT_TRUE(t.status().code() == absl::StatusCode::kInvalidArgument) << t.status();
      ASSERT_EQ(t.status().message().find('\n'), absl::string_view::npos) << t.status();
      continue;
    }
    ++loaded;
    ExerciseTokenizer(**t, fuzz, 2, /*strict=*/false, /*lossless=*/false);
  }
  const double seconds = static_cast<double>(std::clock() - start) / CLOCKS_PER_SEC;
  std::printf("fuzzed %d documents (%d loaded) in %.2f s of CPU time\n", kDocs, loaded, seconds);
  EXPECT_GT(loaded, 0);
#if !defined(__SANITIZE_ADDRESS__)
  EXPECT_LT(seconds, 20.0);
#endif
}

TEST(TokenizerFuzzTest, RandomTextAndIdsThroughValidTokenizers) {
  Fuzzer fuzz(7);
  for (const Base& base : Bases()) {
    SCOPED_TRACE(base.name);
    auto t = Tokenizer::FromJson(base.tokenizer_json, base.config_json, base.name);
    ASSERT_TRUE(t.ok()) << t.status();
    // Byte-level BPE without clean-up loses nothing: decode(encode(s)) == s.
    ExerciseTokenizer(**t, fuzz, 3000, /*strict=*/true,
                      /*lossless=*/base.name == "llama3_style");
  }
}

}  // namespace
}  // namespace kvscope::engine

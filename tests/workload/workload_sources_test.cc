// Tests for the workload sources: text windows, JSONL traces (and their errors), shared
// prefixes and multi-turn conversations.
#include <cmath>
#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "engine/tokenizer.h"
#include "engine/workload.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace kvscope::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

std::vector<RequestSpec> BuildOrDie(const WorkloadSpec& spec,
                                    const Tokenizer* tokenizer = nullptr) {
  absl::StatusOr<std::vector<RequestSpec>> r = BuildWorkload(spec, tokenizer);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *std::move(r) : std::vector<RequestSpec>{};
}

std::string WriteTempFile(const std::string& name, const std::string& contents) {
  const std::string path = ::testing::TempDir() + "/kvscope_workload_" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
  return path;
}

std::vector<int32_t> Slice(const std::vector<int32_t>& v, size_t begin, size_t end) {
  return std::vector<int32_t>(v.begin() + begin, v.begin() + end);
}

size_t CommonPrefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
  return n;
}

// --- Text --------------------------------------------------------------------------------

class TextSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_dir_ = ::kvscope::testing::SharedPath("models/tinystories-656k");
    text_path_ = ::kvscope::testing::SharedPath("data/stories.txt");
    if (model_dir_.empty() || text_path_.empty()) {
      GTEST_SKIP() << "needs " << ::kvscope::testing::SharedDir()
                   << "/models/tinystories-656k and data/stories.txt";
    }
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::Load(model_dir_);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = *std::move(tok);
    text_ = ::kvscope::testing::ReadFileOrDie(text_path_);
  }

  WorkloadSpec Spec(int64_t n) const {
    WorkloadSpec spec;
    spec.seed = 3;
    spec.num_requests = n;
    spec.source = SourceKind::kText;
    spec.text_path = text_path_;
    spec.input_len = {LengthDist::kUniform, 30, 20, 1, 100};
    spec.output_len.mean = 8;
    return spec;
  }

  std::string model_dir_, text_path_, text_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(TextSourceTest, WindowsDecodeToSubstringsOfTheText) {
  const std::vector<RequestSpec> r = BuildOrDie(Spec(8), tokenizer_.get());
  ASSERT_EQ(r.size(), 8u);
  const std::optional<int32_t> bos = tokenizer_->bos_id();
  for (const RequestSpec& q : r) {
    SCOPED_TRACE(q.id);
    const size_t skip = bos.has_value() ? 1 : 0;
    if (bos.has_value()) {
      ASSERT_FALSE(q.prompt.empty());
      EXPECT_EQ(q.prompt[0], *bos);
    }
    if (q.prompt.size() <= skip) continue;
    absl::StatusOr<std::string> decoded =
        tokenizer_->Decode(Slice(q.prompt, skip, q.prompt.size()));
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_NE(text_.find(*decoded), std::string::npos) << "'" << *decoded << "'";
    EXPECT_GE(decoded->size(), q.prompt.size() - skip);  // not trivially short
  }
}

TEST_F(TextSourceTest, WindowsAreConsecutiveAndWrapAround) {
  absl::StatusOr<std::vector<int32_t>> all = tokenizer_->Encode(text_, false);
  ASSERT_TRUE(all.ok()) << all.status();
  const std::vector<RequestSpec> r = BuildOrDie(Spec(100), tokenizer_.get());
  const size_t skip = tokenizer_->bos_id().has_value() ? 1 : 0;
  std::vector<int32_t> concatenated;
  for (const RequestSpec& q : r) {
    concatenated.insert(concatenated.end(), q.prompt.begin() + skip, q.prompt.end());
  }
  ASSERT_GT(concatenated.size(), 2 * all->size());  // wrapped at least twice
  for (size_t k = 0; k < concatenated.size(); ++k) {
    ASSERT_EQ(concatenated[k], (*all)[k % all->size()]) << k;
  }
}

TEST_F(TextSourceTest, PromptLengthsFollowTheInputDistribution) {
  WorkloadSpec spec = Spec(20);
  WorkloadSpec random = spec;
  random.source = SourceKind::kRandom;
  const std::vector<RequestSpec> t = BuildOrDie(spec, tokenizer_.get());
  const std::vector<RequestSpec> u = BuildOrDie(random);
  for (size_t i = 0; i < t.size(); ++i) {
    EXPECT_EQ(t[i].prompt.size(), u[i].prompt.size());
    EXPECT_EQ(t[i].output_len, u[i].output_len);
    EXPECT_EQ(t[i].arrival_s, u[i].arrival_s);
  }
}

TEST_F(TextSourceTest, MissingFileIsNotFound) {
  WorkloadSpec spec = Spec(2);
  spec.text_path = ::testing::TempDir() + "/no_such_file.txt";
  absl::StatusOr<std::vector<RequestSpec>> r = BuildWorkload(spec, tokenizer_.get());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("no_such_file.txt"));
}

TEST(TextSource, NeedsATokenizer) {
  WorkloadSpec spec;
  spec.source = SourceKind::kText;
  spec.text_path = "whatever.txt";
  EXPECT_EQ(BuildWorkload(spec, nullptr).status().code(), absl::StatusCode::kFailedPrecondition);
}

// --- Trace -------------------------------------------------------------------------------

WorkloadSpec TraceSpec() {
  WorkloadSpec spec;
  spec.seed = 9;
  spec.source = SourceKind::kTrace;
  spec.arrival = ArrivalKind::kTrace;
  spec.trace_path = ::kvscope::testing::TestDataDir() + "/workload/trace_small.jsonl";
  spec.trace_block_tokens = 4;
  spec.vocab_size = 1000;
  return spec;
}

TEST(TraceSource, ReadsTheSmallTrace) {
  const std::vector<RequestSpec> r = BuildOrDie(TraceSpec());
  ASSERT_EQ(r.size(), 5u);
  EXPECT_EQ(r[0].prompt.size(), 12u);
  EXPECT_EQ(r[1].prompt.size(), 10u);
  EXPECT_EQ(r[2].prompt.size(), 14u);
  EXPECT_THAT(r[3].prompt, ElementsAre(5, 6, 7, 8));  // prompt_ids win over input_length
  EXPECT_EQ(r[4].prompt.size(), 3u);
  EXPECT_EQ(r[0].output_len, 5);
  EXPECT_EQ(r[1].output_len, 3);
  EXPECT_EQ(r[2].output_len, 2);
  EXPECT_EQ(r[3].output_len, 4);
  EXPECT_EQ(r[4].output_len, 1);
  EXPECT_EQ(r[0].arrival_s, 0.0);
  EXPECT_DOUBLE_EQ(r[1].arrival_s, 0.25);
  EXPECT_DOUBLE_EQ(r[2].arrival_s, 0.25);
  EXPECT_DOUBLE_EQ(r[3].arrival_s, 1.0);
  EXPECT_DOUBLE_EQ(r[4].arrival_s, 2.5005);
  EXPECT_EQ(r[0].conversation_id, -1);
  EXPECT_EQ(r[2].conversation_id, 7);
  for (size_t i = 0; i < r.size(); ++i) {
    EXPECT_EQ(r[i].id, static_cast<int64_t>(i));
    for (int32_t t : r[i].prompt) {
      EXPECT_GE(t, 3);
      EXPECT_LT(t, 1000);
    }
  }
}

TEST(TraceSource, EqualHashIdsGiveEqualBlocks) {
  const std::vector<RequestSpec> r = BuildOrDie(TraceSpec());
  // Lines 1-3 share hash ids [1, 2] (8 tokens); then 3 vs 4 vs random padding.
  EXPECT_EQ(CommonPrefix(r[0].prompt, r[1].prompt), 8u);
  EXPECT_EQ(CommonPrefix(r[0].prompt, r[2].prompt), 8u);
  EXPECT_EQ(CommonPrefix(r[1].prompt, r[2].prompt), 8u);
  // A block is the same wherever the hash id appears.
  const std::string path =
      WriteTempFile("swapped.jsonl",
                    "{\"timestamp\": 0, \"input_length\": 8, \"output_length\": 1, "
                    "\"hash_ids\": [2, 1]}\n");
  WorkloadSpec spec = TraceSpec();
  spec.trace_path = path;
  const std::vector<RequestSpec> s = BuildOrDie(spec);
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(Slice(s[0].prompt, 0, 4), Slice(r[0].prompt, 4, 8));
  EXPECT_EQ(Slice(s[0].prompt, 4, 8), Slice(r[0].prompt, 0, 4));
}

// Pins the hash-block generator (seed 9, 4-token blocks, vocab 1000).
TEST(TraceSource, PinnedBlockTokens) {
  const std::vector<RequestSpec> r = BuildOrDie(TraceSpec());
  ASSERT_EQ(r.size(), 5u);
  EXPECT_THAT(r[0].prompt, ElementsAre(939, 895, 62, 98, 10, 414, 685, 912, 914, 807, 272, 393));
  EXPECT_THAT(Slice(r[2].prompt, 8, 14), ElementsAre(118, 678, 871, 589, 878, 287));
}

TEST(TraceSource, DeterministicAndSeeded) {
  const std::vector<RequestSpec> a = BuildOrDie(TraceSpec());
  const std::vector<RequestSpec> b = BuildOrDie(TraceSpec());
  WorkloadSpec other = TraceSpec();
  other.seed = 10;
  const std::vector<RequestSpec> c = BuildOrDie(other);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].prompt, b[i].prompt);
    EXPECT_EQ(a[i].arrival_s, b[i].arrival_s);
    EXPECT_EQ(a[i].arrival_s, c[i].arrival_s);  // timestamps do not depend on the seed
    if (i != 3) {
      EXPECT_NE(a[i].prompt, c[i].prompt) << i;
    }
  }
}

TEST(TraceSource, TimeScaleCapAndOtherArrivals) {
  WorkloadSpec spec = TraceSpec();
  spec.trace_time_scale = 0.5;
  spec.num_requests = 4;
  std::vector<RequestSpec> r = BuildOrDie(spec);
  ASSERT_EQ(r.size(), 4u);
  EXPECT_DOUBLE_EQ(r[3].arrival_s, 0.5);

  spec = TraceSpec();
  spec.arrival = ArrivalKind::kConstant;
  spec.request_rate = 10;
  r = BuildOrDie(spec);
  ASSERT_EQ(r.size(), 5u);
  for (size_t i = 0; i < r.size(); ++i) EXPECT_DOUBLE_EQ(r[i].arrival_s, i / 10.0);
}

TEST(TraceSource, MaxModelLenTruncates) {
  WorkloadSpec spec = TraceSpec();
  spec.max_model_len = 8;
  const std::vector<RequestSpec> full = BuildOrDie(TraceSpec());
  const std::vector<RequestSpec> r = BuildOrDie(spec);
  EXPECT_EQ(r[0].prompt, Slice(full[0].prompt, 0, 7));
  EXPECT_EQ(r[0].output_len, 1);
  EXPECT_EQ(r[3].prompt.size(), 4u);
  EXPECT_EQ(r[3].output_len, 4);
}

TEST(TraceSource, ParseTraceLineFields) {
  absl::StatusOr<TraceEntry> e = ParseTraceLine(
      R"({"timestamp": 12.5, "input_length": 40, "output_length": 7, "hash_ids": [3, 9],
          "conversation_id": 2, "prompt": "hi", "prompt_ids": [1, 2]})",
      "t.jsonl", 4);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->timestamp_ms, 12.5);
  EXPECT_EQ(e->input_length, 40);
  EXPECT_EQ(e->output_length, 7);
  EXPECT_THAT(e->hash_ids, ElementsAre(3, 9));
  EXPECT_EQ(e->conversation_id, 2);
  EXPECT_EQ(e->prompt, "hi");
  EXPECT_THAT(e->prompt_ids, ElementsAre(1, 2));
}

struct BadLine {
  std::string line;
  std::string message;
};

TEST(TraceSource, RejectsEachMalformedLineWithFileAndLine) {
  const std::vector<BadLine> cases = {
      {R"({"timestamp": 1, "input_length": 5,)", "malformed JSON"},
      {R"(not json at all)", "malformed JSON"},
      {R"([1, 2, 3])", "expected a JSON object"},
      {R"({"input_length": 5, "output_length": 1})", "missing \"timestamp\""},
      {R"({"timestamp": 5, "input_length": 5})", "missing \"output_length\""},
      {R"({"timestamp": 5, "output_length": 1})", "missing the input"},
      {R"({"timestamp": "5", "input_length": 5, "output_length": 1})",
       "\"timestamp\" must be a number"},
      {R"({"timestamp": -1, "input_length": 5, "output_length": 1})", "\"timestamp\" must be >= 0"},
      {R"({"timestamp": 5, "input_length": "5", "output_length": 1})",
       "\"input_length\" must be an integer"},
      {R"({"timestamp": 5, "input_length": 5.5, "output_length": 1})",
       "\"input_length\" must be an integer"},
      {R"({"timestamp": 5, "input_length": -5, "output_length": 1})",
       "\"input_length\" must be >= 1"},
      {R"({"timestamp": 5, "input_length": 0, "output_length": 1})",
       "\"input_length\" must be >= 1"},
      {R"({"timestamp": 5, "input_length": 5, "output_length": 0})",
       "\"output_length\" must be >= 1"},
      {R"({"timestamp": 5, "input_length": 5, "output_length": 3000000000})",
       "\"output_length\" must be <="},
      {R"({"timestamp": 5, "input_length": 5, "output_length": true})",
       "\"output_length\" must be an integer"},
      {R"({"timestamp": 5, "input_length": 5, "output_length": 1, "hash_ids": 3})",
       "\"hash_ids\" must be a list"},
      {R"({"timestamp": 5, "input_length": 5, "output_length": 1, "hash_ids": [1, -2]})",
       "\"hash_ids[1]\" must be >= 0"},
      {R"({"timestamp": 5, "prompt_ids": [1, "a"], "output_length": 1})",
       "\"prompt_ids[1]\" must be an integer"},
      {R"({"timestamp": 5, "prompt_ids": [1, -1], "output_length": 1})",
       "\"prompt_ids[1]\" must be >= 0"},
      {R"({"timestamp": 5, "prompt_ids": [], "output_length": 1})", "\"prompt_ids\" is empty"},
      {R"({"timestamp": 5, "prompt_ids": 4, "output_length": 1})", "\"prompt_ids\" must be a list"},
      {R"({"timestamp": 5, "prompt": 4, "output_length": 1})", "\"prompt\" must be a string"},
      {R"({"timestamp": 5, "prompt": "", "output_length": 1})", "\"prompt\" is empty"},
      {R"({"timestamp": 5, "input_length": 5, "output_length": 1, "conversation_id": "a"})",
       "\"conversation_id\" must be an integer"},
      {R"({"timestamp": 5, "input_length": 5, "output_length": 1, "conversation_id": -1})",
       "\"conversation_id\" must be >= 0"},
  };
  const std::string good = R"({"timestamp": 0, "input_length": 4, "output_length": 1})";
  int k = 0;
  for (const BadLine& c : cases) {
    SCOPED_TRACE(c.line);
    // Directly.
    absl::StatusOr<TraceEntry> e = ParseTraceLine(c.line, "some.jsonl", 17);
    EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(e.status().message()), StartsWith("some.jsonl:17: "));
    EXPECT_THAT(std::string(e.status().message()), HasSubstr(c.message));
    // Through a file: a good line, a blank line, then the bad one on line 3.
    const std::string path =
        WriteTempFile("bad" + std::to_string(k++) + ".jsonl", good + "\n\n" + c.line + "\n");
    WorkloadSpec spec = TraceSpec();
    spec.trace_path = path;
    absl::StatusOr<std::vector<RequestSpec>> r = BuildWorkload(spec, nullptr);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), StartsWith(path + ":3: "));
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.message));
  }
}

TEST(TraceSource, RejectsDecreasingTimestamps) {
  const std::string path =
      WriteTempFile("decreasing.jsonl",
                    "{\"timestamp\": 10, \"input_length\": 4, \"output_length\": 1}\r\n"
                    "{\"timestamp\": 10, \"input_length\": 4, \"output_length\": 1}\r\n"
                    "{\"timestamp\": 9.5, \"input_length\": 4, \"output_length\": 1}\r\n");
  WorkloadSpec spec = TraceSpec();
  spec.trace_path = path;
  absl::StatusOr<std::vector<RequestSpec>> r = BuildWorkload(spec, nullptr);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), StartsWith(path + ":3: "));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("before the previous"));
}

TEST(TraceSource, WholeFileIsValidatedPastTheCap) {
  const std::string path =
      WriteTempFile("late_error.jsonl",
                    "{\"timestamp\": 0, \"input_length\": 4, \"output_length\": 1}\n"
                    "{\"timestamp\": 1, \"input_length\": 4}\n");
  WorkloadSpec spec = TraceSpec();
  spec.trace_path = path;
  spec.num_requests = 1;
  EXPECT_THAT(std::string(BuildWorkload(spec, nullptr).status().message()),
              StartsWith(path + ":2: "));
}

TEST(TraceSource, PromptIdsOutsideTheVocabulary) {
  const std::string path = WriteTempFile(
      "vocab.jsonl", "{\"timestamp\": 0, \"prompt_ids\": [1, 5000], \"output_length\": 1}\n");
  WorkloadSpec spec = TraceSpec();
  spec.trace_path = path;
  absl::StatusOr<std::vector<RequestSpec>> r = BuildWorkload(spec, nullptr);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), StartsWith(path + ":1: "));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("outside the vocabulary"));
}

TEST(TraceSource, FileErrors) {
  WorkloadSpec spec = TraceSpec();
  spec.trace_path = ::testing::TempDir() + "/no_such_trace.jsonl";
  EXPECT_EQ(BuildWorkload(spec, nullptr).status().code(), absl::StatusCode::kNotFound);
  spec.trace_path = WriteTempFile("empty.jsonl", "\n  \n");
  EXPECT_THAT(std::string(BuildWorkload(spec, nullptr).status().message()),
              HasSubstr("no requests"));
}

TEST(TraceSource, PromptTextNeedsATokenizer) {
  const std::string path = WriteTempFile(
      "text.jsonl", "{\"timestamp\": 0, \"prompt\": \"Once upon a time\", \"output_length\": 3}\n");
  WorkloadSpec spec = TraceSpec();
  spec.trace_path = path;
  absl::StatusOr<std::vector<RequestSpec>> r = BuildWorkload(spec, nullptr);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.status().message()), StartsWith(path + ":1: "));

  KVSCOPE_REQUIRE_SHARED(model_dir, "models/tinystories-656k");
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::Load(model_dir);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::vector<RequestSpec> q = BuildOrDie(spec, tok->get());
  ASSERT_EQ(q.size(), 1u);
  absl::StatusOr<std::vector<int32_t>> ids = (*tok)->Encode("Once upon a time", true);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(q[0].prompt, *ids);
  EXPECT_EQ(q[0].output_len, 3);
}

// --- Shared prefix -----------------------------------------------------------------------

WorkloadSpec PrefixSpec() {
  WorkloadSpec spec;
  spec.seed = 21;
  spec.num_requests = 30;
  spec.source = SourceKind::kSharedPrefix;
  spec.num_prefix_groups = 3;
  spec.shared_prefix_len = 16;
  spec.input_len = {LengthDist::kUniform, 10, 5, 1, 100};
  spec.output_len.mean = 4;
  return spec;
}

TEST(SharedPrefixSource, GroupsShareExactlyTheirPrefix) {
  const WorkloadSpec spec = PrefixSpec();
  const std::vector<RequestSpec> r = BuildOrDie(spec);
  WorkloadSpec random = spec;
  random.source = SourceKind::kRandom;
  const std::vector<RequestSpec> u = BuildOrDie(random);
  ASSERT_EQ(r.size(), 30u);
  for (size_t i = 0; i < r.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(r[i].prefix_group, static_cast<int32_t>(i % 3));
    // prompt = prefix + (drawn input length) suffix tokens.
    EXPECT_EQ(r[i].prompt.size(), 16 + u[i].prompt.size());
    for (size_t j = 0; j < i; ++j) {
      const size_t common = CommonPrefix(r[i].prompt, r[j].prompt);
      if (r[i].prefix_group == r[j].prefix_group) {
        EXPECT_EQ(common, 16u) << j;
      } else {
        EXPECT_EQ(common, 0u) << j;
      }
    }
  }
}

TEST(SharedPrefixSource, RandomGroupsAndMaxModelLen) {
  WorkloadSpec spec = PrefixSpec();
  spec.random_prefix_group = true;
  spec.num_requests = 300;
  spec.max_model_len = 24;
  const std::vector<RequestSpec> r = BuildOrDie(spec);
  std::vector<int> count(3, 0);
  int round_robin = 0;
  for (size_t i = 0; i < r.size(); ++i) {
    ASSERT_GE(r[i].prefix_group, 0);
    ASSERT_LT(r[i].prefix_group, 3);
    ++count[r[i].prefix_group];
    round_robin += r[i].prefix_group == static_cast<int32_t>(i % 3);
    EXPECT_LE(static_cast<int64_t>(r[i].prompt.size()), 23);
    EXPECT_GE(r[i].prompt.size(), 17u);
    EXPECT_LE(static_cast<int64_t>(r[i].prompt.size()) + r[i].output_len, 24);
    EXPECT_GE(r[i].output_len, 1);
  }
  for (int c : count) EXPECT_NEAR(c, 100, 30);
  EXPECT_LT(round_robin, 200);
  // Same groups' prompts still share their prefix.
  for (size_t i = 1; i < r.size(); ++i) {
    if (r[i].prefix_group == r[0].prefix_group) {
      EXPECT_GE(CommonPrefix(r[0].prompt, r[i].prompt), 16u);
    }
  }
}

// --- Multi-turn --------------------------------------------------------------------------

WorkloadSpec MultiTurnSpec() {
  WorkloadSpec spec;
  spec.seed = 4;
  spec.num_requests = 10;
  spec.source = SourceKind::kMultiTurn;
  spec.turns = 3;
  spec.think_time_s = 2.0;
  spec.arrival = ArrivalKind::kConstant;
  spec.request_rate = 0.5;
  spec.input_len = {LengthDist::kUniform, 20, 10, 1, 100};
  spec.output_len = {LengthDist::kUniform, 20, 10, 1, 100};
  return spec;
}

TEST(MultiTurnSource, Structure) {
  const std::vector<RequestSpec> r = BuildOrDie(MultiTurnSpec());
  ASSERT_EQ(r.size(), 10u);
  const std::vector<int64_t> conversations = {0, 0, 0, 1, 1, 1, 2, 2, 2, 3};
  const std::vector<int32_t> turns = {0, 1, 2, 0, 1, 2, 0, 1, 2, 0};
  for (size_t i = 0; i < r.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(r[i].id, static_cast<int64_t>(i));
    EXPECT_EQ(r[i].conversation_id, conversations[i]);
    EXPECT_EQ(r[i].turn, turns[i]);
    EXPECT_FALSE(r[i].prompt.empty());
    EXPECT_LE(r[i].prompt.size(), 30u);
    if (r[i].turn == 0) {
      // One arrival per conversation from the constant-rate process.
      EXPECT_DOUBLE_EQ(r[i].arrival_s, conversations[i] / 0.5);
      EXPECT_EQ(r[i].think_time_s, 0.0);
    } else {
      EXPECT_EQ(r[i].arrival_s, 0.0);
      EXPECT_GT(r[i].think_time_s, 0.0);
    }
  }
}

TEST(MultiTurnSource, ThinkTimes) {
  WorkloadSpec spec = MultiTurnSpec();
  spec.num_requests = 6000;
  spec.input_len.mean = 2;
  spec.input_len.spread = 1;
  std::vector<double> think;
  for (const RequestSpec& r : BuildOrDie(spec)) {
    if (r.turn > 0) think.push_back(r.think_time_s);
  }
  ASSERT_EQ(think.size(), 4000u);
  double mean = 0;
  for (double t : think) mean += t;
  mean /= static_cast<double>(think.size());
  EXPECT_NEAR(mean, 2.0, 2.0 * 0.05);  // exponential around think_time_s

  spec.think_time_fixed = true;
  for (const RequestSpec& r : BuildOrDie(spec)) {
    EXPECT_EQ(r.think_time_s, r.turn > 0 ? 2.0 : 0.0);
  }
}

TEST(MultiTurnSource, ConversationsFitMaxModelLen) {
  WorkloadSpec spec = MultiTurnSpec();
  spec.num_requests = 200;
  spec.turns = 5;
  spec.max_model_len = 100;
  const std::vector<RequestSpec> r = BuildOrDie(spec);
  int64_t context = 0;
  bool ended_early = false;
  for (size_t i = 0; i < r.size(); ++i) {
    if (r[i].turn == 0) {
      if (i > 0) {
        ended_early |=
            r[i - 1].turn < 4 && r[i - 1].conversation_id != r[i].conversation_id && i != r.size();
      }
      context = 0;
    } else {
      ASSERT_EQ(r[i].conversation_id, r[i - 1].conversation_id);
      ASSERT_EQ(r[i].turn, r[i - 1].turn + 1);
    }
    context += static_cast<int64_t>(r[i].prompt.size()) + r[i].output_len;
    EXPECT_LE(context, 100) << i;
    EXPECT_GE(r[i].output_len, 1);
    EXPECT_GE(r[i].prompt.size(), 1u);
  }
  EXPECT_TRUE(ended_early);
}

TEST(MultiTurnSource, SingleTurnConversations) {
  WorkloadSpec spec = MultiTurnSpec();
  spec.turns = 1;
  const std::vector<RequestSpec> r = BuildOrDie(spec);
  for (size_t i = 0; i < r.size(); ++i) {
    EXPECT_EQ(r[i].conversation_id, static_cast<int64_t>(i));
    EXPECT_EQ(r[i].turn, 0);
  }
}

}  // namespace
}  // namespace kvscope::engine

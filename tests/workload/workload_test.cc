// Tests for engine/workload.h: determinism, pinned generator output, arrival processes,
// length distributions, clipping, and ValidateWorkloadSpec.
#include "engine/workload.h"

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvscope::engine {
namespace {

using ::testing::HasSubstr;

void ExpectSameRequests(const std::vector<RequestSpec>& a, const std::vector<RequestSpec>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(a[i].id, b[i].id);
    // Bitwise: same spec -> same doubles.
    EXPECT_EQ(a[i].arrival_s, b[i].arrival_s);
    EXPECT_EQ(a[i].prompt, b[i].prompt);
    EXPECT_EQ(a[i].output_len, b[i].output_len);
    EXPECT_EQ(a[i].conversation_id, b[i].conversation_id);
    EXPECT_EQ(a[i].turn, b[i].turn);
    EXPECT_EQ(a[i].think_time_s, b[i].think_time_s);
    EXPECT_EQ(a[i].prefix_group, b[i].prefix_group);
  }
}

std::vector<RequestSpec> BuildOrDie(const WorkloadSpec& spec) {
  absl::StatusOr<std::vector<RequestSpec>> r = BuildWorkload(spec, nullptr);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *std::move(r) : std::vector<RequestSpec>{};
}

struct Moments {
  double mean = 0;
  double stddev = 0;
  double cv() const { return stddev / mean; }
};
Moments ComputeMoments(const std::vector<double>& x) {
  Moments m;
  for (double v : x) m.mean += v;
  m.mean /= static_cast<double>(x.size());
  double ss = 0;
  for (double v : x) ss += (v - m.mean) * (v - m.mean);
  m.stddev = std::sqrt(ss / static_cast<double>(x.size() - 1));
  return m;
}

std::vector<double> InterArrivals(const std::vector<RequestSpec>& r) {
  std::vector<double> gaps;
  for (size_t i = 1; i < r.size(); ++i) gaps.push_back(r[i].arrival_s - r[i - 1].arrival_s);
  return gaps;
}

// A spec with 1-token prompts and outputs, for arrival statistics (cheap to build).
WorkloadSpec ArrivalSpec(ArrivalKind kind, double rate, int64_t n) {
  WorkloadSpec spec;
  spec.seed = 7;
  spec.num_requests = n;
  spec.arrival = kind;
  spec.request_rate = rate;
  spec.input_len.mean = 1;
  spec.output_len.mean = 1;
  return spec;
}

WorkloadSpec RichSpec(uint64_t seed) {
  WorkloadSpec spec;
  spec.seed = seed;
  spec.num_requests = 50;
  spec.arrival = ArrivalKind::kGamma;
  spec.request_rate = 4;
  spec.burstiness = 0.5;
  spec.input_len = {LengthDist::kLognormal, 40, 0.6, 2, 200};
  spec.output_len = {LengthDist::kNormal, 20, 5, 1, 64};
  return spec;
}

TEST(WorkloadTest, SameSeedGivesIdenticalRequests) {
  for (SourceKind source :
       {SourceKind::kRandom, SourceKind::kSharedPrefix, SourceKind::kMultiTurn}) {
    SCOPED_TRACE(static_cast<int>(source));
    WorkloadSpec spec = RichSpec(123);
    spec.source = source;
    ExpectSameRequests(BuildOrDie(spec), BuildOrDie(spec));
  }
}

TEST(WorkloadTest, DifferentSeedGivesDifferentRequests) {
  for (SourceKind source :
       {SourceKind::kRandom, SourceKind::kSharedPrefix, SourceKind::kMultiTurn}) {
    SCOPED_TRACE(static_cast<int>(source));
    WorkloadSpec a = RichSpec(1);
    a.source = source;
    WorkloadSpec b = a;
    b.seed = 2;
    const std::vector<RequestSpec> ra = BuildOrDie(a), rb = BuildOrDie(b);
    ASSERT_EQ(ra.size(), rb.size());
    int same_prompts = 0, same_arrivals = 0, same_outputs = 0;
    for (size_t i = 0; i < ra.size(); ++i) {
      same_prompts += ra[i].prompt == rb[i].prompt;
      same_arrivals += ra[i].arrival_s == rb[i].arrival_s && ra[i].arrival_s != 0;
      same_outputs += ra[i].output_len == rb[i].output_len;
    }
    EXPECT_EQ(same_prompts, 0);
    EXPECT_EQ(same_arrivals, 0);
    EXPECT_LT(same_outputs, static_cast<int>(ra.size()) / 2);
  }
}

// Changing one parameter leaves the independent streams alone.
TEST(WorkloadTest, StreamsAreIndependent) {
  const WorkloadSpec base = RichSpec(5);
  const std::vector<RequestSpec> r0 = BuildOrDie(base);

  WorkloadSpec other_output = base;
  other_output.output_len = {LengthDist::kUniform, 30, 10, 1, 64};
  const std::vector<RequestSpec> r1 = BuildOrDie(other_output);
  WorkloadSpec other_rate = base;
  other_rate.request_rate = 8;
  const std::vector<RequestSpec> r2 = BuildOrDie(other_rate);
  WorkloadSpec other_input = base;
  other_input.input_len.mean = 80;
  const std::vector<RequestSpec> r3 = BuildOrDie(other_input);
  for (size_t i = 0; i < r0.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(r0[i].prompt, r1[i].prompt);
    EXPECT_EQ(r0[i].arrival_s, r1[i].arrival_s);
    EXPECT_EQ(r0[i].prompt, r2[i].prompt);
    EXPECT_EQ(r0[i].output_len, r2[i].output_len);
    EXPECT_DOUBLE_EQ(r0[i].arrival_s * 4, r2[i].arrival_s * 8);
    EXPECT_EQ(r0[i].arrival_s, r3[i].arrival_s);
    EXPECT_EQ(r0[i].output_len, r3[i].output_len);
    // Per-request token streams: the shorter prompt is a prefix of the longer one.
    const size_t common = std::min(r0[i].prompt.size(), r3[i].prompt.size());
    EXPECT_TRUE(
        std::equal(r0[i].prompt.begin(), r0[i].prompt.begin() + common, r3[i].prompt.begin()));
  }
}

// Pins the generator: if one of these changes, every recorded workload changed. Update only
// on purpose (and say so in the change description).
TEST(WorkloadTest, PinnedValuesForSeed1) {
  WorkloadSpec spec;
  spec.seed = 1;
  spec.num_requests = 3;
  spec.arrival = ArrivalKind::kPoisson;
  spec.request_rate = 2;
  spec.input_len = {LengthDist::kLognormal, 100, 0.5, 1, 1000};
  spec.output_len = {LengthDist::kUniform, 50, 20, 1, 1000};
  const std::vector<RequestSpec> r = BuildOrDie(spec);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].arrival_s, 0.0);
  EXPECT_DOUBLE_EQ(r[1].arrival_s, 0.13038640408640512);
  EXPECT_DOUBLE_EQ(r[2].arrival_s, 0.37063375636973273);
  EXPECT_EQ(r[0].prompt.size(), 68u);
  EXPECT_EQ(r[1].prompt.size(), 65u);
  EXPECT_EQ(r[2].prompt.size(), 97u);
  EXPECT_EQ(r[0].output_len, 46);
  EXPECT_EQ(r[1].output_len, 39);
  EXPECT_EQ(r[2].output_len, 37);
  EXPECT_THAT(std::vector<int32_t>(r[0].prompt.begin(), r[0].prompt.begin() + 3),
              ::testing::ElementsAre(12899, 24196, 17976));
}

TEST(WorkloadTest, PinnedGammaSharedPrefixAndMultiTurn) {
  WorkloadSpec spec;
  spec.seed = 1;
  spec.num_requests = 3;
  spec.arrival = ArrivalKind::kGamma;
  spec.request_rate = 2;
  spec.burstiness = 0.5;
  spec.source = SourceKind::kSharedPrefix;
  spec.num_prefix_groups = 2;
  spec.shared_prefix_len = 4;
  const std::vector<RequestSpec> r = BuildOrDie(spec);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].arrival_s, 0.0);
  EXPECT_DOUBLE_EQ(r[1].arrival_s, 0.22287687864961361);
  EXPECT_DOUBLE_EQ(r[2].arrival_s, 0.35421884048496366);
  EXPECT_EQ(r[0].prompt.size(), 4u + 128u);
  EXPECT_EQ(r[0].prompt[0], 21688);
  EXPECT_EQ(r[0].prompt[1], 11825);
  EXPECT_EQ(r[0].prompt[4], 12899);  // the suffix uses request 0's token stream
  EXPECT_EQ(r[1].prompt[0], 13521);
  EXPECT_EQ(r[1].prompt[1], 1358);
  EXPECT_EQ(r[1].prompt[4], 29273);

  WorkloadSpec multi;
  multi.seed = 1;
  multi.num_requests = 3;
  multi.source = SourceKind::kMultiTurn;
  const std::vector<RequestSpec> m = BuildOrDie(multi);
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(m[0].think_time_s, 0.0);
  EXPECT_DOUBLE_EQ(m[1].think_time_s, 0.27720243513416348);
  EXPECT_DOUBLE_EQ(m[2].think_time_s, 0.5360190543013813);
}

TEST(WorkloadTest, AllAtOnceAndClosedLoopArriveAtZero) {
  for (ArrivalKind kind : {ArrivalKind::kAllAtOnce, ArrivalKind::kClosedLoop}) {
    WorkloadSpec spec = ArrivalSpec(kind, 0, 20);
    spec.concurrency = 4;
    for (const RequestSpec& r : BuildOrDie(spec)) EXPECT_EQ(r.arrival_s, 0.0);
  }
}

TEST(WorkloadTest, PoissonArrivals) {
  const double rate = 25;
  const std::vector<RequestSpec> r = BuildOrDie(ArrivalSpec(ArrivalKind::kPoisson, rate, 20000));
  EXPECT_EQ(r[0].arrival_s, 0.0);
  const std::vector<double> gaps = InterArrivals(r);
  for (double g : gaps) ASSERT_GE(g, 0.0);
  const Moments m = ComputeMoments(gaps);
  EXPECT_NEAR(m.mean, 1 / rate, 0.03 / rate);
  EXPECT_NEAR(m.cv(), 1.0, 0.05);
}

TEST(WorkloadTest, GammaArrivalsBursty) {
  const double rate = 10;
  WorkloadSpec spec = ArrivalSpec(ArrivalKind::kGamma, rate, 20000);
  spec.burstiness = 0.25;
  const Moments m = ComputeMoments(InterArrivals(BuildOrDie(spec)));
  EXPECT_NEAR(m.mean, 1 / rate, 0.05 / rate);
  EXPECT_NEAR(m.cv(), 2.0, 0.2);  // CV = 1 / sqrt(burstiness)
}

TEST(WorkloadTest, GammaArrivalsSmooth) {
  const double rate = 10;
  WorkloadSpec spec = ArrivalSpec(ArrivalKind::kGamma, rate, 20000);
  spec.burstiness = 4;
  const Moments m = ComputeMoments(InterArrivals(BuildOrDie(spec)));
  EXPECT_NEAR(m.mean, 1 / rate, 0.03 / rate);
  EXPECT_NEAR(m.cv(), 0.5, 0.025);
}

TEST(WorkloadTest, ConstantRateIsExact) {
  const std::vector<RequestSpec> r = BuildOrDie(ArrivalSpec(ArrivalKind::kConstant, 4, 100));
  for (size_t i = 0; i < r.size(); ++i) EXPECT_EQ(r[i].arrival_s, static_cast<double>(i) / 4);
}

std::vector<double> InputLengths(const LengthSpec& len, int64_t n, uint64_t seed = 11) {
  WorkloadSpec spec;
  spec.seed = seed;
  spec.num_requests = n;
  spec.input_len = len;
  spec.output_len.mean = 1;
  spec.vocab_size = 100;
  std::vector<double> out;
  for (const RequestSpec& r : BuildOrDie(spec)) out.push_back(static_cast<double>(r.prompt.size()));
  return out;
}

TEST(WorkloadTest, FixedLength) {
  for (double len : InputLengths({LengthDist::kFixed, 37, 0, 1, 100}, 50)) EXPECT_EQ(len, 37);
  // Clipped.
  for (double len : InputLengths({LengthDist::kFixed, 500, 0, 1, 100}, 5)) EXPECT_EQ(len, 100);
}

TEST(WorkloadTest, UniformLength) {
  const std::vector<double> x = InputLengths({LengthDist::kUniform, 100, 40, 1, 1000}, 20000);
  const Moments m = ComputeMoments(x);
  EXPECT_NEAR(m.mean, 100, 2);
  // Discrete uniform on 81 values: variance (81^2 - 1) / 12.
  EXPECT_NEAR(m.stddev, std::sqrt((81.0 * 81.0 - 1) / 12), 0.03 * 23.4);
  EXPECT_EQ(*std::min_element(x.begin(), x.end()), 60);
  EXPECT_EQ(*std::max_element(x.begin(), x.end()), 140);
}

TEST(WorkloadTest, NormalLength) {
  const Moments m = ComputeMoments(InputLengths({LengthDist::kNormal, 200, 30, 1, 1000}, 20000));
  EXPECT_NEAR(m.mean, 200, 200 * 0.02);
  EXPECT_NEAR(m.stddev, 30, 30 * 0.03);
}

TEST(WorkloadTest, LognormalLength) {
  const double sigma = 0.5;
  const std::vector<double> x =
      InputLengths({LengthDist::kLognormal, 300, sigma, 1, 1 << 20}, 20000);
  const Moments m = ComputeMoments(x);
  EXPECT_NEAR(m.mean, 300, 300 * 0.02);
  EXPECT_NEAR(m.stddev, 300 * std::sqrt(std::exp(sigma * sigma) - 1), 300 * 0.53 * 0.05);
  std::vector<double> logs;
  for (double v : x) logs.push_back(std::log(v));
  const Moments lm = ComputeMoments(logs);
  EXPECT_NEAR(lm.mean, std::log(300) - sigma * sigma / 2, 0.01);
  EXPECT_NEAR(lm.stddev, sigma, sigma * 0.03);
}

TEST(WorkloadTest, ClippingBoundsRespected) {
  for (LengthDist dist : {LengthDist::kUniform, LengthDist::kNormal, LengthDist::kLognormal}) {
    SCOPED_TRACE(static_cast<int>(dist));
    const std::vector<double> x =
        InputLengths({dist, 100, dist == LengthDist::kLognormal ? 1.5 : 80, 50, 150}, 5000);
    EXPECT_EQ(*std::min_element(x.begin(), x.end()), 50);
    EXPECT_EQ(*std::max_element(x.begin(), x.end()), 150);
  }
}

TEST(WorkloadTest, TokenIdsInRange) {
  WorkloadSpec spec;
  spec.num_requests = 20;
  spec.vocab_size = 10;
  spec.first_token_id = 3;
  spec.input_len.mean = 500;
  std::vector<int> seen(10, 0);
  for (const RequestSpec& r : BuildOrDie(spec)) {
    for (int32_t t : r.prompt) {
      ASSERT_GE(t, 3);
      ASSERT_LT(t, 10);
      ++seen[t];
    }
  }
  for (int t = 3; t < 10; ++t) EXPECT_NEAR(seen[t], 10000 / 7.0, 150) << t;
}

TEST(WorkloadTest, MaxModelLenClipsPromptAndOutput) {
  WorkloadSpec spec;
  spec.num_requests = 200;
  spec.max_model_len = 64;
  spec.input_len = {LengthDist::kUniform, 50, 49, 1, 1000};
  spec.output_len = {LengthDist::kUniform, 50, 49, 1, 1000};
  bool clipped_input = false, clipped_output = false;
  for (const RequestSpec& r : BuildOrDie(spec)) {
    EXPECT_LE(static_cast<int64_t>(r.prompt.size()), 63);
    EXPECT_GE(r.output_len, 1);
    EXPECT_LE(static_cast<int64_t>(r.prompt.size()) + r.output_len, 64);
    clipped_input |= r.prompt.size() == 63;
    clipped_output |= static_cast<int64_t>(r.prompt.size()) + r.output_len == 64;
  }
  EXPECT_TRUE(clipped_input);
  EXPECT_TRUE(clipped_output);
}

TEST(WorkloadTest, IgnoreEosIsCarried) {
  WorkloadSpec spec;
  spec.ignore_eos = false;
  EXPECT_TRUE(ValidateWorkloadSpec(spec).ok());
}

TEST(WorkloadTest, DefaultSpecIsValid) {
  EXPECT_TRUE(ValidateWorkloadSpec(WorkloadSpec{}).ok());
  EXPECT_EQ(BuildOrDie(WorkloadSpec{}).size(), 100u);
}

struct BadCase {
  std::string name;
  std::function<void(WorkloadSpec&)> mutate;
  std::string field;  // expected in the message
};

TEST(WorkloadTest, ValidateRejectsEveryBadField) {
  const std::vector<BadCase> cases = {
      {"zero requests", [](WorkloadSpec& s) { s.num_requests = 0; }, "num_requests"},
      {"negative requests", [](WorkloadSpec& s) { s.num_requests = -3; }, "num_requests"},
      {"poisson rate 0",
       [](WorkloadSpec& s) {
         s.arrival = ArrivalKind::kPoisson;
         s.request_rate = 0;
       },
       "request_rate"},
      {"gamma negative rate",
       [](WorkloadSpec& s) {
         s.arrival = ArrivalKind::kGamma;
         s.request_rate = -1;
       },
       "request_rate"},
      {"constant nan rate",
       [](WorkloadSpec& s) {
         s.arrival = ArrivalKind::kConstant;
         s.request_rate = NAN;
       },
       "request_rate"},
      {"poisson inf rate",
       [](WorkloadSpec& s) {
         s.arrival = ArrivalKind::kPoisson;
         s.request_rate = INFINITY;
       },
       "request_rate"},
      {"burstiness 0",
       [](WorkloadSpec& s) {
         s.arrival = ArrivalKind::kGamma;
         s.request_rate = 1;
         s.burstiness = 0;
       },
       "burstiness"},
      {"burstiness negative", [](WorkloadSpec& s) { s.burstiness = -2; }, "burstiness"},
      {"concurrency 0",
       [](WorkloadSpec& s) {
         s.arrival = ArrivalKind::kClosedLoop;
         s.concurrency = 0;
       },
       "concurrency"},
      {"trace arrivals without trace", [](WorkloadSpec& s) { s.arrival = ArrivalKind::kTrace; },
       "arrival"},
      {"input min 0", [](WorkloadSpec& s) { s.input_len.min = 0; }, "input_len.min"},
      {"input min > max",
       [](WorkloadSpec& s) {
         s.input_len.min = 10;
         s.input_len.max = 5;
       },
       "input_len.min"},
      {"output min > max",
       [](WorkloadSpec& s) {
         s.output_len.min = 10;
         s.output_len.max = 9;
       },
       "output_len.min"},
      {"output max too big", [](WorkloadSpec& s) { s.output_len.max = int64_t{1} << 32; },
       "output_len.max"},
      {"negative spread", [](WorkloadSpec& s) { s.input_len.spread = -1; }, "input_len.spread"},
      {"nan spread", [](WorkloadSpec& s) { s.output_len.spread = NAN; }, "output_len.spread"},
      {"inf mean", [](WorkloadSpec& s) { s.input_len.mean = INFINITY; }, "input_len.mean"},
      {"huge mean", [](WorkloadSpec& s) { s.input_len.mean = 1e300; }, "input_len.mean"},
      {"lognormal mean 0",
       [](WorkloadSpec& s) {
         s.input_len.dist = LengthDist::kLognormal;
         s.input_len.mean = 0;
       },
       "input_len.mean"},
      {"missing text path", [](WorkloadSpec& s) { s.source = SourceKind::kText; }, "text_path"},
      {"missing trace path", [](WorkloadSpec& s) { s.source = SourceKind::kTrace; }, "trace_path"},
      {"trace block 0",
       [](WorkloadSpec& s) {
         s.source = SourceKind::kTrace;
         s.trace_path = "x.jsonl";
         s.trace_block_tokens = 0;
       },
       "trace_block_tokens"},
      {"trace time scale 0",
       [](WorkloadSpec& s) {
         s.source = SourceKind::kTrace;
         s.trace_path = "x.jsonl";
         s.trace_time_scale = 0;
       },
       "trace_time_scale"},
      {"prefix groups 0",
       [](WorkloadSpec& s) {
         s.source = SourceKind::kSharedPrefix;
         s.num_prefix_groups = 0;
       },
       "num_prefix_groups"},
      {"prefix len 0",
       [](WorkloadSpec& s) {
         s.source = SourceKind::kSharedPrefix;
         s.shared_prefix_len = 0;
       },
       "shared_prefix_len"},
      {"prefix does not fit",
       [](WorkloadSpec& s) {
         s.source = SourceKind::kSharedPrefix;
         s.shared_prefix_len = 100;
         s.max_model_len = 101;
       },
       "shared_prefix_len"},
      {"turns 0",
       [](WorkloadSpec& s) {
         s.source = SourceKind::kMultiTurn;
         s.turns = 0;
       },
       "turns"},
      {"negative think time",
       [](WorkloadSpec& s) {
         s.source = SourceKind::kMultiTurn;
         s.think_time_s = -1;
       },
       "think_time_s"},
      {"negative first id", [](WorkloadSpec& s) { s.first_token_id = -1; }, "first_token_id"},
      {"vocab <= first id",
       [](WorkloadSpec& s) {
         s.vocab_size = 3;
         s.first_token_id = 3;
       },
       "vocab_size"},
      {"vocab too big", [](WorkloadSpec& s) { s.vocab_size = int64_t{1} << 32; }, "vocab_size"},
      {"negative max_model_len", [](WorkloadSpec& s) { s.max_model_len = -1; }, "max_model_len"},
      {"max_model_len 1", [](WorkloadSpec& s) { s.max_model_len = 1; }, "max_model_len"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.name);
    WorkloadSpec spec;
    c.mutate(spec);
    const absl::Status s = ValidateWorkloadSpec(spec);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.field));
    // BuildWorkload validates too.
    EXPECT_EQ(BuildWorkload(spec, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(WorkloadTest, FieldsOfOtherSourcesAreNotChecked) {
  WorkloadSpec spec;
  spec.turns = 0;
  spec.num_prefix_groups = 0;
  spec.trace_block_tokens = 0;
  spec.concurrency = 0;  // not closed loop
  EXPECT_TRUE(ValidateWorkloadSpec(spec).ok());
}

}  // namespace
}  // namespace kvscope::engine

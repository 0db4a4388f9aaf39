// Summaries against a hand-built timeline. Every expected value is worked out by hand in the
// comments; times are chosen as binary fractions so millisecond values are exact.
#include "engine/metrics.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace kvscope::engine {
namespace {

constexpr double kTol = 1e-9;

RequestRecord Completed(int64_t id, double arrival, std::vector<double> token_times, double finish,
                        int64_t input_tokens) {
  RequestRecord r;
  r.id = id;
  r.arrival_s = arrival;
  r.first_scheduled_s = arrival;
  r.first_token_s = token_times.empty() ? -1 : token_times.front();
  r.finish_s = finish;
  r.output_tokens = static_cast<int64_t>(token_times.size());
  r.token_times_s = std::move(token_times);
  r.input_tokens = input_tokens;
  r.completed = true;
  return r;
}

// A: arrives 0,    tokens 0.5 0.75 1.0 1.5, finish 1.5, 10 in / 4 out
//    TTFT 500, E2EL 1500, TPOT (1500-500)/3 = 333.33, ITL 250 250 500
// B: arrives 0.25, tokens 1.0 1.5,          finish 2.0, 20 in / 2 out
//    TTFT 750, E2EL 1750, TPOT (1750-750)/1 = 1000,   ITL 500
// C: arrives 0.5,  token  0.75,             finish 0.75, 30 in / 1 out
//    TTFT 250, E2EL 250, no TPOT, no ITL
// D: arrives 1.0, rejected (never finished), 40 in.
std::vector<RequestRecord> Timeline() {
  std::vector<RequestRecord> r;
  r.push_back(Completed(0, 0.0, {0.5, 0.75, 1.0, 1.5}, 1.5, 10));
  r.push_back(Completed(1, 0.25, {1.0, 1.5}, 2.0, 20));
  r.push_back(Completed(2, 0.5, {0.75}, 0.75, 30));
  RequestRecord d;
  d.id = 3;
  d.arrival_s = 1.0;
  d.input_tokens = 40;
  d.error = "rejected: prompt longer than the KV budget";
  r.push_back(d);
  r[0].quality_mean_kl = 0.1;
  r[0].quality_top1_agreement = 0.9;
  r[1].quality_mean_kl = 0.3;
  r[3].quality_top1_agreement = 0.5;
  r[0].preemptions = 1;
  r[1].preemptions = 1;
  return r;
}

// dt = 0.5, 0.5, and 0.3 (the last step's own duration).
// waste = (400*0.5 + 500*0.5 + 0*0.3) / (1000*0.5 + 2000*0.5 + 1500*0.3) = 450 / 1950.
std::vector<StepRecord> Steps() {
  std::vector<StepRecord> s(3);
  s[0] = {.start_s = 0.0, .schedule_s = 0.01, .forward_s = 0.08, .sample_s = 0.01,
          .batch_size = 2, .num_tokens = 30, .prefill_tokens = 28, .decode_tokens = 2,
          .kv_reserved_bytes = 1000, .kv_used_bytes = 600,
          .prefix_query_tokens = 40, .prefix_hit_tokens = 10};
  s[1] = {.start_s = 0.5, .schedule_s = 0.02, .forward_s = 0.16, .sample_s = 0.02,
          .batch_size = 3, .num_tokens = 3, .decode_tokens = 3, .preemptions = 1,
          .running = 2, .waiting = 1, .swapped = 1,
          .kv_reserved_bytes = 2000, .kv_used_bytes = 1500, .host_kv_bytes = 4096,
          .swapped_bytes = 512, .prefix_query_tokens = 20, .prefix_hit_tokens = 20};
  s[2] = {.start_s = 1.0, .schedule_s = 0.01, .forward_s = 0.28, .sample_s = 0.01,
          .batch_size = 1, .num_tokens = 1, .decode_tokens = 1, .preemptions = 1,
          .kv_reserved_bytes = 1500, .kv_used_bytes = 1500};
  return s;
}

TEST(PercentileTest, MatchesNumpyLinearInterpolation) {
  EXPECT_DOUBLE_EQ(Percentile({1, 2, 3, 4}, 0.99), 3.97);  // np.percentile(.., 99)
  EXPECT_DOUBLE_EQ(Percentile({1, 2, 3, 4}, 0.90), 3.7);
  EXPECT_DOUBLE_EQ(Percentile({1, 2, 3, 4}, 0.50), 2.5);
  EXPECT_DOUBLE_EQ(Percentile({4, 1, 3, 2}, 0.99), 3.97);  // order does not matter
  EXPECT_DOUBLE_EQ(Percentile({10, 7, 4, 3, 2, 1}, 0.25), 2.25);
  EXPECT_DOUBLE_EQ(Percentile({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 0.99), 9.91);
  EXPECT_DOUBLE_EQ(Percentile({1, 2, 3, 4}, 0.0), 1);
  EXPECT_DOUBLE_EQ(Percentile({1, 2, 3, 4}, 1.0), 4);
  EXPECT_DOUBLE_EQ(Percentile({1, 2, 3, 4}, 7.0), 4);  // clamped
  EXPECT_DOUBLE_EQ(Percentile({42}, 0.99), 42);
  EXPECT_DOUBLE_EQ(Percentile({}, 0.5), 0);
}

TEST(LatencyStatsTest, PopulationStdAndPercentiles) {
  const LatencyStats s = ComputeLatencyStats({2, 4, 4, 4, 5, 5, 7, 9});
  EXPECT_DOUBLE_EQ(s.mean, 5);
  EXPECT_DOUBLE_EQ(s.std, 2);  // numpy ddof=0; the sample std would be 2.138
  EXPECT_DOUBLE_EQ(s.median, 4.5);
  EXPECT_DOUBLE_EQ(s.p50, 4.5);
  EXPECT_DOUBLE_EQ(s.p90, 7.6);   // rank 6.3: 7 + 0.3 * 2
  EXPECT_DOUBLE_EQ(s.p95, 8.3);   // rank 6.65
  EXPECT_DOUBLE_EQ(s.p99, 8.86);  // rank 6.93
  const LatencyStats empty = ComputeLatencyStats({});
  EXPECT_EQ(empty.mean, 0);
  EXPECT_EQ(empty.std, 0);
  EXPECT_EQ(empty.p99, 0);
}

TEST(SummarizeTest, RequestMetricsFollowVllmDefinitions) {
  const Summary s = Summarize(Timeline(), Steps(), 4.0, {});
  EXPECT_EQ(s.completed, 3);
  EXPECT_EQ(s.failed, 1);
  EXPECT_DOUBLE_EQ(s.duration_s, 2.0);  // first arrival 0 -> last finish 2.0
  EXPECT_EQ(s.total_input_tokens, 60);  // D's 40 do not count
  EXPECT_EQ(s.total_output_tokens, 7);
  EXPECT_DOUBLE_EQ(s.request_throughput, 1.5);
  EXPECT_DOUBLE_EQ(s.output_throughput, 3.5);
  EXPECT_DOUBLE_EQ(s.total_token_throughput, 33.5);
  EXPECT_EQ(s.request_goodput, 0);

  // TTFT {500, 750, 250}.
  EXPECT_NEAR(s.ttft_ms.mean, 500, kTol);
  EXPECT_NEAR(s.ttft_ms.median, 500, kTol);
  EXPECT_NEAR(s.ttft_ms.std, std::sqrt((250.0 * 250 * 2) / 3), kTol);
  EXPECT_NEAR(s.ttft_ms.p50, 500, kTol);
  EXPECT_NEAR(s.ttft_ms.p90, 700, kTol);  // rank 1.8: 500 + 0.8 * 250
  EXPECT_NEAR(s.ttft_ms.p95, 725, kTol);
  EXPECT_NEAR(s.ttft_ms.p99, 745, kTol);

  // TPOT {1000/3, 1000}: C has one token.
  EXPECT_NEAR(s.tpot_ms.mean, 2000.0 / 3, kTol);
  EXPECT_NEAR(s.tpot_ms.median, 2000.0 / 3, kTol);
  EXPECT_NEAR(s.tpot_ms.std, 1000.0 / 3, kTol);
  EXPECT_NEAR(s.tpot_ms.p90, 1000.0 / 3 + 0.9 * 2000.0 / 3, kTol);
  EXPECT_NEAR(s.tpot_ms.p99, 1000.0 / 3 + 0.99 * 2000.0 / 3, kTol);

  // ITL pooled {250, 250, 500, 500}.
  EXPECT_NEAR(s.itl_ms.mean, 375, kTol);
  EXPECT_NEAR(s.itl_ms.median, 375, kTol);
  EXPECT_NEAR(s.itl_ms.std, 125, kTol);
  EXPECT_NEAR(s.itl_ms.p90, 500, kTol);
  EXPECT_NEAR(s.itl_ms.p99, 500, kTol);

  // E2EL {1500, 1750, 250}.
  const double m = 3500.0 / 3;
  EXPECT_NEAR(s.e2el_ms.mean, m, kTol);
  EXPECT_NEAR(s.e2el_ms.median, 1500, kTol);
  EXPECT_NEAR(s.e2el_ms.std,
              std::sqrt(((1500 - m) * (1500 - m) + (1750 - m) * (1750 - m) +
                         (250 - m) * (250 - m)) / 3),
              kTol);
  EXPECT_NEAR(s.e2el_ms.p90, 1700, kTol);  // rank 1.8: 1500 + 0.8 * 250
  EXPECT_NEAR(s.e2el_ms.p99, 1745, kTol);

  EXPECT_EQ(s.target_request_rate, 4.0);
  EXPECT_DOUBLE_EQ(s.achieved_request_rate, 3.0);  // 3 gaps over arrivals 0 .. 1.0
  // At t=0.5: A, B, C. At t=1.0: A, B, D (open until the run ends at 2.0; C ended 0.75).
  EXPECT_EQ(s.peak_concurrency, 3);

  // Quality: KL over A, B; top-1 over A and the failed D (requests that carry the value).
  ASSERT_TRUE(s.quality_mean_kl.has_value());
  EXPECT_NEAR(*s.quality_mean_kl, 0.2, kTol);
  ASSERT_TRUE(s.quality_top1_agreement.has_value());
  EXPECT_NEAR(*s.quality_top1_agreement, 0.7, kTol);
}

TEST(SummarizeTest, StepMetrics) {
  const Summary s = Summarize(Timeline(), Steps(), 0, {});
  EXPECT_EQ(s.peak_kv_reserved_bytes, 2000);
  EXPECT_EQ(s.peak_kv_used_bytes, 1500);
  EXPECT_EQ(s.peak_host_kv_bytes, 4096);
  EXPECT_EQ(s.peak_swapped_bytes, 512);
  EXPECT_NEAR(s.kv_waste_fraction, 450.0 / 1950.0, kTol);
  EXPECT_EQ(s.preemptions, 2);  // from the steps (the requests also say 2)
  EXPECT_EQ(s.num_steps, 3);
  EXPECT_DOUBLE_EQ(s.mean_batch_size, 2);
  EXPECT_DOUBLE_EQ(s.mean_tokens_per_step, 34.0 / 3);
  EXPECT_DOUBLE_EQ(s.prefix_cache_hit_rate, 0.5);  // 30 hit of 60 queried
  // Schedule 0.04, forward 0.52, sample 0.04 of 0.6.
  EXPECT_NEAR(s.schedule_time_fraction, 0.04 / 0.6, kTol);
  EXPECT_NEAR(s.forward_time_fraction, 0.52 / 0.6, kTol);
  EXPECT_NEAR(s.sample_time_fraction, 0.04 / 0.6, kTol);

  // Steps are taken in start order whatever order they come in.
  std::vector<StepRecord> shuffled = Steps();
  std::swap(shuffled[0], shuffled[2]);
  EXPECT_NEAR(Summarize(Timeline(), shuffled, 0, {}).kv_waste_fraction, 450.0 / 1950.0, kTol);

  // Without steps: no memory figures, preemptions from the requests.
  const Summary no_steps = Summarize(Timeline(), {}, 0, {});
  EXPECT_EQ(no_steps.kv_waste_fraction, 0);
  EXPECT_EQ(no_steps.prefix_cache_hit_rate, 0);
  EXPECT_EQ(no_steps.schedule_time_fraction, 0);
  EXPECT_EQ(no_steps.preemptions, 2);
  EXPECT_EQ(no_steps.num_steps, 0);

  // No reserved memory at all: waste 0, not NaN.
  std::vector<StepRecord> empty_kv = Steps();
  for (StepRecord& st : empty_kv) st.kv_reserved_bytes = st.kv_used_bytes = 0;
  EXPECT_EQ(Summarize({}, empty_kv, 0, {}).kv_waste_fraction, 0);
}

TEST(SummarizeTest, GoodputForEachObjective) {
  const auto goodput = [](SloSpec slo) {
    return Summarize(Timeline(), Steps(), 0, slo).request_goodput;
  };
  // TTFT {500, 750, 250}: <= 500 holds for A (at the bound) and C -> 2 / 2 s.
  EXPECT_DOUBLE_EQ(goodput({.ttft_ms = 500}), 1.0);
  EXPECT_DOUBLE_EQ(goodput({.ttft_ms = 499}), 0.5);
  // TPOT {333, 1000, single token = 0}: 1000 admits all three.
  EXPECT_DOUBLE_EQ(goodput({.tpot_ms = 1000}), 1.5);
  EXPECT_DOUBLE_EQ(goodput({.tpot_ms = 300}), 0.5);  // only C
  // E2EL {1500, 1750, 250}.
  EXPECT_DOUBLE_EQ(goodput({.e2el_ms = 1000}), 0.5);
  EXPECT_DOUBLE_EQ(goodput({.e2el_ms = 1750}), 1.5);
  // All given objectives must hold.
  EXPECT_DOUBLE_EQ(goodput({.ttft_ms = 500, .e2el_ms = 1600}), 1.0);  // A, C
  EXPECT_DOUBLE_EQ(goodput({.ttft_ms = 500, .tpot_ms = 300}), 0.5);   // C
  EXPECT_DOUBLE_EQ(goodput({.ttft_ms = 100, .tpot_ms = 300, .e2el_ms = 100}), 0);
}

TEST(SummarizeTest, SingleTokenOutputsHaveNoTpot) {
  std::vector<RequestRecord> r = {Completed(0, 0, {0.25}, 0.25, 5),
                                  Completed(1, 0, {0.5}, 0.5, 5)};
  const Summary s = Summarize(r, {}, 0, {.tpot_ms = 0.0});
  EXPECT_EQ(s.tpot_ms.mean, 0);
  EXPECT_EQ(s.tpot_ms.p99, 0);
  EXPECT_EQ(s.itl_ms.mean, 0);
  EXPECT_NEAR(s.ttft_ms.mean, 375, kTol);
  EXPECT_DOUBLE_EQ(s.request_goodput, 4.0);  // TPOT counts as 0 <= 0: both good over 0.5 s
  EXPECT_EQ(s.achieved_request_rate, std::numeric_limits<double>::infinity());
  EXPECT_EQ(SummaryToJson(s)["achieved_request_rate"], "inf");
}

TEST(SummarizeTest, FailedRequestsAreExcludedFromLatencies) {
  std::vector<RequestRecord> r = Timeline();
  RequestRecord interrupted = Completed(9, 0.0, {5.0, 6.0, 7.0}, 8.0, 100);
  interrupted.completed = false;
  interrupted.error = "interrupted";
  r.push_back(interrupted);
  const Summary s = Summarize(r, Steps(), 0, {});
  EXPECT_EQ(s.completed, 3);
  EXPECT_EQ(s.failed, 2);
  EXPECT_DOUBLE_EQ(s.duration_s, 2.0);
  EXPECT_EQ(s.total_output_tokens, 7);
  EXPECT_NEAR(s.ttft_ms.mean, 500, kTol);
  EXPECT_NEAR(s.itl_ms.mean, 375, kTol);
  EXPECT_NEAR(s.e2el_ms.p99, 1745, kTol);

  // Only failures: no duration, no throughput.
  std::vector<RequestRecord> failed = {Timeline()[3]};
  const Summary f = Summarize(failed, {}, 0, {.ttft_ms = 1});
  EXPECT_EQ(f.completed, 0);
  EXPECT_EQ(f.failed, 1);
  EXPECT_EQ(f.duration_s, 0);
  EXPECT_EQ(f.request_throughput, 0);
  EXPECT_EQ(f.request_goodput, 0);
  EXPECT_EQ(f.achieved_request_rate, 0);
  EXPECT_EQ(f.peak_concurrency, 1);
}

TEST(SummarizeTest, CompletedWithoutTokens) {
  // An empty output: an E2EL sample but no TTFT/TPOT/ITL; any TTFT objective is met.
  std::vector<RequestRecord> r = {Completed(0, 1.0, {}, 1.5, 8)};
  const Summary s = Summarize(r, {}, 0, {.ttft_ms = 1});
  EXPECT_EQ(s.ttft_ms.mean, 0);
  EXPECT_NEAR(s.e2el_ms.mean, 500, kTol);
  EXPECT_DOUBLE_EQ(s.request_goodput, 2.0);
  const nlohmann::json j = RequestToJson(r[0]);
  EXPECT_TRUE(j["ttft_ms"].is_null());
  EXPECT_TRUE(j["tpot_ms"].is_null());
  EXPECT_DOUBLE_EQ(j["e2el_ms"].get<double>(), 500);
}

TEST(SummarizeTest, EmptyRun) {
  const Summary s = Summarize({}, {}, 0, {});
  EXPECT_EQ(s.completed, 0);
  EXPECT_EQ(s.failed, 0);
  EXPECT_EQ(s.duration_s, 0);
  EXPECT_EQ(s.request_throughput, 0);
  EXPECT_EQ(s.ttft_ms.p99, 0);
  EXPECT_EQ(s.peak_concurrency, 0);
  EXPECT_EQ(s.num_steps, 0);
  EXPECT_FALSE(s.quality_mean_kl.has_value());
  const nlohmann::json j = SummaryToJson(s);
  EXPECT_TRUE(j["quality_mean_kl"].is_null());
  EXPECT_TRUE(j["request_goodput"].is_null());
  EXPECT_EQ(nlohmann::json::parse(j.dump()), j);
  EXPECT_FALSE(FormatSummaryTable(s).empty());
}

TEST(SummarizeTest, PeakConcurrencyIntervals) {
  const auto peak = [](std::vector<RequestRecord> r, std::vector<StepRecord> steps = {}) {
    return Summarize(r, steps, 0, {}).peak_concurrency;
  };
  // Touching intervals [0, 1) and [1, 2) do not overlap.
  EXPECT_EQ(peak({Completed(0, 0, {0.5}, 1, 1), Completed(1, 1, {1.5}, 2, 1)}), 1);
  EXPECT_EQ(peak({Completed(0, 0, {0.5}, 1, 1), Completed(1, 0.75, {1.5}, 2, 1)}), 2);
  // An unfinished request stays open until the run ends (here the last finish, 3).
  RequestRecord open;
  open.arrival_s = 1;
  EXPECT_EQ(peak({Completed(0, 0, {0.5}, 3, 1), open, Completed(2, 2, {2.25}, 2.5, 1)}), 3);
  // ... or the last step's end, when that is later: with a step over [5, 5.5] the two
  // unfinished requests arriving at 4 and 4.5 overlap; without it the run ends at the last
  // finish (3), before either arrives, and each counts only at its arrival instant.
  RequestRecord open4, open45;
  open4.arrival_s = 4;
  open45.arrival_s = 4.5;
  const StepRecord late{.start_s = 5.0, .schedule_s = 0.25, .forward_s = 0.25};
  EXPECT_EQ(peak({Completed(0, 0, {0.5}, 3, 1), open4, open45}, {late}), 2);
  EXPECT_EQ(peak({Completed(0, 0, {0.5}, 3, 1), open4, open45}), 1);
  // A lone unfinished request is counted even with nothing after its arrival.
  EXPECT_EQ(peak({open}), 1);
}

TEST(SummaryJsonTest, UsesVllmKeyNames) {
  const Summary s = Summarize(Timeline(), Steps(), 0, {.ttft_ms = 500});
  const nlohmann::json j = SummaryToJson(s);
  for (const char* key :
       {"completed", "duration", "total_input_tokens", "total_output_tokens",
        "request_throughput", "request_goodput", "output_throughput", "total_token_throughput",
        "failed", "target_request_rate", "achieved_request_rate", "peak_concurrency",
        "peak_kv_reserved_bytes", "peak_kv_used_bytes", "kv_waste_fraction",
        "peak_host_kv_bytes", "peak_swapped_bytes", "preemptions", "num_steps",
        "mean_batch_size", "mean_tokens_per_step", "prefix_cache_hit_rate",
        "schedule_time_fraction", "forward_time_fraction", "sample_time_fraction",
        "quality_mean_kl", "quality_top1_agreement", "slo"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  for (const char* metric : {"ttft", "tpot", "itl", "e2el"}) {
    for (const char* stat : {"mean", "median", "std", "p50", "p90", "p95", "p99"}) {
      const std::string key = std::string(stat) + "_" + metric + "_ms";
      EXPECT_TRUE(j.contains(key) && j[key].is_number()) << key;
    }
  }
  EXPECT_EQ(j["completed"], 3);
  EXPECT_DOUBLE_EQ(j["duration"].get<double>(), 2.0);
  EXPECT_DOUBLE_EQ(j["request_goodput"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(j["p90_ttft_ms"].get<double>(), 700);
  EXPECT_DOUBLE_EQ(j["median_itl_ms"].get<double>(), 375);
  EXPECT_EQ(j["target_request_rate"], "inf");
  EXPECT_DOUBLE_EQ(j["achieved_request_rate"].get<double>(), 3.0);
  EXPECT_EQ(j["slo"]["ttft_ms"], 500.0);
  EXPECT_TRUE(j["slo"]["tpot_ms"].is_null());
  EXPECT_EQ(j["peak_kv_reserved_bytes"], 2000);
  EXPECT_NEAR(j["quality_mean_kl"].get<double>(), 0.2, kTol);

  Summary odd;
  odd.target_request_rate = 2.5;
  odd.mean_batch_size = std::numeric_limits<double>::quiet_NaN();
  odd.achieved_request_rate = std::numeric_limits<double>::infinity();
  const nlohmann::json o = SummaryToJson(odd);
  EXPECT_DOUBLE_EQ(o["target_request_rate"].get<double>(), 2.5);
  EXPECT_TRUE(o["mean_batch_size"].is_null());
  EXPECT_EQ(o["achieved_request_rate"], "inf");
  EXPECT_TRUE(o["request_goodput"].is_null());
  EXPECT_EQ(o.dump().find("NaN"), std::string::npos);
}

TEST(RequestJsonTest, FieldsAndNullTimes) {
  const std::vector<RequestRecord> t = Timeline();
  RequestRecord a = t[0];
  a.output_ids = {5, 6, 7, 8};
  a.conversation_id = 12;
  a.turn = 2;
  a.prefix_hit_tokens = 4;
  const nlohmann::json j = RequestToJson(a);
  EXPECT_TRUE(ValidateRequestJson(j).ok()) << ValidateRequestJson(j);
  EXPECT_EQ(j["id"], 0);
  EXPECT_DOUBLE_EQ(j["ttft_ms"].get<double>(), 500);
  EXPECT_NEAR(j["tpot_ms"].get<double>(), 1000.0 / 3, kTol);
  EXPECT_DOUBLE_EQ(j["e2el_ms"].get<double>(), 1500);
  EXPECT_EQ(j["output_ids"], nlohmann::json({5, 6, 7, 8}));
  EXPECT_EQ(j["token_times_s"], nlohmann::json({0.5, 0.75, 1.0, 1.5}));
  EXPECT_EQ(j["conversation_id"], 12);
  EXPECT_EQ(j["turn"], 2);
  EXPECT_EQ(j["prefix_hit_tokens"], 4);
  EXPECT_EQ(j["preemptions"], 1);
  EXPECT_DOUBLE_EQ(j["quality_mean_kl"].get<double>(), 0.1);

  const nlohmann::json d = RequestToJson(t[3]);
  EXPECT_TRUE(ValidateRequestJson(d).ok()) << ValidateRequestJson(d);
  EXPECT_FALSE(d["completed"].get<bool>());
  EXPECT_TRUE(d["first_scheduled_s"].is_null());
  EXPECT_TRUE(d["finish_s"].is_null());
  EXPECT_TRUE(d["ttft_ms"].is_null());
  EXPECT_TRUE(d["e2el_ms"].is_null());
  EXPECT_TRUE(d["quality_mean_kl"].is_null());
  EXPECT_EQ(d["error"], t[3].error);
}

TEST(SummaryTableTest, AlignedAndComplete) {
  const std::string table = FormatSummaryTable(Summarize(Timeline(), Steps(), 0, {.ttft_ms = 1}));
  for (const char* needle :
       {"Successful requests:", "Request throughput (req/s):", "Request goodput (req/s):",
        "Mean TTFT (ms):", "Median TPOT (ms):", "P99 ITL (ms):", "Mean E2EL (ms):",
        "Peak KV reserved (MiB):", "KV waste", "Preemptions:", "Prefix cache hit rate (%):",
        "Mean KL divergence:", "Top-1 agreement (%):"}) {
    EXPECT_NE(table.find(needle), std::string::npos) << needle << "\n" << table;
  }
  EXPECT_NE(table.find("500.00"), std::string::npos) << table;  // mean TTFT
  EXPECT_NE(table.find("50.00"), std::string::npos) << table;   // hit rate %
  // Every "label: value" row puts its value at column 41.
  size_t start = 0;
  while (start < table.size()) {
    const size_t end = table.find('\n', start);
    const std::string line = table.substr(start, end - start);
    start = end + 1;
    if (line.find(':') == std::string::npos) continue;
    ASSERT_GT(line.size(), 41u) << line;
    EXPECT_EQ(line[40], ' ') << line;
    EXPECT_NE(line[41], ' ') << line;
  }
  const std::string plain = FormatSummaryTable(Summarize(Timeline(), {}, 0, {}));
  EXPECT_EQ(plain.find("goodput"), std::string::npos);
  std::vector<RequestRecord> no_quality = {Completed(0, 0, {0.5}, 1, 1)};
  EXPECT_EQ(FormatSummaryTable(Summarize(no_quality, {}, 0, {})).find("Top-1"),
            std::string::npos);
}

}  // namespace
}  // namespace kvscope::engine

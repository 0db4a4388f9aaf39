// Tests for coordinator/aggregate.h: grouping, mean and 95% CI against hand-computed values,
// the t quantiles, and the table/CSV/JSON renderings.
#include "coordinator/aggregate.h"

#include <cmath>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvscope::coordinator {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

ResultRow Row(const std::string& strategy, int rate, int repeat, double throughput,
              const std::string& state = "succeeded") {
  ResultRow r;
  r.trial_id = strategy + std::to_string(rate) + "-" + std::to_string(repeat);
  r.axes = {{"strategy", {{"name", strategy}}}, {"request_rate", rate}};
  r.repeat = repeat;
  r.state = state;
  r.attempts = 1;
  if (state == "succeeded") {
    r.summary = {{"output_throughput", throughput},
                 {"slo", {{"ttft_ms", 100.0 * repeat}}},
                 {"request_goodput", nullptr}};
  }
  return r;
}

std::vector<ResultRow> Rows() {
  return {Row("paged", 2, 0, 1.0), Row("paged", 2, 1, 2.0), Row("paged", 2, 2, 3.0),
          Row("h2o", 2, 0, 10.0),  Row("h2o", 2, 1, 12.0),  Row("h2o", 2, 2, 0, "failed"),
          Row("paged", 8, 0, 5.0)};
}

TEST(StudentTTest, TableAndApproximation) {
  EXPECT_NEAR(StudentT975Quantile(1), 12.7062047, 1e-6);
  EXPECT_NEAR(StudentT975Quantile(2), 4.3026527, 1e-6);
  EXPECT_NEAR(StudentT975Quantile(10), 2.2281389, 1e-6);
  EXPECT_NEAR(StudentT975Quantile(30), 2.0422725, 1e-6);
  // Beyond the table: reference values t(0.975; 40, 60, 120, 1000) and the normal limit.
  EXPECT_NEAR(StudentT975Quantile(31), 2.0395134, 1e-5);
  EXPECT_NEAR(StudentT975Quantile(40), 2.0210754, 1e-5);
  EXPECT_NEAR(StudentT975Quantile(60), 2.0002978, 1e-5);
  EXPECT_NEAR(StudentT975Quantile(120), 1.9799304, 1e-5);
  EXPECT_NEAR(StudentT975Quantile(1000), 1.9623391, 1e-5);
  EXPECT_NEAR(StudentT975Quantile(1000000000), 1.9599640, 1e-6);
}

TEST(AggregateTest, MeanAndCiOverRepeats) {
  absl::StatusOr<std::vector<AggregateRow>> agg =
      Aggregate(Rows(), {}, {"output_throughput", "slo.ttft_ms", "request_goodput", "missing"});
  ASSERT_TRUE(agg.ok()) << agg.status();
  ASSERT_EQ(agg->size(), 3u);  // (paged, 2), (h2o, 2), (paged, 8) in first-seen order
  const AggregateRow& paged = (*agg)[0];
  EXPECT_EQ(paged.group, nlohmann::json({{"strategy", {{"name", "paged"}}}, {"request_rate", 2}}));
  EXPECT_EQ(paged.trials, 3);
  EXPECT_EQ(paged.succeeded, 3);
  // 1, 2, 3: mean 2, sd 1, ci = t(2) * 1 / sqrt(3) = 4.30265273 / 1.73205081 = 2.48413771.
  const MeanCi& t = paged.metrics.at("output_throughput");
  EXPECT_EQ(t.n, 3);
  EXPECT_DOUBLE_EQ(t.mean, 2.0);
  ASSERT_TRUE(t.ci95.has_value());
  EXPECT_NEAR(*t.ci95, 2.48413771, 1e-7);
  // Nested key: 0, 100, 200: mean 100, sd 100, ci 248.413771.
  EXPECT_NEAR(*paged.metrics.at("slo.ttft_ms").ci95, 248.413771, 1e-5);
  EXPECT_EQ(paged.metrics.at("request_goodput").n, 0);  // null values are skipped
  EXPECT_EQ(paged.metrics.at("missing").n, 0);

  const AggregateRow& h2o = (*agg)[1];
  EXPECT_EQ(h2o.trials, 3);
  EXPECT_EQ(h2o.succeeded, 2);
  // 10, 12: mean 11, sd sqrt(2), ci = 12.7062047 * sqrt(2) / sqrt(2).
  EXPECT_DOUBLE_EQ(h2o.metrics.at("output_throughput").mean, 11.0);
  EXPECT_NEAR(*h2o.metrics.at("output_throughput").ci95, 12.7062047, 1e-6);

  const AggregateRow& single = (*agg)[2];
  EXPECT_EQ(single.metrics.at("output_throughput").n, 1);
  EXPECT_DOUBLE_EQ(single.metrics.at("output_throughput").mean, 5.0);
  EXPECT_FALSE(single.metrics.at("output_throughput").ci95.has_value());
}

TEST(AggregateTest, GroupBySubsetAndRepeat) {
  absl::StatusOr<std::vector<AggregateRow>> agg =
      Aggregate(Rows(), {"request_rate"}, {"output_throughput"});
  ASSERT_TRUE(agg.ok()) << agg.status();
  ASSERT_EQ(agg->size(), 2u);
  EXPECT_EQ((*agg)[0].group, nlohmann::json({{"request_rate", 2}}));
  EXPECT_EQ((*agg)[0].trials, 6);
  EXPECT_EQ((*agg)[0].metrics.at("output_throughput").n, 5);
  EXPECT_DOUBLE_EQ((*agg)[0].metrics.at("output_throughput").mean, 28.0 / 5);

  agg = Aggregate(Rows(), {"repeat"}, {"output_throughput"});
  ASSERT_TRUE(agg.ok());
  ASSERT_EQ(agg->size(), 3u);
  EXPECT_EQ((*agg)[2].group, nlohmann::json({{"repeat", 2}}));
  EXPECT_EQ((*agg)[0].metrics.at("output_throughput").n, 3);  // 1, 10, 5
  EXPECT_DOUBLE_EQ((*agg)[0].metrics.at("output_throughput").mean, 16.0 / 3);
}

TEST(AggregateTest, UnknownAxisListsTheKnownOnes) {
  absl::StatusOr<std::vector<AggregateRow>> agg = Aggregate(Rows(), {"rate"}, {});
  ASSERT_FALSE(agg.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(agg.status()));
  EXPECT_THAT(std::string(agg.status().message()),
              HasSubstr("unknown axis 'rate' to group by; known: request_rate, strategy, repeat"));
  EXPECT_TRUE(Aggregate({}, {"anything"}, {}).ok());
}

TEST(AggregateTest, DefaultMetricsAreSummaryKeys) {
  EXPECT_FALSE(DefaultMetrics().empty());
  absl::StatusOr<std::vector<AggregateRow>> agg = Aggregate(Rows(), {}, {});
  ASSERT_TRUE(agg.ok());
  EXPECT_EQ((*agg)[0].metrics.size(), DefaultMetrics().size());
  EXPECT_EQ((*agg)[0].metrics.at("output_throughput").n, 3);
}

TEST(AggregateFormatTest, TableCsvJson) {
  const std::vector<std::string> by = {"strategy", "request_rate"};
  const std::vector<std::string> metrics = {"output_throughput", "request_goodput"};
  absl::StatusOr<std::vector<AggregateRow>> agg = Aggregate(Rows(), by, metrics);
  ASSERT_TRUE(agg.ok());
  EXPECT_EQ(FormatAggregateTable(*agg, by, metrics),
            "strategy  request_rate  ok/trials  output_throughput  request_goodput\n"
            "paged     2                   3/3      2.000 ± 2.484                -\n"
            "h2o       2                   2/3      11.00 ± 12.71                -\n"
            "paged     8                   1/1              5.000                -\n");
  EXPECT_EQ(FormatAggregateCsv(*agg, by, metrics),
            "strategy,request_rate,trials,succeeded,output_throughput_mean,output_throughput_ci95,"
            "request_goodput_mean,request_goodput_ci95\n"
            "paged,2,3,3,2,2.484137712,,\n"
            "h2o,2,3,2,11,12.70620474,,\n"
            "paged,8,1,1,5,,,\n");
  const nlohmann::json j = AggregateToJson(*agg);
  ASSERT_EQ(j.size(), 3u);
  EXPECT_EQ(j[0]["group"]["request_rate"], 2);
  EXPECT_EQ(j[0]["trials"], 3);
  EXPECT_EQ(j[0]["succeeded"], 3);
  EXPECT_EQ(j[0]["metrics"]["output_throughput"]["n"], 3);
  EXPECT_DOUBLE_EQ(j[0]["metrics"]["output_throughput"]["mean"].get<double>(), 2.0);
  EXPECT_NEAR(j[0]["metrics"]["output_throughput"]["ci95"].get<double>(), 2.48413771, 1e-7);
  EXPECT_TRUE(j[2]["metrics"]["output_throughput"]["ci95"].is_null());
  EXPECT_TRUE(j[0]["metrics"]["request_goodput"]["mean"].is_null());
}

TEST(AggregateFormatTest, CsvQuotesAndLargeNumbers) {
  ResultRow r;
  r.axes = {{"label", "a,\"b\""}};
  r.state = "succeeded";
  r.summary = {{"x", 12345678.0}, {"y", 0.0001234}};
  absl::StatusOr<std::vector<AggregateRow>> agg = Aggregate({r}, {}, {"x", "y"});
  ASSERT_TRUE(agg.ok());
  EXPECT_THAT(FormatAggregateCsv(*agg, {}, {"x", "y"}),
              HasSubstr("\"a,\"\"b\"\"\",1,1,12345678,,0.0001234,"));
  EXPECT_THAT(FormatAggregateTable(*agg, {}, {"x", "y"}), HasSubstr("1.235e+07  1.234e-04"));
}

}  // namespace
}  // namespace kvscope::coordinator

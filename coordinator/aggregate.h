// File: coordinator/aggregate.h
//
// Comparison tables over an experiment's trials: rows grouped by any axes, each metric's
// mean and 95% confidence interval over the rows of a group (Student's t, n-1 degrees of
// freedom; the interval is absent for n < 2). Pure functions.
#ifndef KVSCOPE_COORDINATOR_AGGREGATE_H_
#define KVSCOPE_COORDINATOR_AGGREGATE_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace kvscope::coordinator {

// One trial as the results API returns it.
struct ResultRow {
  std::string trial_id;
  nlohmann::json axes = nlohmann::json::object();  // axis name -> value
  int32_t repeat = 0;
  std::string state;      // "succeeded", "failed", ...
  int32_t attempts = 0;
  std::string error;
  nlohmann::json summary;  // result.json's "summary" object; null unless succeeded
};

struct MeanCi {
  int64_t n = 0;
  double mean = 0;
  std::optional<double> ci95;  // half width of the 95% interval; unset for n < 2
};

struct AggregateRow {
  nlohmann::json group = nlohmann::json::object();  // group-by axis -> value
  int64_t trials = 0, succeeded = 0;
  std::map<std::string, MeanCi> metrics;  // summary key -> statistics over succeeded rows
};

// The summary keys shown when the caller names none: throughput, latency percentiles,
// memory and quality.
const std::vector<std::string>& DefaultMetrics();

// Groups `rows` by `group_by` (axis names; empty = every axis, so repeats are averaged;
// the pseudo-axis "repeat" groups by ResultRow::repeat). Metrics are summary keys; a dotted
// key reads a nested one ("slo.ttft_ms"); non-numeric and missing values are skipped, so
// MeanCi::n counts the succeeded rows that have the metric. Empty `metrics` = DefaultMetrics().
// InvalidArgument names an unknown axis and lists the known ones. Groups keep the order in
// which they first appear in `rows`.
absl::StatusOr<std::vector<AggregateRow>> Aggregate(const std::vector<ResultRow>& rows,
                                                    const std::vector<std::string>& group_by,
                                                    const std::vector<std::string>& metrics);

// Renderings: an aligned text table ("mean ± ci", "-" without values), CSV (columns
// <metric>_mean and <metric>_ci95, empty when absent), JSON ([{group, trials, succeeded,
// metrics: {name: {n, mean, ci95}}}], null when absent). Empty `group_by` shows every key
// of the groups (alphabetical; pass Sweep::axis_names for matrix order).
std::string FormatAggregateTable(const std::vector<AggregateRow>& rows,
                                 const std::vector<std::string>& group_by,
                                 const std::vector<std::string>& metrics);
std::string FormatAggregateCsv(const std::vector<AggregateRow>& rows,
                               const std::vector<std::string>& group_by,
                               const std::vector<std::string>& metrics);
nlohmann::json AggregateToJson(const std::vector<AggregateRow>& rows);

// t(0.975, dof): the two-sided 95% Student's t quantile (table for dof <= 30, a
// Cornish-Fisher expansion beyond). ci95 = t * sd / sqrt(n) with dof = n - 1.
double StudentT975Quantile(int64_t dof);

}  // namespace kvscope::coordinator

#endif  // KVSCOPE_COORDINATOR_AGGREGATE_H_

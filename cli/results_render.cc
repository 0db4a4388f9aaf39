#include "cli/results_render.h"

#include "absl/strings/str_cat.h"
#include "coordinator/grpc_convert.h"

namespace kvscope::cli {

nlohmann::json ResultRowsToJson(const std::vector<v1::ResultRow>& rows) {
  nlohmann::json out = nlohmann::json::array();
  for (const v1::ResultRow& r : rows) {
    nlohmann::json o;
    o["trial_id"] = r.trial_id();
    o["index"] = r.index();
    o["repeat"] = r.repeat();
    o["label"] = r.label();
    o["axes"] = coordinator::ParseJsonField(r.axes_json(), "axes_json", nlohmann::json::object())
                    .value_or(nlohmann::json::object());
    o["state"] = coordinator::TrialStateWord(r.state());
    o["attempts"] = r.attempts();
    o["error"] = r.error();
    o["summary"] = coordinator::ParseJsonField(r.summary_json(), "summary_json")
                       .value_or(nlohmann::json());
    if (r.attempt_id() != 0) o["attempt_id"] = r.attempt_id();
    if (!r.requests_jsonl().empty()) o["requests_jsonl"] = r.requests_jsonl();
    out.push_back(std::move(o));
  }
  return out;
}

std::vector<coordinator::ResultRow> ToAggregateRows(const std::vector<v1::ResultRow>& rows) {
  std::vector<coordinator::ResultRow> out;
  out.reserve(rows.size());
  for (const v1::ResultRow& r : rows) {
    coordinator::ResultRow row;
    row.trial_id = r.trial_id();
    row.axes = coordinator::ParseJsonField(r.axes_json(), "axes_json", nlohmann::json::object())
                   .value_or(nlohmann::json::object());
    row.repeat = r.repeat();
    row.state = coordinator::TrialStateWord(r.state());
    row.attempts = r.attempts();
    row.error = r.error();
    row.summary =
        coordinator::ParseJsonField(r.summary_json(), "summary_json").value_or(nlohmann::json());
    out.push_back(std::move(row));
  }
  return out;
}

absl::StatusOr<std::string> RenderComparison(const std::vector<v1::ResultRow>& rows,
                                             const std::vector<std::string>& group_by,
                                             const std::vector<std::string>& metrics_in,
                                             bool csv) {
  const std::vector<std::string>& metrics =
      metrics_in.empty() ? coordinator::DefaultMetrics() : metrics_in;
  absl::StatusOr<std::vector<coordinator::AggregateRow>> table =
      coordinator::Aggregate(ToAggregateRows(rows), group_by, metrics);
  if (!table.ok()) return table.status();
  if (csv) return coordinator::FormatAggregateCsv(*table, group_by, metrics);
  std::string text = coordinator::FormatAggregateTable(*table, group_by, metrics);
  for (const v1::ResultRow& r : rows) {
    if (r.state() == v1::TRIAL_STATE_FAILED) {
      absl::StrAppend(&text, "failed: ", r.trial_id(), " ", r.label(), ": ", r.error(), "\n");
    }
  }
  return text;
}

}  // namespace kvscope::cli

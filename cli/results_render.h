// File: cli/results_render.h
//
// Renderings of an experiment's result rows (kvscope.v1.ResultRow), shared by `kvscope
// results` and `kvscope run`: the per-trial JSON and the comparison table/CSV
// (coordinator/aggregate.h).
#ifndef KVSCOPE_CLI_RESULTS_RENDER_H_
#define KVSCOPE_CLI_RESULTS_RENDER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/aggregate.h"
#include "kvscope/v1/client.pb.h"
#include "nlohmann/json.hpp"

namespace kvscope::cli {

// One object per trial: trial_id, index, repeat, label, axes, state, attempts, error,
// summary (null unless succeeded), and requests (when the rows carry them).
nlohmann::json ResultRowsToJson(const std::vector<v1::ResultRow>& rows);

std::vector<coordinator::ResultRow> ToAggregateRows(const std::vector<v1::ResultRow>& rows);

// The comparison grouped by `group_by` (empty: every axis), `metrics` (empty: the
// defaults), as an aligned table or CSV; a line per failed trial follows the table.
absl::StatusOr<std::string> RenderComparison(const std::vector<v1::ResultRow>& rows,
                                             const std::vector<std::string>& group_by,
                                             const std::vector<std::string>& metrics, bool csv);

}  // namespace kvscope::cli

#endif  // KVSCOPE_CLI_RESULTS_RENDER_H_

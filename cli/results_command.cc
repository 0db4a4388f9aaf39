// `kvscope results ID [--format table|csv|json] [--group-by AXES]`: an experiment's results.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "cli/cluster_client.h"
#include "cli/commands.h"
#include "cli/results_render.h"
#include "coordinator/aggregate.h"
#include "coordinator/grpc_convert.h"

namespace kvscope::cli {
namespace {

constexpr char kCommand[] = "results";

std::vector<std::string> SplitList(const std::string& text) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    out.emplace_back(absl::StripAsciiWhitespace(part));
  }
  return out;
}

}  // namespace

int RunResults(const std::vector<std::string>& args) {
  FlagSet flags("kvscope results", "ID [--format table|csv|json] [--group-by AXES]",
                "Prints an experiment's results. table and csv: the comparison, trials grouped\n"
                "by AXES (comma-separated axis names; default: every axis, so repeats are\n"
                "averaged) with each metric's mean and 95% confidence interval. json: one\n"
                "object per trial with its axes, state, attempts, error and summary.");
  ClientFlags client_flags;
  AddClientFlags(&flags, &client_flags);
  std::string format = "table", group_by, metrics;
  bool requests = false;
  flags.String("format", &format, "table, csv or json");
  flags.String("group-by", &group_by, "comma-separated axes to group by (table, csv)");
  flags.String("metrics", &metrics, "comma-separated summary keys to show (table, csv)");
  flags.Bool("requests", &requests, "json: include each trial's per-request data");
  std::vector<std::string> positional;
  if (std::optional<int> code = flags.ParseOrExitCode(args, &positional)) return *code;
  if (positional.size() != 1) {
    std::fprintf(stderr, "kvscope results: give one experiment id (`kvscope status` lists them)\n");
    return 2;
  }
  if (format != "table" && format != "csv" && format != "json") {
    std::fprintf(stderr, "kvscope results: --format must be table, csv or json, not '%s'\n",
                 format.c_str());
    return 2;
  }
  absl::StatusOr<std::unique_ptr<ClusterClient>> client = ClusterClient::Connect(flags, client_flags);
  if (!client.ok()) return Fail(kCommand, client.status());

  v1::FetchResultsRequest request;
  request.set_experiment_id(positional[0]);
  request.set_include_requests(requests);
  grpc::ClientContext context;
  (*client)->Prepare(&context, 600);
  std::unique_ptr<grpc::ClientReader<v1::ResultRow>> reader =
      (*client)->stub()->FetchResults(&context, request);
  std::vector<v1::ResultRow> rows;
  v1::ResultRow row;
  while (reader->Read(&row)) rows.push_back(row);
  if (absl::Status s = (*client)->Check(reader->Finish()); !s.ok()) return Fail(kCommand, s);

  if (format == "json") {
    std::printf("%s\n", ResultRowsToJson(rows).dump(2).c_str());
    return 0;
  }
  absl::StatusOr<std::string> text =
      RenderComparison(rows, SplitList(group_by), SplitList(metrics), format == "csv");
  if (!text.ok()) return Fail(kCommand, text.status());
  std::fputs(text->c_str(), stdout);
  return 0;
}

}  // namespace kvscope::cli

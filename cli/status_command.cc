// `kvscope status [ID]`: experiments on a coordinator, or one experiment's trials.
#include <cstdio>
#include <ctime>
#include <string>
#include <vector>

#include "cli/cluster_client.h"
#include "cli/commands.h"
#include "coordinator/grpc_convert.h"

namespace kvscope::cli {
namespace {

constexpr char kCommand[] = "status";

std::string LocalTime(double unix_s) {
  const time_t t = static_cast<time_t>(unix_s);
  struct tm tm_buf;
  localtime_r(&t, &tm_buf);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%d %H:%M:%S", &tm_buf);
  return text;
}

void PrintExperimentLine(const v1::ExperimentInfo& e) {
  std::printf("%-12s %-20s %-10s %7lld %9lld %7lld %8lld %8lld %10lld  %s\n",
              e.experiment_id().c_str(), e.name().substr(0, 20).c_str(),
              coordinator::ExperimentStateWord(e.state()),
              static_cast<long long>(e.num_trials()), static_cast<long long>(e.succeeded()),
              static_cast<long long>(e.failed()),
              static_cast<long long>(e.running() + e.leased()),
              static_cast<long long>(e.pending()), static_cast<long long>(e.cancelled()),
              LocalTime(e.created_unix_s()).c_str());
}

void PrintExperimentHeader() {
  std::printf("%-12s %-20s %-10s %7s %9s %7s %8s %8s %10s  %s\n", "id", "name", "state",
              "trials", "succeeded", "failed", "running", "pending", "cancelled", "created");
}

}  // namespace

int RunStatus(const std::vector<std::string>& args) {
  FlagSet flags("kvscope status", "[ID]",
                "Without ID: every experiment on the coordinator. With ID: that experiment's\n"
                "trials, their state, attempts, progress and errors.");
  ClientFlags client_flags;
  AddClientFlags(&flags, &client_flags);
  std::vector<std::string> positional;
  if (std::optional<int> code = flags.ParseOrExitCode(args, &positional)) return *code;
  if (positional.size() > 1) {
    std::fprintf(stderr, "kvscope status: give at most one experiment id\n");
    return 2;
  }
  absl::StatusOr<std::unique_ptr<ClusterClient>> client = ClusterClient::Connect(flags, client_flags);
  if (!client.ok()) return Fail(kCommand, client.status());

  if (positional.empty()) {
    v1::ListExperimentsResponse response;
    grpc::ClientContext context;
    (*client)->Prepare(&context);
    if (absl::Status s = (*client)->Check(
            (*client)->stub()->ListExperiments(&context, v1::ListExperimentsRequest(), &response));
        !s.ok()) {
      return Fail(kCommand, s);
    }
    if (response.experiments().empty()) {
      std::printf("no experiments yet (submit one with `kvscope submit FILE`)\n");
      return 0;
    }
    PrintExperimentHeader();
    for (const v1::ExperimentInfo& e : response.experiments()) PrintExperimentLine(e);
    return 0;
  }

  v1::GetExperimentRequest request;
  request.set_experiment_id(positional[0]);
  request.set_include_trials(true);
  v1::GetExperimentResponse response;
  grpc::ClientContext context;
  (*client)->Prepare(&context);
  if (absl::Status s = (*client)->Check((*client)->stub()->GetExperiment(&context, request, &response));
      !s.ok()) {
    return Fail(kCommand, s);
  }
  PrintExperimentHeader();
  PrintExperimentLine(response.experiment());
  std::printf("\n%-16s %-10s %8s %12s  %s\n", "trial", "state", "attempts", "requests", "label");
  for (const v1::TrialInfo& t : response.trials()) {
    std::string progress = "-";
    if (t.requests_total() > 0) {
      progress = std::to_string(t.requests_done()) + "/" + std::to_string(t.requests_total());
    }
    std::printf("%-16s %-10s %8d %12s  %s\n", t.trial_id().c_str(),
                coordinator::TrialStateWord(t.state()), t.attempts_size(), progress.c_str(),
                t.label().c_str());
    if (!t.error().empty()) std::printf("    error: %s\n", t.error().c_str());
    if (t.state() == v1::TRIAL_STATE_PENDING && !t.waiting().empty()) {
      std::printf("    %s\n", t.waiting().c_str());
    }
  }
  return 0;
}

}  // namespace kvscope::cli

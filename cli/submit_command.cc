// `kvscope submit FILE [--wait]`: submits a sweep to a coordinator and prints its id.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cli/cluster_client.h"
#include "cli/commands.h"
#include "cli/progress.h"
#include "coordinator/grpc_convert.h"

namespace kvscope::cli {
namespace {

constexpr char kCommand[] = "submit";

// Follows the experiment until it finishes, drawing a bar over its trials; reconnects while
// the coordinator is away. Returns the last snapshot.
absl::StatusOr<v1::ExperimentInfo> WaitForExperiment(ClusterClient* client,
                                                     const std::string& id) {
  ProgressReporter progress("trials", isatty(STDERR_FILENO) != 0);
  const auto start = std::chrono::steady_clock::now();
  v1::ExperimentInfo last;
  bool warned = false;
  while (true) {
    grpc::ClientContext context;
    client->Prepare(&context, /*timeout_seconds=*/365.0 * 86400);
    v1::WatchExperimentRequest request;
    request.set_experiment_id(id);
    std::unique_ptr<grpc::ClientReader<v1::ExperimentSnapshot>> reader =
        client->stub()->WatchExperiment(&context, request);
    v1::ExperimentSnapshot snapshot;
    while (reader->Read(&snapshot)) {
      last = snapshot.experiment();
      warned = false;
      const int64_t done = last.succeeded() + last.failed() + last.cancelled();
      const double elapsed =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      progress.Update(done, last.num_trials(), elapsed);
      if (last.state() != v1::EXPERIMENT_STATE_RUNNING) {
        progress.Finish();
        return last;
      }
    }
    const grpc::Status status = reader->Finish();
    if (status.ok() && last.state() != v1::EXPERIMENT_STATE_RUNNING) {
      progress.Finish();
      return last;
    }
    if (!status.ok() && status.error_code() != grpc::StatusCode::UNAVAILABLE &&
        status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
      progress.Finish();
      return client->Check(status);
    }
    // The coordinator went away (restart): keep waiting for it.
    if (!warned) {
      progress.Finish();
      std::fprintf(stderr, "kvscope submit: lost the coordinator at %s; retrying...\n",
                   client->target().c_str());
      warned = true;
    }
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
}

}  // namespace

int RunSubmit(const std::vector<std::string>& args) {
  FlagSet flags("kvscope submit", "FILE [--wait]",
                "Submits a sweep file (docs/sweeps.md) to a coordinator and prints the\n"
                "experiment id. With --wait, follows it with a progress bar over its trials\n"
                "and exits non-zero if any trial failed or the experiment was cancelled.");
  ClientFlags client_flags;
  AddClientFlags(&flags, &client_flags);
  bool wait = false;
  flags.Bool("wait", &wait, "wait until every trial has finished");
  std::vector<std::string> positional;
  if (std::optional<int> code = flags.ParseOrExitCode(args, &positional)) return *code;
  if (positional.size() != 1) {
    std::fprintf(stderr, "kvscope submit: give exactly one sweep file (see examples/)\n");
    return 2;
  }
  const std::string& path = positional[0];
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "kvscope submit: cannot read sweep file '%s'\n", path.c_str());
    return 1;
  }
  std::stringstream text;
  text << in.rdbuf();

  absl::StatusOr<std::unique_ptr<ClusterClient>> client = ClusterClient::Connect(flags, client_flags);
  if (!client.ok()) return Fail(kCommand, client.status());
  v1::SubmitRequest request;
  request.set_sweep_yaml(text.str());
  request.set_source(path);
  v1::SubmitResponse response;
  grpc::ClientContext context;
  (*client)->Prepare(&context);
  const grpc::Status status = (*client)->stub()->Submit(&context, request, &response);
  if (status.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
    // The coordinator's validation message names the file, line and key already.
    std::fprintf(stderr, "kvscope submit: invalid sweep: %s\n", status.error_message().c_str());
    return 1;
  }
  if (absl::Status s = (*client)->Check(status); !s.ok()) return Fail(kCommand, s);
  std::printf("%s\n", response.experiment_id().c_str());
  std::fflush(stdout);
  if (!wait) return 0;

  absl::StatusOr<v1::ExperimentInfo> info = WaitForExperiment(client->get(), response.experiment_id());
  if (!info.ok()) return Fail(kCommand, info.status());
  std::fprintf(stderr, "experiment %s %s: %lld succeeded, %lld failed, %lld cancelled of %lld\n",
               info->experiment_id().c_str(), coordinator::ExperimentStateWord(info->state()),
               static_cast<long long>(info->succeeded()), static_cast<long long>(info->failed()),
               static_cast<long long>(info->cancelled()),
               static_cast<long long>(info->num_trials()));
  if (info->failed() > 0 || info->state() != v1::EXPERIMENT_STATE_SUCCEEDED) {
    std::fprintf(stderr, "see `kvscope status %s` for the reasons\n",
                 info->experiment_id().c_str());
    return 1;
  }
  return 0;
}

}  // namespace kvscope::cli

// `kvscope cancel ID`: cancels an experiment's unfinished trials.
#include <cstdio>
#include <string>
#include <vector>

#include "cli/cluster_client.h"
#include "cli/commands.h"
#include "coordinator/grpc_convert.h"

namespace kvscope::cli {

int RunCancel(const std::vector<std::string>& args) {
  FlagSet flags("kvscope cancel", "ID",
                "Cancels every unfinished trial of the experiment; running trials stop within\n"
                "one heartbeat. Finished trials and their results are kept.");
  ClientFlags client_flags;
  AddClientFlags(&flags, &client_flags);
  std::vector<std::string> positional;
  if (std::optional<int> code = flags.ParseOrExitCode(args, &positional)) return *code;
  if (positional.size() != 1) {
    std::fprintf(stderr, "kvscope cancel: give one experiment id (`kvscope status` lists them)\n");
    return 2;
  }
  absl::StatusOr<std::unique_ptr<ClusterClient>> client = ClusterClient::Connect(flags, client_flags);
  if (!client.ok()) return Fail("cancel", client.status());
  v1::CancelExperimentRequest request;
  request.set_experiment_id(positional[0]);
  v1::CancelExperimentResponse response;
  grpc::ClientContext context;
  (*client)->Prepare(&context);
  if (absl::Status s =
          (*client)->Check((*client)->stub()->CancelExperiment(&context, request, &response));
      !s.ok()) {
    return Fail("cancel", s);
  }
  const v1::ExperimentInfo& e = response.experiment();
  std::printf("experiment %s %s: %lld succeeded, %lld failed, %lld cancelled of %lld\n",
              e.experiment_id().c_str(), coordinator::ExperimentStateWord(e.state()),
              static_cast<long long>(e.succeeded()), static_cast<long long>(e.failed()),
              static_cast<long long>(e.cancelled()), static_cast<long long>(e.num_trials()));
  return 0;
}

}  // namespace kvscope::cli

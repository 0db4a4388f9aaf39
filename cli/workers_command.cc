// `kvscope workers`: the worker daemons registered with a coordinator.
#include <algorithm>
#include <cstdio>
#include <ctime>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "cli/cluster_client.h"
#include "cli/commands.h"

namespace kvscope::cli {

int RunWorkers(const std::vector<std::string>& args) {
  FlagSet flags("kvscope workers", "",
                "Lists the workers registered with the coordinator: host, whether it is alive\n"
                "(heartbeat within the lease period), CPU cores, GPUs, backends and the\n"
                "trials it runs.");
  ClientFlags client_flags;
  AddClientFlags(&flags, &client_flags);
  std::vector<std::string> positional;
  if (std::optional<int> code = flags.ParseOrExitCode(args, &positional)) return *code;
  if (!positional.empty()) {
    std::fprintf(stderr, "kvscope workers: takes no arguments\n");
    return 2;
  }
  absl::StatusOr<std::unique_ptr<ClusterClient>> client = ClusterClient::Connect(flags, client_flags);
  if (!client.ok()) return Fail("workers", client.status());
  v1::ListWorkersResponse response;
  grpc::ClientContext context;
  (*client)->Prepare(&context);
  if (absl::Status s = (*client)->Check(
          (*client)->stub()->ListWorkers(&context, v1::ListWorkersRequest(), &response));
      !s.ok()) {
    return Fail("workers", s);
  }
  if (response.workers().empty()) {
    std::printf("no workers registered (start one with `kvscope worker --coordinator %s`)\n",
                (*client)->target().c_str());
    return 0;
  }
  const double now = static_cast<double>(std::time(nullptr));
  std::printf("%-12s %-20s %-6s %5s %5s %-10s %10s  %s\n", "id", "host", "alive", "cores",
              "gpus", "backends", "last seen", "running");
  for (const v1::WorkerInfo& w : response.workers()) {
    const v1::WorkerCapabilities& c = w.capabilities();
    std::vector<std::string> backends(c.backends().begin(), c.backends().end());
    std::vector<std::string> running(w.running_trials().begin(), w.running_trials().end());
    char seen[32] = "-";
    if (w.last_heartbeat_unix_s() > 0) {
      std::snprintf(seen, sizeof(seen), "%.0fs ago",
                    std::max(0.0, now - w.last_heartbeat_unix_s()));
    }
    std::printf("%-12s %-20s %-6s %5d %5d %-10s %10s  %s\n", w.worker_id().c_str(),
                c.hostname().substr(0, 20).c_str(), w.alive() ? "yes" : "no", c.cpu_cores(),
                c.gpus_size(), absl::StrJoin(backends, ",").c_str(), seen,
                running.empty() ? "-" : absl::StrJoin(running, " ").c_str());
  }
  return 0;
}

}  // namespace kvscope::cli

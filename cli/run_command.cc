// `kvscope run FILE [--dir DIR]`: the embedded cluster. A coordinator on a loopback port with
// its store in DIR and a worker daemon, both in this process, run the sweep; the comparison
// table is printed at the end.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "cli/flag_set.h"
#include "cli/progress.h"
#include "cli/results_render.h"
#include "common/clock.h"
#include "coordinator/coordinator.h"
#include "coordinator/grpc_channel.h"
#include "coordinator/grpc_convert.h"
#include "coordinator/grpc_server.h"
#include "coordinator/store.h"
#include "coordinator/sweep.h"
#include "kvscope/v1/client.grpc.pb.h"
#include "worker/capabilities.h"
#include "worker/grpc_connection.h"
#include "worker/worker_daemon.h"

namespace kvscope::cli {
namespace {

std::atomic<int> g_signal{0};
extern "C" void OnSignal(int signal_number) { g_signal.store(signal_number); }

int Fail(const std::string& message) {
  std::fprintf(stderr, "kvscope run: %s\n", message.c_str());
  return 1;
}

}  // namespace

int RunRun(const std::vector<std::string>& args) {
  FlagSet flags("kvscope run", "FILE [--dir DIR]",
                "Runs a sweep file on this machine: a coordinator on a loopback port (store in\n"
                "DIR/kvscope.db) and a worker daemon in this process run every trial as a\n"
                "`kvscope bench` child process, then the comparison table is printed.\n"
                "Ctrl-C cancels the sweep. The store stays in DIR for later inspection.");
  std::string dir = "kvscope-run", group_by, format = "table";
  int64_t concurrent = 1;
  flags.String("dir", &dir, "directory for the store and the trials' work files");
  flags.Int("concurrent", &concurrent, "trials run at once");
  flags.String("group-by", &group_by, "comma-separated axes to group the table by");
  flags.String("format", &format, "table or csv");
  std::vector<std::string> positional;
  if (std::optional<int> code = flags.ParseOrExitCode(args, &positional)) return *code;
  if (positional.size() != 1) {
    std::fprintf(stderr, "kvscope run: give exactly one sweep file (e.g. examples/quickstart.yaml)\n");
    return 2;
  }
  if (format != "table" && format != "csv") {
    std::fprintf(stderr, "kvscope run: --format must be table or csv\n");
    return 2;
  }
  if (concurrent < 1) {
    std::fprintf(stderr, "kvscope run: --concurrent must be >= 1\n");
    return 2;
  }
  const std::string& path = positional[0];
  std::ifstream in(path, std::ios::binary);
  if (!in) return Fail("cannot read sweep file '" + path + "'");
  std::stringstream text;
  text << in.rdbuf();

  absl::StatusOr<coordinator::Sweep> sweep = coordinator::ParseSweep(text.str(), path);
  if (!sweep.ok()) {
    std::fprintf(stderr, "kvscope run: invalid sweep: %s\n",
                 std::string(sweep.status().message()).c_str());
    return 1;
  }
  // One worker runs here, and a gang needs `nodes` distinct workers: it would wait forever.
  for (const coordinator::TrialSpec& t : sweep->trials) {
    if (t.requirements.nodes <= 1) continue;
    std::fprintf(stderr,
                 "kvscope run: %s: trial %s has nodes: %d, which needs %d workers; kvscope run "
                 "has one. Run it on a cluster instead: `kvscope coordinator`, %d x `kvscope "
                 "worker --coordinator HOST:PORT` (on one machine too), then `kvscope submit "
                 "%s --wait` (docs/cluster.md, \"Multi-node trials\")\n",
                 path.c_str(), t.label.c_str(), t.requirements.nodes, t.requirements.nodes,
                 t.requirements.nodes, path.c_str());
    return 2;
  }
  std::error_code ec;
  std::filesystem::create_directories(dir + "/work", ec);
  if (ec) return Fail("cannot create " + dir + "/work: " + ec.message());

  const std::string db = dir + "/kvscope.db";
  absl::StatusOr<std::unique_ptr<coordinator::Store>> store = coordinator::Store::Open(db);
  if (!store.ok()) return Fail("cannot open the store: " + std::string(store.status().message()));
  coordinator::CoordinatorOptions options;
  options.lease_seconds = 30;
  options.heartbeat_interval_seconds = 1;
  absl::StatusOr<std::unique_ptr<coordinator::Coordinator>> coord =
      coordinator::Coordinator::Create(store->get(), &RealClock::Get(), options);
  if (!coord.ok()) return Fail(std::string(coord.status().message()));

  absl::StatusOr<std::string> id = (*coord)->SubmitParsed(*sweep, text.str(), path);
  if (!id.ok()) {
    std::fprintf(stderr, "kvscope run: invalid sweep: %s\n", std::string(id.status().message()).c_str());
    return 1;
  }

  coordinator::GrpcServerOptions server_options;
  server_options.listen_address = "127.0.0.1:0";
  server_options.lease_seconds = options.lease_seconds;
  server_options.heartbeat_interval_seconds = options.heartbeat_interval_seconds;
  absl::StatusOr<std::unique_ptr<coordinator::GrpcServer>> server =
      coordinator::GrpcServer::Start(coord->get(), server_options);
  if (!server.ok()) return Fail(std::string(server.status().message()));
  const std::string target = (*server)->address();

  worker::CapabilityOptions capability_options;
  capability_options.max_cpu_trials = static_cast<int32_t>(concurrent);
  absl::StatusOr<coordinator::WorkerCapabilities> capabilities =
      worker::DetectCapabilities(capability_options);
  if (!capabilities.ok()) return Fail(std::string(capabilities.status().message()));
  worker::GrpcConnectionOptions connection_options;
  connection_options.target = target;
  absl::StatusOr<std::unique_ptr<worker::CoordinatorConnection>> connection =
      worker::ConnectToCoordinator(connection_options);
  if (!connection.ok()) return Fail(std::string(connection.status().message()));
  worker::WorkerDaemonOptions daemon_options;
  daemon_options.connection = connection->get();
  daemon_options.capabilities = *capabilities;
  daemon_options.work_dir = dir + "/work";
  daemon_options.max_concurrent_trials = static_cast<int32_t>(concurrent);
  daemon_options.backoff_max_seconds = 2;
  daemon_options.acquire_interval_seconds = 0.2;
  absl::StatusOr<std::unique_ptr<worker::WorkerDaemon>> daemon =
      worker::WorkerDaemon::Create(daemon_options);
  if (!daemon.ok()) return Fail(std::string(daemon.status().message()));

  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);

  absl::Status daemon_status;
  std::atomic<bool> daemon_done{false};
  std::thread daemon_thread([&] {
    daemon_status = (*daemon)->Run();
    daemon_done.store(true);
  });
  std::fprintf(stderr, "kvscope run: experiment %s, store %s, coordinator on %s\n", id->c_str(),
               db.c_str(), target.c_str());

  ProgressReporter progress("trials", isatty(STDERR_FILENO) != 0);
  const auto start = std::chrono::steady_clock::now();
  int64_t version = -1;
  bool cancelled = false;
  coordinator::ExperimentInfo info;
  while (true) {
    absl::StatusOr<coordinator::ExperimentInfo> next = (*coord)->WaitForChange(*id, version, 0.5);
    if (!next.ok()) {
      progress.Finish();
      std::fprintf(stderr, "kvscope run: %s\n", std::string(next.status().message()).c_str());
      break;
    }
    info = *next;
    version = info.version;
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    progress.Update(info.succeeded + info.failed + info.cancelled, info.num_trials, elapsed);
    if (info.state != coordinator::ExperimentState::kRunning) break;
    if (daemon_done.load()) {  // a fatal worker error: nothing would run the rest
      progress.Finish();
      (void)(*coord)->Cancel(*id);
      break;
    }
    (void)(*coord)->ExpireLeases();
    if (g_signal.load() != 0 && !cancelled) {
      progress.Finish();
      std::fprintf(stderr, "kvscope run: interrupted: cancelling the sweep\n");
      (void)(*coord)->Cancel(*id);
      cancelled = true;
    }
  }
  progress.Finish();
  (*daemon)->Shutdown();
  daemon_thread.join();
  if (!daemon_status.ok()) {
    std::fprintf(stderr, "kvscope run: the worker stopped: %s\n",
                 std::string(daemon_status.message()).c_str());
  }

  // The results take the same path as `kvscope results`.
  coordinator::ChannelOptions channel_options;
  channel_options.target = target;
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = coordinator::MakeChannel(channel_options);
  if (!channel.ok()) return Fail(std::string(channel.status().message()));
  std::unique_ptr<v1::ClientService::Stub> stub = v1::ClientService::NewStub(*channel);
  grpc::ClientContext context;
  coordinator::PrepareCall(&context, "", 60);
  v1::FetchResultsRequest request;
  request.set_experiment_id(*id);
  std::unique_ptr<grpc::ClientReader<v1::ResultRow>> reader = stub->FetchResults(&context, request);
  std::vector<v1::ResultRow> rows;
  v1::ResultRow row;
  while (reader->Read(&row)) rows.push_back(row);
  if (absl::Status s = coordinator::FromGrpcStatus(reader->Finish(), "coordinator"); !s.ok()) {
    return Fail(std::string(s.message()));
  }
  (*server)->Shutdown(1);

  std::vector<std::string> groups;
  for (absl::string_view part : absl::StrSplit(group_by, ',', absl::SkipWhitespace())) {
    groups.emplace_back(absl::StripAsciiWhitespace(part));
  }
  absl::StatusOr<std::string> table = RenderComparison(rows, groups, {}, format == "csv");
  if (!table.ok()) return Fail(std::string(table.status().message()));
  std::fputs(table->c_str(), stdout);
  std::fprintf(stderr, "experiment %s: %lld succeeded, %lld failed, %lld cancelled of %lld; store %s\n",
               id->c_str(), static_cast<long long>(info.succeeded),
               static_cast<long long>(info.failed), static_cast<long long>(info.cancelled),
               static_cast<long long>(info.num_trials), db.c_str());
  return info.state == coordinator::ExperimentState::kSucceeded ? 0 : 1;
}

}  // namespace kvscope::cli

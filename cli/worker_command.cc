// `kvscope worker --coordinator HOST:PORT`: the worker daemon (worker/worker_daemon.h) over
// gRPC (worker/grpc_connection.h).
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cli/commands.h"
#include "cli/flag_set.h"
#include "worker/capabilities.h"
#include "worker/grpc_connection.h"
#include "worker/worker_daemon.h"

namespace kvscope::cli {
namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "kvscope worker: %s\n", message.c_str());
  return 1;
}

// The first non-empty line of `path`, trimmed.
absl::StatusOr<std::string> ReadToken(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError("cannot read --token-file " + path);
  std::string line;
  while (std::getline(in, line)) {
    const std::string token(absl::StripAsciiWhitespace(line));
    if (!token.empty()) return token;
  }
  return absl::InvalidArgumentError("--token-file " + path + " holds no token");
}

// --models (comma-separated or repeated) and --max-trials as CapabilityOptions.
worker::CapabilityOptions CapabilityOptionsFromFlags(const std::vector<std::string>& models,
                                                     int64_t max_trials) {
  worker::CapabilityOptions options;
  for (const std::string& list : models) {
    for (absl::string_view dir : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
      options.model_dirs.emplace_back(absl::StripAsciiWhitespace(dir));
    }
  }
  options.max_cpu_trials = static_cast<int32_t>(std::clamp<int64_t>(max_trials, 1, 1024));
  return options;
}

// The local address this machine uses to reach the coordinator `target` (HOST:PORT, or
// [V6]:PORT), which is where other workers in the same network reach it too: a UDP
// socket "connected" to the target (no packet is sent) names the outgoing interface.
// "127.0.0.1" when that cannot be found.
std::string RouteAddressTo(const std::string& target) {
  std::string host = target;
  const size_t colon = target.rfind(':');
  if (colon != std::string::npos) host = target.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  if (host.empty() || getaddrinfo(host.c_str(), "9", &hints, &found) != 0) return "127.0.0.1";
  std::string address = "127.0.0.1";
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd = socket(a->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    sockaddr_storage local{};
    socklen_t length = sizeof(local);
    char text[INET6_ADDRSTRLEN] = {0};
    const bool ok = connect(fd, a->ai_addr, a->ai_addrlen) == 0 &&
                    getsockname(fd, reinterpret_cast<sockaddr*>(&local), &length) == 0;
    close(fd);
    if (!ok) continue;
    const void* raw = local.ss_family == AF_INET6
                          ? static_cast<const void*>(
                                &reinterpret_cast<const sockaddr_in6*>(&local)->sin6_addr)
                          : &reinterpret_cast<const sockaddr_in*>(&local)->sin_addr;
    if (inet_ntop(local.ss_family, raw, text, sizeof(text)) != nullptr) {
      address = text;
      break;
    }
  }
  freeaddrinfo(found);
  return address;
}

}  // namespace

int RunWorker(const std::vector<std::string>& args) {
  FlagSet flags("kvscope worker", "--coordinator HOST:PORT [flags]",
                "Runs a worker daemon: registers this machine's capabilities with the\n"
                "coordinator, takes trials and runs each as a `kvscope bench` child process,\n"
                "reports progress and results. Finished results wait in WORK_DIR/spool until\n"
                "the coordinator acknowledges them, so a restart loses none. Reconnects with\n"
                "backoff while the coordinator is away. SIGINT/SIGTERM stop it (running trials\n"
                "are stopped and reported as failed). See docs/cluster.md.");
  std::string target, token, token_file, tls_ca, tls_cert, tls_key;
  std::string work_dir = "kvscope-worker";
  std::string advertise_host;  // "" = the address this machine reaches the coordinator from
  std::vector<std::string> models;
  int64_t max_trials = 1;
  double backoff_max = 30;
  bool print_capabilities = false;
  flags.String("coordinator", &target, "the coordinator's HOST:PORT");
  flags.String("token", &token, "worker bearer token (prefer --token-file)");
  flags.String("token-file", &token_file, "file whose first line is the worker token");
  flags.String("tls-ca", &tls_ca, "CA certificate (PEM) to verify the coordinator; enables TLS");
  flags.String("tls-cert", &tls_cert, "client certificate (PEM) for mutual TLS");
  flags.String("tls-key", &tls_key, "client private key (PEM) for mutual TLS");
  flags.String("work-dir", &work_dir, "attempt directories and the result spool");
  flags.StringList("models", &models,
                   "model directories this worker offers, comma-separated or repeated (a "
                   "folder of models counts each model inside)");
  flags.Int("max-trials", &max_trials, "trials run at once");
  flags.String("advertise-host", &advertise_host,
               "host name or address other workers reach this one on, for trials whose "
               "tensor-parallel group spans several workers (bench key `nodes`); rank 0 of "
               "such a trial listens there on a free port (default: this machine's address "
               "on the route to the coordinator)");
  flags.Double("backoff-max", &backoff_max, "longest wait between reconnection attempts, seconds");
  flags.Bool("print-capabilities", &print_capabilities,
             "print what this worker would register (CPU, GPUs, topology, models) as JSON and "
             "exit; needs no coordinator");
  if (std::optional<int> code = flags.ParseOrExitCode(args, nullptr)) return *code;
  if (print_capabilities) {
    absl::StatusOr<coordinator::WorkerCapabilities> capabilities =
        worker::DetectCapabilities(CapabilityOptionsFromFlags(models, max_trials));
    if (!capabilities.ok()) return Fail(std::string(capabilities.status().message()));
    std::printf("%s\n", coordinator::CapabilitiesToJson(*capabilities).dump(2).c_str());
    return 0;
  }
  if (target.empty()) {
    std::fprintf(stderr, "kvscope worker: --coordinator HOST:PORT is required\n");
    return 2;
  }
  if (!token.empty() && !token_file.empty()) {
    std::fprintf(stderr, "kvscope worker: give --token or --token-file, not both\n");
    return 2;
  }
  if (max_trials < 1 || max_trials > 1024) {
    std::fprintf(stderr, "kvscope worker: --max-trials must be in [1, 1024]\n");
    return 2;
  }
  if (advertise_host.empty()) advertise_host = RouteAddressTo(target);
  if (advertise_host.find_first_of(" /\t") != std::string::npos) {
    std::fprintf(stderr,
                 "kvscope worker: --advertise-host must be a host name or address (got \"%s\")\n",
                 advertise_host.c_str());
    return 2;
  }
  if (!(backoff_max >= 0.5)) {
    std::fprintf(stderr, "kvscope worker: --backoff-max must be >= 0.5 seconds\n");
    return 2;
  }
  if (!token_file.empty()) {
    absl::StatusOr<std::string> read = ReadToken(token_file);
    if (!read.ok()) return Fail(std::string(read.status().message()));
    token = *read;
  }

  // SIGINT/SIGTERM are taken by sigtimedwait below. They are blocked before any thread starts
  // (gRPC's included), so none of them dies of the default action; trial children reset it.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  absl::StatusOr<coordinator::WorkerCapabilities> capabilities =
      worker::DetectCapabilities(CapabilityOptionsFromFlags(models, max_trials));
  if (!capabilities.ok()) return Fail(std::string(capabilities.status().message()));

  worker::GrpcConnectionOptions connection_options;
  connection_options.target = target;
  connection_options.token = token;
  connection_options.tls_ca_file = tls_ca;
  connection_options.tls_cert_file = tls_cert;
  connection_options.tls_key_file = tls_key;
  absl::StatusOr<std::unique_ptr<worker::CoordinatorConnection>> connection =
      worker::ConnectToCoordinator(connection_options);
  if (!connection.ok()) return Fail(std::string(connection.status().message()));

  worker::WorkerDaemonOptions options;
  options.connection = connection->get();
  options.capabilities = *capabilities;
  options.work_dir = work_dir;
  options.max_concurrent_trials = static_cast<int32_t>(max_trials);
  options.backoff_max_seconds = backoff_max;
  options.advertise_host = advertise_host;
  absl::StatusOr<std::unique_ptr<worker::WorkerDaemon>> daemon =
      worker::WorkerDaemon::Create(options);
  if (!daemon.ok()) return Fail(std::string(daemon.status().message()));

  std::fprintf(stderr,
               "kvscope worker: %s, %d CPU cores, %zu GPU(s), coordinator %s%s, gang rank 0 "
               "listens on %s\n",
               capabilities->hostname.c_str(), capabilities->cpu_cores, capabilities->gpus.size(),
               target.c_str(), tls_ca.empty() ? "" : " (TLS)", advertise_host.c_str());
  std::atomic<bool> returned{false};
  absl::Status status;
  std::thread thread([&] {
    status = (*daemon)->Run();
    returned.store(true);
  });
  const timespec tick = {0, 200 * 1000 * 1000};
  while (!returned.load()) {
    const int signal_number = sigtimedwait(&signals, nullptr, &tick);
    if (signal_number > 0) {
      std::fprintf(stderr, "kvscope worker: %s: stopping\n",
                   signal_number == SIGINT ? "SIGINT" : "SIGTERM");
      (*daemon)->Shutdown();
      break;
    }
  }
  thread.join();
  if (!status.ok()) return Fail(std::string(status.message()));
  return 0;
}

}  // namespace kvscope::cli

// `kvscope coordinator --listen HOST:PORT --db FILE`: the coordinator daemon.
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <ctime>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/flag_set.h"
#include "common/clock.h"
#include "coordinator/coordinator.h"
#include "coordinator/grpc_auth.h"
#include "coordinator/grpc_server.h"
#include "coordinator/store.h"

namespace kvscope::cli {
namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "kvscope coordinator: %s\n", message.c_str());
  return 1;
}

absl::Status AddTokens(const std::vector<std::string>& tokens, const std::string& file,
                       std::vector<std::string>* out) {
  out->insert(out->end(), tokens.begin(), tokens.end());
  if (!file.empty()) {
    absl::StatusOr<std::vector<std::string>> from_file = coordinator::ReadTokenFile(file);
    if (!from_file.ok()) return from_file.status();
    out->insert(out->end(), from_file->begin(), from_file->end());
  }
  return absl::OkStatus();
}

}  // namespace

int RunCoordinator(const std::vector<std::string>& args) {
  FlagSet flags("kvscope coordinator", "--listen HOST:PORT --db FILE",
                "Runs the coordinator: stores sweeps and results in the SQLite file --db, hands\n"
                "trials to workers (`kvscope worker`) and serves clients (`kvscope submit`,\n"
                "status, results, cancel, workers) over gRPC. Without tokens it accepts\n"
                "loopback connections only; see docs/cluster.md (Security) to open it up.\n"
                "SIGINT/SIGTERM stop it cleanly; a restart on the same --db resumes.");
  std::string listen = "127.0.0.1:7070", db;
  std::vector<std::string> worker_tokens, client_tokens;
  std::string worker_token_file, client_token_file, tls_cert, tls_key, tls_client_ca;
  double lease_seconds = 30, heartbeat_seconds = 0;
  int64_t max_attempts = 3, max_message_bytes = 64 << 20;
  flags.String("listen", &listen, "address to listen on, HOST:PORT (port 0: any free port)");
  flags.String("db", &db, "the SQLite store (created if absent)");
  flags.StringList("worker-token", &worker_tokens,
                   "a token workers must present (repeatable); prefer --worker-token-file");
  flags.String("worker-token-file", &worker_token_file, "file of worker tokens, one per line");
  flags.StringList("client-token", &client_tokens,
                   "a token clients must present (repeatable); prefer --client-token-file");
  flags.String("client-token-file", &client_token_file, "file of client tokens, one per line");
  flags.String("tls-cert", &tls_cert, "server certificate (PEM); enables TLS");
  flags.String("tls-key", &tls_key, "server private key (PEM)");
  flags.String("tls-client-ca", &tls_client_ca,
               "CA (PEM) that must have signed every client's and worker's certificate "
               "(mutual TLS)");
  flags.Double("lease-seconds", &lease_seconds,
               "a trial's lease expires when its worker has not renewed it for this long");
  flags.Double("heartbeat-seconds", &heartbeat_seconds,
               "heartbeat interval told to workers (default: min(5, lease/3))");
  flags.Int("max-attempts", &max_attempts, "attempts per trial when the sweep sets none");
  flags.Int("max-message-bytes", &max_message_bytes, "largest gRPC message accepted");
  std::vector<std::string> positional;
  if (std::optional<int> code = flags.ParseOrExitCode(args, &positional)) return *code;
  if (!positional.empty()) {
    std::fprintf(stderr, "kvscope coordinator: unexpected argument '%s'\n",
                 positional[0].c_str());
    return 2;
  }
  if (db.empty()) {
    std::fprintf(stderr,
                 "kvscope coordinator: --db FILE is required (the SQLite store, e.g. "
                 "--db kvscope.db)\n");
    return 2;
  }
  if (!(lease_seconds > 0) || max_attempts < 1) {
    std::fprintf(stderr, "kvscope coordinator: --lease-seconds must be > 0 and "
                         "--max-attempts >= 1\n");
    return 2;
  }
  if (heartbeat_seconds <= 0) heartbeat_seconds = std::min(5.0, lease_seconds / 3);

  // Signals are taken synchronously by the loop below; block them before any thread starts
  // (threads inherit the mask). The coordinator starts no child process.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  coordinator::GrpcServerOptions server_options;
  server_options.listen_address = listen;
  server_options.tls_cert_file = tls_cert;
  server_options.tls_key_file = tls_key;
  server_options.tls_client_ca_file = tls_client_ca;
  server_options.max_message_bytes = max_message_bytes;
  server_options.lease_seconds = lease_seconds;
  server_options.heartbeat_interval_seconds = heartbeat_seconds;
  if (absl::Status s = AddTokens(worker_tokens, worker_token_file, &server_options.worker_tokens);
      !s.ok()) {
    return Fail(std::string(s.message()));
  }
  if (absl::Status s = AddTokens(client_tokens, client_token_file, &server_options.client_tokens);
      !s.ok()) {
    return Fail(std::string(s.message()));
  }
  // Check the listen address before touching the store.
  if (absl::Status s = coordinator::ValidateServerOptions(server_options); !s.ok()) {
    return Fail(std::string(s.message()));
  }

  absl::StatusOr<std::unique_ptr<coordinator::Store>> store = coordinator::Store::Open(db);
  if (!store.ok()) return Fail("cannot open the store: " + std::string(store.status().message()));
  coordinator::CoordinatorOptions options;
  options.lease_seconds = lease_seconds;
  options.heartbeat_interval_seconds = heartbeat_seconds;
  options.default_max_attempts = static_cast<int32_t>(max_attempts);
  absl::StatusOr<std::unique_ptr<coordinator::Coordinator>> coordinator =
      coordinator::Coordinator::Create(store->get(), &RealClock::Get(), options);
  if (!coordinator.ok()) {
    return Fail("cannot start from " + db + ": " + std::string(coordinator.status().message()));
  }

  absl::StatusOr<std::unique_ptr<coordinator::GrpcServer>> server =
      coordinator::GrpcServer::Start(coordinator->get(), server_options);
  if (!server.ok()) return Fail(std::string(server.status().message()));
  std::fprintf(stderr, "kvscope coordinator: listening on %s (%s%s), store %s, lease %.1fs\n",
               (*server)->address().c_str(), (*server)->tls() ? "TLS" : "plaintext",
               tls_client_ca.empty() ? "" : ", client certificates required", db.c_str(),
               lease_seconds);
  if (server_options.worker_tokens.empty() && server_options.client_tokens.empty()) {
    std::fprintf(stderr,
                 "kvscope coordinator: no tokens configured: accepting loopback connections "
                 "only (set --worker-token-file and --client-token-file to listen elsewhere)\n");
  } else if ((*server)->loopback_only()) {
    std::fprintf(stderr,
                 "kvscope coordinator: %s API has no token: it is open to loopback callers\n",
                 server_options.worker_tokens.empty() ? "the worker" : "the client");
  }
  std::fflush(stderr);

  int signal_number = 0;
  while (true) {
    struct timespec one_second = {1, 0};
    signal_number = sigtimedwait(&signals, nullptr, &one_second);
    if (signal_number > 0) break;
    if (absl::Status s = (*coordinator)->ExpireLeases(); !s.ok()) {
      std::fprintf(stderr, "kvscope coordinator: expiring leases: %s\n",
                   std::string(s.message()).c_str());
    }
  }
  std::fprintf(stderr, "kvscope coordinator: %s: shutting down\n",
               signal_number == SIGINT ? "SIGINT" : "SIGTERM");
  (*server)->Shutdown(/*grace_seconds=*/2);
  server->reset();
  coordinator->reset();
  store->reset();
  return 0;
}

}  // namespace kvscope::cli

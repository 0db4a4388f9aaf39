// File: coordinator/grpc_server.h
//
// The coordinator's gRPC server: ClientService and WorkerService over one Coordinator,
// plus the standard gRPC health service (grpc.health.v1.Health, answering SERVING).
//
// Security (docs/cluster.md, "Security"):
//   - TLS when tls_cert_file + tls_key_file are given; with tls_client_ca_file, clients and
//     workers must present a certificate signed by that CA (mutual TLS).
//   - Bearer tokens: worker tokens open WorkerService only, client tokens ClientService only.
//   - Without tokens of both kinds the server may only listen on a loopback address;
//     Start refuses anything else with a message that says how to fix it.
//   - Messages larger than max_message_bytes are refused by gRPC (RESOURCE_EXHAUSTED).
#ifndef KVSCOPE_COORDINATOR_GRPC_SERVER_H_
#define KVSCOPE_COORDINATOR_GRPC_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "coordinator/coordinator.h"

namespace kvscope::coordinator {

struct GrpcServerOptions {
  std::string listen_address = "127.0.0.1:7070";  // port 0 picks a free port
  std::string tls_cert_file, tls_key_file;  // PEM; both or neither
  std::string tls_client_ca_file;           // PEM; requires client certificates (mTLS)
  std::vector<std::string> worker_tokens;
  std::vector<std::string> client_tokens;
  int64_t max_message_bytes = 64 << 20;
  // Told to workers at registration; pass the values the Coordinator was created with.
  double heartbeat_interval_seconds = 5;
  double lease_seconds = 30;
};

// The checks Start makes before binding: TLS files come in pairs, and a non-loopback
// address needs worker and client tokens. InvalidArgument / FailedPrecondition say how to fix.
absl::Status ValidateServerOptions(const GrpcServerOptions& options);

class GrpcServer {
 public:
  // `coordinator` must outlive the server. Binds and starts serving before returning.
  static absl::StatusOr<std::unique_ptr<GrpcServer>> Start(Coordinator* coordinator,
                                                           const GrpcServerOptions& options);
  ~GrpcServer();  // Shutdown()

  int port() const;                 // the bound port (useful with port 0)
  std::string address() const;      // host:port actually bound
  bool loopback_only() const;       // no tokens: loopback connections only
  bool tls() const;
  // Stops accepting calls, cancels open streams after `grace_seconds`, and returns when
  // every handler has finished. Idempotent.
  void Shutdown(double grace_seconds = 2);
  // Blocks until Shutdown is called from another thread.
  void Wait();

 private:
  class Impl;
  explicit GrpcServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvscope::coordinator

#endif  // KVSCOPE_COORDINATOR_GRPC_SERVER_H_

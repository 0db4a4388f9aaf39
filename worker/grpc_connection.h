// File: worker/grpc_connection.h
//
// A CoordinatorConnection over gRPC: the worker daemon's calls become WorkerService RPCs
// (proto/kvscope/v1/worker.proto). Every call carries `authorization: Bearer <token>` when a
// token is set, and runs under a deadline of `call_timeout_seconds`.
//
// Error mapping (see worker/coordinator_connection.h for what the daemon does with each):
// gRPC UNAVAILABLE and DEADLINE_EXCEEDED become absl Unavailable (retry with backoff);
// NOT_FOUND, FAILED_PRECONDITION, UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT keep
// their code; anything else keeps its code as well. Messages name the coordinator address.
// Except AwaitRendezvous's DEADLINE_EXCEEDED (not published within the wait), which stays
// DeadlineExceeded so that the caller asks again at once.
//
// Thread safety: the returned connection may be used from several threads at once.
#ifndef KVSCOPE_WORKER_GRPC_CONNECTION_H_
#define KVSCOPE_WORKER_GRPC_CONNECTION_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "worker/coordinator_connection.h"

namespace kvscope::worker {

struct GrpcConnectionOptions {
  // "host:port" of the coordinator.
  std::string target;
  // Worker bearer token; "" sends none (only a loopback coordinator without tokens accepts).
  std::string token;
  // TLS: with tls_ca_file set the channel uses TLS and verifies the server against that CA;
  // tls_cert_file + tls_key_file add a client certificate (mutual TLS). All empty: plaintext.
  std::string tls_ca_file, tls_cert_file, tls_key_file;
  double call_timeout_seconds = 10;
};

// Creates the channel (does not wait for it to connect: a coordinator that is down shows up
// as Unavailable from the first call). InvalidArgument for an empty target or unreadable TLS
// files.
absl::StatusOr<std::unique_ptr<CoordinatorConnection>> ConnectToCoordinator(
    const GrpcConnectionOptions& options);

}  // namespace kvscope::worker

#endif  // KVSCOPE_WORKER_GRPC_CONNECTION_H_

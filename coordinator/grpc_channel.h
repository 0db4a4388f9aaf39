// File: coordinator/grpc_channel.h
//
// Client side of the coordinator's gRPC services: channel construction (plaintext or TLS,
// optionally with a client certificate) and per-call setup (deadline + bearer token). Used
// by the CLI and by worker/grpc_connection.cc.
#ifndef KVSCOPE_COORDINATOR_GRPC_CHANNEL_H_
#define KVSCOPE_COORDINATOR_GRPC_CHANNEL_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"

namespace kvscope::coordinator {

struct ChannelOptions {
  std::string target;            // "host:port"
  std::string token;             // bearer token; "" sends none
  // TLS when tls_ca_file is set (server verified against it); cert + key add a client
  // certificate for mutual TLS. All empty: plaintext.
  std::string tls_ca_file, tls_cert_file, tls_key_file;
  int64_t max_message_bytes = 64 << 20;
};

// InvalidArgument for an empty target, unreadable TLS files, or a cert without a key.
// The channel connects lazily and reconnects with a short backoff (at most 2 s), so a
// restarted coordinator is found again quickly.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ChannelOptions& options);

// Sets the call's deadline (`timeout_seconds` from now; <= 0: none) and its bearer token.
void PrepareCall(grpc::ClientContext* context, const std::string& token,
                 double timeout_seconds);

}  // namespace kvscope::coordinator

#endif  // KVSCOPE_COORDINATOR_GRPC_CHANNEL_H_

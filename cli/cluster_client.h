// File: cli/cluster_client.h
//
// What the client subcommands (submit, status, results, cancel, workers) share: the
// connection flags (--coordinator, --token/--token-file, --tls-ca/--tls-cert/--tls-key, with
// KVSCOPE_COORDINATOR and KVSCOPE_TOKEN as fallbacks), a ClientService stub, and error
// messages that say what failed, where, and how to fix it.
#ifndef KVSCOPE_CLI_CLUSTER_CLIENT_H_
#define KVSCOPE_CLI_CLUSTER_CLIENT_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cli/flag_set.h"
#include "grpcpp/client_context.h"
#include "kvscope/v1/client.grpc.pb.h"

namespace kvscope::cli {

struct ClientFlags {
  std::string coordinator;
  std::string token, token_file;
  std::string tls_ca, tls_cert, tls_key;
  double timeout_seconds = 30;
};

// Registers the connection flags on `flags`.
void AddClientFlags(FlagSet* flags, ClientFlags* values);

class ClusterClient {
 public:
  // Resolves the flags (environment fallbacks, token file) and creates the channel; does not
  // contact the coordinator.
  static absl::StatusOr<std::unique_ptr<ClusterClient>> Connect(const FlagSet& flags,
                                                                const ClientFlags& values);

  v1::ClientService::Stub* stub() { return stub_.get(); }
  const std::string& target() const { return target_; }
  // Deadline (`timeout_seconds`, <= 0: the flag's) and token for one call.
  void Prepare(grpc::ClientContext* context, double timeout_seconds = 0) const;
  // grpc::Status -> absl::Status naming the coordinator, with a hint for common failures.
  absl::Status Check(const grpc::Status& status) const;

 private:
  std::string target_, token_;
  double timeout_seconds_ = 30;
  std::unique_ptr<v1::ClientService::Stub> stub_;
};

// Prints "kvscope COMMAND: MESSAGE" to stderr and returns 1.
int Fail(const std::string& command, const absl::Status& status);

}  // namespace kvscope::cli

#endif  // KVSCOPE_CLI_CLUSTER_CLIENT_H_

#include "cli/cluster_client.h"

#include <cstdio>
#include <cstdlib>

#include "coordinator/grpc_auth.h"
#include "coordinator/grpc_channel.h"
#include "coordinator/grpc_convert.h"

namespace kvscope::cli {

void AddClientFlags(FlagSet* flags, ClientFlags* values) {
  flags->String("coordinator", &values->coordinator,
                "coordinator address HOST:PORT (default: $KVSCOPE_COORDINATOR, else "
                "127.0.0.1:7070)");
  flags->String("token", &values->token,
                "client bearer token (default: $KVSCOPE_TOKEN); prefer --token-file");
  flags->String("token-file", &values->token_file, "file holding the client token");
  flags->String("tls-ca", &values->tls_ca,
                "CA certificate (PEM) that signed the coordinator's; enables TLS");
  flags->String("tls-cert", &values->tls_cert, "client certificate (PEM) for mutual TLS");
  flags->String("tls-key", &values->tls_key, "client private key (PEM) for mutual TLS");
  flags->Double("timeout", &values->timeout_seconds, "seconds each call may take");
}

absl::StatusOr<std::unique_ptr<ClusterClient>> ClusterClient::Connect(
    const FlagSet& flags, const ClientFlags& values) {
  auto client = std::unique_ptr<ClusterClient>(new ClusterClient());
  client->target_ = values.coordinator;
  if (!flags.IsSet("coordinator")) {
    const char* env = std::getenv("KVSCOPE_COORDINATOR");
    client->target_ = env != nullptr && *env != '\0' ? env : "127.0.0.1:7070";
  }
  if (!values.token.empty() && !values.token_file.empty()) {
    return absl::InvalidArgumentError("give --token or --token-file, not both");
  }
  client->token_ = values.token;
  if (!values.token_file.empty()) {
    absl::StatusOr<std::vector<std::string>> tokens =
        coordinator::ReadTokenFile(values.token_file);
    if (!tokens.ok()) return tokens.status();
    client->token_ = tokens->front();
  } else if (client->token_.empty()) {
    const char* env = std::getenv("KVSCOPE_TOKEN");
    if (env != nullptr) client->token_ = env;
  }
  client->timeout_seconds_ = values.timeout_seconds;
  coordinator::ChannelOptions options;
  options.target = client->target_;
  options.token = client->token_;
  options.tls_ca_file = values.tls_ca;
  options.tls_cert_file = values.tls_cert;
  options.tls_key_file = values.tls_key;
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = coordinator::MakeChannel(options);
  if (!channel.ok()) return channel.status();
  client->stub_ = v1::ClientService::NewStub(*channel);
  return client;
}

void ClusterClient::Prepare(grpc::ClientContext* context, double timeout_seconds) const {
  coordinator::PrepareCall(context, token_,
                           timeout_seconds > 0 ? timeout_seconds : timeout_seconds_);
}

absl::Status ClusterClient::Check(const grpc::Status& status) const {
  if (status.ok()) return absl::OkStatus();
  absl::Status s = coordinator::FromGrpcStatus(status, "coordinator at " + target_);
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
    return absl::UnavailableError(
        "cannot reach the coordinator at " + target_ + " (" + status.error_message() +
        "). Is `kvscope coordinator` running there? Pass --coordinator HOST:PORT or set "
        "KVSCOPE_COORDINATOR; with a TLS coordinator pass --tls-ca.");
  }
  return s;
}

int Fail(const std::string& command, const absl::Status& status) {
  std::fprintf(stderr, "kvscope %s: %s\n", command.c_str(), std::string(status.message()).c_str());
  return 1;
}

}  // namespace kvscope::cli

#include "coordinator/grpc_server.h"

#include <chrono>
#include <mutex>
#include <utility>

#include "coordinator/grpc_auth.h"
#include "coordinator/grpc_services.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"

namespace kvscope::coordinator {

absl::Status ValidateServerOptions(const GrpcServerOptions& options) {
  if (options.listen_address.empty()) {
    return absl::InvalidArgumentError("empty listen address: pass --listen HOST:PORT");
  }
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("TLS needs both --tls-cert and --tls-key");
  }
  if (!options.tls_client_ca_file.empty() && options.tls_cert_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls-client-ca (mutual TLS) needs the server's own --tls-cert and --tls-key");
  }
  if (options.max_message_bytes < 1024 || options.max_message_bytes > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError("max message bytes must be in [1 KiB, 1 GiB]");
  }
  for (const auto* tokens : {&options.worker_tokens, &options.client_tokens}) {
    for (const std::string& t : *tokens) {
      if (t.size() < 16) {
        return absl::InvalidArgumentError(
            "tokens must be at least 16 characters (try `openssl rand -hex 32`)");
      }
    }
  }
  if (!IsLoopbackAddress(options.listen_address) &&
      (options.worker_tokens.empty() || options.client_tokens.empty())) {
    return absl::FailedPreconditionError(
        "refusing to listen on " + options.listen_address +
        " without both worker and client tokens: anyone who can reach it could submit work "
        "or act as a worker. Either listen on loopback (--listen 127.0.0.1:PORT) or set "
        "--worker-token-file and --client-token-file (and preferably --tls-cert/--tls-key)");
  }
  return absl::OkStatus();
}

class GrpcServer::Impl {
 public:
  Impl(Coordinator* coordinator, const GrpcServerOptions& options)
      : options_(options),
        auth_(options.worker_tokens, options.client_tokens),
        client_service_(coordinator, &auth_),
        worker_service_(coordinator, &auth_,
                        WorkerServiceOptions{options.heartbeat_interval_seconds,
                                             options.lease_seconds}) {}

  absl::Status Start() {
    std::shared_ptr<grpc::ServerCredentials> credentials;
    if (options_.tls_cert_file.empty()) {
      credentials = grpc::InsecureServerCredentials();
    } else {
      absl::StatusOr<std::string> cert =
          ReadTextFile(options_.tls_cert_file, "TLS certificate file");
      if (!cert.ok()) return cert.status();
      absl::StatusOr<std::string> key = ReadTextFile(options_.tls_key_file, "TLS key file");
      if (!key.ok()) return key.status();
      grpc::SslServerCredentialsOptions ssl;
      ssl.pem_key_cert_pairs.push_back({*key, *cert});
      if (!options_.tls_client_ca_file.empty()) {
        absl::StatusOr<std::string> ca =
            ReadTextFile(options_.tls_client_ca_file, "TLS client CA file");
        if (!ca.ok()) return ca.status();
        ssl.pem_root_certs = *ca;
        ssl.client_certificate_request =
            GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
      }
      credentials = grpc::SslServerCredentials(ssl);
    }
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort(options_.listen_address, credentials, &port_);
    builder.SetMaxReceiveMessageSize(static_cast<int>(options_.max_message_bytes));
    builder.SetMaxSendMessageSize(static_cast<int>(options_.max_message_bytes));
    builder.RegisterService(&client_service_);
    builder.RegisterService(&worker_service_);
    server_ = builder.BuildAndStart();
    if (server_ == nullptr || port_ == 0) {
      return absl::UnavailableError(
          "cannot listen on " + options_.listen_address +
          ": the address is in use or not local to this machine (pick another --listen port, "
          "or stop the process holding it)");
    }
    return absl::OkStatus();
  }

  void Shutdown(double grace_seconds) {
    std::lock_guard<std::mutex> lock(mu_);
    if (shut_down_ || server_ == nullptr) return;
    shut_down_ = true;
    server_->Shutdown(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(static_cast<int64_t>(grace_seconds * 1000)));
  }

  void Wait() {
    if (server_ != nullptr) server_->Wait();
  }

  int port() const { return port_; }
  const GrpcServerOptions& options() const { return options_; }

 private:
  GrpcServerOptions options_;
  TokenAuthenticator auth_;
  ClientServiceImpl client_service_;
  WorkerServiceImpl worker_service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::mutex mu_;
  bool shut_down_ = false;
};

absl::StatusOr<std::unique_ptr<GrpcServer>> GrpcServer::Start(Coordinator* coordinator,
                                                              const GrpcServerOptions& options) {
  if (absl::Status s = ValidateServerOptions(options); !s.ok()) return s;
  auto impl = std::make_unique<Impl>(coordinator, options);
  if (absl::Status s = impl->Start(); !s.ok()) return s;
  return std::unique_ptr<GrpcServer>(new GrpcServer(std::move(impl)));
}

GrpcServer::GrpcServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

GrpcServer::~GrpcServer() {
  Shutdown();
  impl_->Wait();
}

int GrpcServer::port() const { return impl_->port(); }

std::string GrpcServer::address() const {
  const std::string& listen = impl_->options().listen_address;
  const size_t colon = listen.rfind(':');
  const std::string host = colon == std::string::npos ? listen : listen.substr(0, colon);
  return host + ":" + std::to_string(impl_->port());
}

bool GrpcServer::loopback_only() const {
  return impl_->options().worker_tokens.empty() || impl_->options().client_tokens.empty();
}

bool GrpcServer::tls() const { return !impl_->options().tls_cert_file.empty(); }

void GrpcServer::Shutdown(double grace_seconds) { impl_->Shutdown(grace_seconds); }

void GrpcServer::Wait() { impl_->Wait(); }

}  // namespace kvscope::coordinator

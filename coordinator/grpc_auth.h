// File: coordinator/grpc_auth.h
//
// Bearer-token authentication of the coordinator's services (docs/cluster.md, "Security").
// Two kinds of tokens: worker tokens open WorkerService only, client tokens ClientService
// only. Each call carries the metadata `authorization: Bearer <token>`. A service whose kind
// has no token configured is open to every caller; that is allowed only on a loopback
// listen address (coordinator/grpc_server.cc refuses anything else).
//
// Thread safety: TokenAuthenticator is immutable after construction.
#ifndef KVSCOPE_COORDINATOR_GRPC_AUTH_H_
#define KVSCOPE_COORDINATOR_GRPC_AUTH_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace grpc {
class ServerContextBase;
}  // namespace grpc

namespace kvscope::coordinator {

enum class TokenKind { kWorker, kClient };

class TokenAuthenticator {
 public:
  TokenAuthenticator(std::vector<std::string> worker_tokens,
                     std::vector<std::string> client_tokens);

  // `authorization`: the value of the call's `authorization` metadata, nullopt when absent.
  // Unauthenticated: missing header, not a Bearer token, or an unknown token;
  // PermissionDenied: a valid token of the other kind. Messages say how to fix.
  absl::Status Check(TokenKind required, const std::optional<std::string>& authorization) const;
  // Reads the metadata from a server call.
  absl::Status Check(TokenKind required, const grpc::ServerContextBase& context) const;

  // No token of this kind configured: its service accepts every caller.
  bool open(TokenKind kind) const;

 private:
  bool Matches(const std::vector<std::string>& tokens, const std::string& token) const;
  std::vector<std::string> worker_tokens_, client_tokens_;
};

// True when `address` ("host:port", "[v6]:port", "unix:...") can only be reached from this
// machine: 127.0.0.0/8, ::1, localhost, or a unix socket.
bool IsLoopbackAddress(const std::string& address);

// Reads a token file: one token per line; blank lines and lines starting with '#' are
// skipped. InvalidArgument when the file is unreadable or holds no token.
absl::StatusOr<std::vector<std::string>> ReadTokenFile(const std::string& path);

// Reads a whole file (certificates, keys). `what` names it in the error ("TLS CA file").
absl::StatusOr<std::string> ReadTextFile(const std::string& path, const std::string& what);

}  // namespace kvscope::coordinator

#endif  // KVSCOPE_COORDINATOR_GRPC_AUTH_H_

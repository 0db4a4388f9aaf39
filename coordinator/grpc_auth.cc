#include "coordinator/grpc_auth.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "grpcpp/server_context.h"

namespace kvscope::coordinator {
namespace {

// Compares in time that depends on the lengths only, so a caller cannot learn a token's
// prefix from response times.
bool ConstantTimeEquals(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

const char* KindName(TokenKind kind) {
  switch (kind) {
    case TokenKind::kWorker: return "worker";
    case TokenKind::kClient: return "client";
  }
  return "?";
}

}  // namespace

TokenAuthenticator::TokenAuthenticator(std::vector<std::string> worker_tokens,
                                       std::vector<std::string> client_tokens)
    : worker_tokens_(std::move(worker_tokens)), client_tokens_(std::move(client_tokens)) {}

bool TokenAuthenticator::open(TokenKind kind) const {
  switch (kind) {
    case TokenKind::kWorker: return worker_tokens_.empty();
    case TokenKind::kClient: return client_tokens_.empty();
  }
  return false;
}

bool TokenAuthenticator::Matches(const std::vector<std::string>& tokens,
                                 const std::string& token) const {
  bool found = false;
  for (const std::string& t : tokens) found |= ConstantTimeEquals(t, token);
  return found;
}

absl::Status TokenAuthenticator::Check(TokenKind required,
                                       const std::optional<std::string>& authorization) const {
  if (open(required)) return absl::OkStatus();
  const char* flag = required == TokenKind::kWorker ? "kvscope worker --token/--token-file"
                                                    : "--token/--token-file or KVSCOPE_TOKEN";
  if (!authorization.has_value() || authorization->empty()) {
    return absl::UnauthenticatedError(
        std::string("missing ") + KindName(required) +
        " token: this coordinator requires 'authorization: Bearer <token>'; pass it with " +
        flag);
  }
  constexpr char kPrefix[] = "Bearer ";
  if (!absl::StartsWithIgnoreCase(*authorization, kPrefix)) {
    return absl::UnauthenticatedError(
        "the authorization metadata must be 'Bearer <token>'; pass the token with " +
        std::string(flag));
  }
  const std::string token(
      absl::StripAsciiWhitespace(absl::string_view(*authorization).substr(sizeof(kPrefix) - 1)));
  const std::vector<std::string>& wanted =
      required == TokenKind::kWorker ? worker_tokens_ : client_tokens_;
  const std::vector<std::string>& other =
      required == TokenKind::kWorker ? client_tokens_ : worker_tokens_;
  if (Matches(wanted, token)) return absl::OkStatus();
  if (Matches(other, token)) {
    return absl::PermissionDeniedError(
        std::string("a ") + KindName(required == TokenKind::kWorker ? TokenKind::kClient
                                                                   : TokenKind::kWorker) +
        " token cannot be used for the " + KindName(required) + " API; use a " +
        KindName(required) + " token (" + flag + ")");
  }
  return absl::UnauthenticatedError(std::string("invalid ") + KindName(required) +
                                    " token: it matches none the coordinator was started with");
}

absl::Status TokenAuthenticator::Check(TokenKind required,
                                       const grpc::ServerContextBase& context) const {
  if (open(required)) return absl::OkStatus();
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  std::optional<std::string> value;
  if (it != metadata.end()) value = std::string(it->second.data(), it->second.size());
  return Check(required, value);
}

bool IsLoopbackAddress(const std::string& address) {
  if (absl::StartsWith(address, "unix:") || absl::StartsWith(address, "unix-abstract:")) {
    return true;
  }
  std::string host;
  if (absl::StartsWith(address, "[")) {
    const size_t close = address.find(']');
    if (close == std::string::npos) return false;
    host = address.substr(1, close - 1);
  } else {
    const size_t colon = address.rfind(':');
    host = colon == std::string::npos ? address : address.substr(0, colon);
    if (absl::StartsWith(host, "ipv4:")) host = host.substr(5);
  }
  host = absl::AsciiStrToLower(host);
  if (host == "localhost" || host == "::1" || host == "0:0:0:0:0:0:0:1") return true;
  // 127.0.0.0/8, dotted quad only.
  std::vector<std::string> parts = absl::StrSplit(host, '.');
  if (parts.size() != 4 || parts[0] != "127") return false;
  for (const std::string& p : parts) {
    int v = 0;
    if (p.empty() || p.size() > 3 || !absl::SimpleAtoi(p, &v) || v < 0 || v > 255) return false;
  }
  return true;
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError("cannot read " + what + " '" + path +
                                      "': " + std::strerror(errno));
  }
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::StatusOr<std::vector<std::string>> ReadTokenFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadTextFile(path, "token file");
  if (!text.ok()) return text.status();
  std::vector<std::string> tokens;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || absl::StartsWith(line, "#")) continue;
    tokens.emplace_back(line);
  }
  if (tokens.empty()) {
    return absl::InvalidArgumentError("token file '" + path +
                                      "' holds no token (one per line; '#' starts a comment)");
  }
  return tokens;
}

}  // namespace kvscope::coordinator

#include "engine/gang_session.h"

#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "engine/gang_messages.h"

namespace kvscope::engine {
namespace {

constexpr uint32_t kMaxFrameBytes = 1u << 30;
// A connection gets this long to say hello before it is dropped.
constexpr double kHelloTimeoutS = 5;

absl::Status SendFrame(TcpSocket& s, const std::string& frame, Deadline deadline,
                       const std::string& what) {
  const uint32_t n = static_cast<uint32_t>(frame.size());
  KVSCOPE_RETURN_IF_ERROR(s.SendAll(&n, sizeof(n), deadline, what));
  return s.SendAll(frame.data(), frame.size(), deadline, what);
}

absl::StatusOr<std::string> RecvFrame(TcpSocket& s, Deadline deadline, const std::string& what) {
  uint32_t n = 0;
  KVSCOPE_RETURN_IF_ERROR(s.RecvAll(&n, sizeof(n), deadline, what));
  if (n > kMaxFrameBytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": frame of ", n, " bytes"));
  }
  std::string frame(n, '\0');
  KVSCOPE_RETURN_IF_ERROR(s.RecvAll(frame.data(), n, deadline, what));
  return frame;
}

class TcpGangChannel final : public GangChannel {
 public:
  TcpGangChannel(TcpSocket socket, std::string peer)
      : socket_(std::move(socket)), peer_(std::move(peer)) {}
  absl::Status Send(const std::string& frame) override {
    return SendFrame(socket_, frame, DeadlineIn(300), absl::StrCat("sending to ", peer_));
  }
  absl::StatusOr<std::string> Receive(double timeout_s) override {
    return RecvFrame(socket_, DeadlineIn(timeout_s), absl::StrCat("waiting for ", peer_));
  }

 private:
  TcpSocket socket_;
  std::string peer_;
};

std::string RandomToken() {
  std::random_device device;  // /dev/urandom on Linux
  static const char kHex[] = "0123456789abcdef";
  std::string token;
  for (int i = 0; i < 4; ++i) {  // 128 bits
    uint32_t word = device();
    for (int j = 0; j < 4; ++j) {
      token.push_back(kHex[word & 0xf]);
      token.push_back(kHex[(word >> 4) & 0xf]);
      word >>= 8;
    }
  }
  return token;
}

bool SameToken(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;  // no early exit: the time taken does not reveal the prefix
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

absl::Status SendHello(TcpSocket& s, const GangHello& hello, Deadline deadline) {
  return SendFrame(s, EncodeHello(hello), deadline, "saying hello to the gang's driver");
}

}  // namespace

std::string FormatRendezvous(const GangRendezvous& r) {
  const bool ipv6 = r.host.find(':') != std::string::npos;
  return absl::StrCat("tcp://", ipv6 ? "[" : "", r.host, ipv6 ? "]" : "", ":", r.port, "/",
                      r.token);
}

absl::StatusOr<GangRendezvous> ParseRendezvous(const std::string& blob) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gang rendezvous blob '", blob.substr(0, 300), "': ", why,
        " (expected tcp://HOST:PORT/TOKEN as written by the gang's rank 0)"));
  };
  std::string text = blob;
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) {
    text.pop_back();
  }
  if (text.rfind("tcp://", 0) != 0) return bad("does not start with tcp://");
  const std::string rest = text.substr(6);
  const size_t slash = rest.rfind('/');
  if (slash == std::string::npos) return bad("no /TOKEN");
  GangRendezvous r;
  r.token = rest.substr(slash + 1);
  const std::string hostport = rest.substr(0, slash);
  const size_t colon = hostport.rfind(':');
  if (colon == std::string::npos) return bad("no :PORT");
  r.host = hostport.substr(0, colon);
  if (r.host.size() >= 2 && r.host.front() == '[' && r.host.back() == ']') {
    r.host = r.host.substr(1, r.host.size() - 2);
  }
  if (r.host.empty()) return bad("empty host");
  if (!absl::SimpleAtoi(hostport.substr(colon + 1), &r.port) || r.port <= 0 || r.port > 65535) {
    return bad("bad port");
  }
  if (r.token.size() != 32 || r.token.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return bad("the token is not 32 hex digits");
  }
  return r;
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc | std::ios::binary);
    out << text;
    out.flush();
    if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

std::unique_ptr<GangChannel> MakeTcpGangChannel(TcpSocket socket, const std::string& peer) {
  return std::make_unique<TcpGangChannel>(std::move(socket), peer);
}

absl::StatusOr<std::unique_ptr<GangDriverSession>> GangDriverSession::Listen(
    const GangLayout& layout, const std::string& host, const std::string& rendezvous_file) {
  std::unique_ptr<GangDriverSession> session(new GangDriverSession());
  session->layout_ = layout;
  absl::StatusOr<TcpListener> listener = ListenTcp(host, layout.tp + layout.nodes + 16);
  if (!listener.ok()) {
    return absl::Status(listener.status().code(),
                        absl::StrCat("gang driver: ", listener.status().message(),
                                     " (--gang-listen-host)"));
  }
  session->listener_ = std::move(*listener);
  session->rendezvous_ = {host, session->listener_.port, RandomToken()};
  session->blob_ = FormatRendezvous(session->rendezvous_);
  if (session->blob_.size() > 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gang driver: the rendezvous blob would exceed 256 bytes with --gang-listen-host '",
        host, "'; give a shorter name or an address"));
  }
  const absl::Status written = WriteFileAtomically(rendezvous_file, session->blob_);
  if (!written.ok()) {
    return absl::Status(written.code(),
                        absl::StrCat("gang driver: --gang-rendezvous-file: ", written.message()));
  }
  return session;
}

absl::StatusOr<GangMembership> GangDriverSession::Gather(const std::string& fingerprint,
                                                         Deadline deadline,
                                                         const TcpCommOptions& comm_options) {
  const int k = layout_.ranks_per_process();
  const int followers = layout_.nodes - 1;
  // This process's own ranks 1..k-1 connect like everyone else's.
  std::vector<TcpSocket> own;
  for (int r = 1; r < k; ++r) {
    KVSCOPE_ASSIGN_OR_RETURN(TcpSocket s, ConnectTcp(rendezvous_.host, rendezvous_.port,
                                                     DeadlineIn(10)));
    KVSCOPE_RETURN_IF_ERROR(SendHello(s, {rendezvous_.token, 0, r, ""}, DeadlineIn(10)));
    own.push_back(std::move(s));
  }
  std::map<int, TcpSocket> control;  // process -> control connection
  std::map<int, TcpSocket> ranks;    // rank -> hub-side connection
  std::vector<std::string> refusals;
  while (static_cast<int>(control.size()) < followers ||
         static_cast<int>(ranks.size()) < layout_.tp - 1) {
    absl::StatusOr<TcpSocket> accepted = AcceptTcp(listener_.socket, deadline);
    if (absl::IsDeadlineExceeded(accepted.status())) {
      std::string message = absl::StrCat(
          "gang driver: ", control.size(), " of ", followers,
          " follower processes and ", ranks.size() + 1, " of ", layout_.tp,
          " ranks joined before the deadline (--gang-timeout); the blob ", blob_,
          " must reach every follower (kvscope bench --gang-rank R --gang-rendezvous-file F)"
          " and HOST:PORT must be reachable from them (--gang-listen-host)");
      if (!refusals.empty()) {
        absl::StrAppend(&message, "; refused: ", absl::StrJoin(refusals, "; "));
      }
      return absl::DeadlineExceededError(message);
    }
    if (!accepted.ok()) return accepted.status();
    TcpSocket s = std::move(*accepted);
    const Deadline hello_deadline = std::min(deadline, DeadlineIn(kHelloTimeoutS));
    absl::StatusOr<std::string> frame = RecvFrame(s, hello_deadline, "reading a hello");
    absl::StatusOr<GangHello> hello =
        frame.ok() ? DecodeHello(*frame) : absl::StatusOr<GangHello>(frame.status());
    if (!hello.ok() || !SameToken(hello->token, rendezvous_.token)) {
      std::fprintf(stderr, "kvscope bench: gang driver: dropped a connection without the "
                           "rendezvous token\n");
      continue;  // `s` closes
    }
    if (hello->rank < 0) {
      std::string refusal;
      if (hello->process < 1 || hello->process >= layout_.nodes) {
        refusal = absl::StrCat("process ", hello->process, " is outside 1..", followers,
                               " (--gang-rank / --gang-size disagree with the driver's nodes: ",
                               layout_.nodes, ")");
      } else if (control.count(hello->process) > 0) {
        refusal = absl::StrCat("process ", hello->process, " joined twice");
      } else if (hello->fingerprint != fingerprint) {
        refusal = absl::StrCat("process ", hello->process,
                               " runs another configuration than the driver (same --config, "
                               "model and flags needed); driver: ", fingerprint,
                               " follower: ", hello->fingerprint);
      }
      (void)SendFrame(s, EncodeWelcome(refusal), hello_deadline, "welcoming a follower");
      if (!refusal.empty()) {
        refusals.push_back(refusal);
        continue;
      }
      control.emplace(hello->process, std::move(s));
    } else {
      if (hello->rank < 1 || hello->rank >= layout_.tp || ranks.count(hello->rank) > 0) {
        refusals.push_back(absl::StrCat("a connection for rank ", hello->rank,
                                        " (outside 1..", layout_.tp - 1, " or a duplicate)"));
        continue;
      }
      ranks.emplace(hello->rank, std::move(s));
    }
  }
  GangMembership m;
  std::vector<TcpSocket> peers;
  for (auto& [rank, s] : ranks) peers.push_back(std::move(s));
  m.comms.push_back(CreateTcpHub(std::move(peers), comm_options));
  for (int r = 1; r < k; ++r) {
    m.comms.push_back(CreateTcpSpoke(r, layout_.tp, std::move(own[r - 1]), comm_options));
  }
  for (auto& [process, s] : control) {
    m.followers.push_back(
        MakeTcpGangChannel(std::move(s), absl::StrCat("gang follower process ", process)));
  }
  return m;
}

absl::StatusOr<GangMembership> JoinGang(const GangLayout& layout, const std::string& blob,
                                        const std::string& fingerprint, Deadline deadline,
                                        const TcpCommOptions& comm_options) {
  KVSCOPE_ASSIGN_OR_RETURN(const GangRendezvous r, ParseRendezvous(blob));
  auto connect = [&]() -> absl::StatusOr<TcpSocket> {
    absl::StatusOr<TcpSocket> s = ConnectTcp(r.host, r.port, deadline);
    if (!s.ok()) {
      return absl::Status(s.status().code(),
                          absl::StrCat("gang follower: cannot reach the driver: ",
                                       s.status().message(),
                                       " (is rank 0 running, and its --gang-listen-host "
                                       "reachable from here?)"));
    }
    return s;
  };
  KVSCOPE_ASSIGN_OR_RETURN(TcpSocket control, connect());
  KVSCOPE_RETURN_IF_ERROR(
      SendHello(control, {r.token, layout.process, -1, fingerprint}, deadline));
  GangMembership m;
  const int k = layout.ranks_per_process();
  for (int i = 0; i < k; ++i) {
    const int rank = layout.first_rank() + i;
    KVSCOPE_ASSIGN_OR_RETURN(TcpSocket s, connect());
    KVSCOPE_RETURN_IF_ERROR(SendHello(s, {r.token, layout.process, rank, ""}, deadline));
    m.comms.push_back(CreateTcpSpoke(rank, layout.tp, std::move(s), comm_options));
  }
  absl::StatusOr<std::string> frame =
      RecvFrame(control, deadline, "waiting for the gang's driver to welcome this process");
  if (!frame.ok()) {
    return absl::Status(
        frame.status().code(),
        absl::StrCat("gang follower: ", frame.status().message(),
                     " (a wrong token is dropped without an answer: is the rendezvous file "
                     "the one rank 0 of this attempt wrote?)"));
  }
  KVSCOPE_ASSIGN_OR_RETURN(const std::string refusal, DecodeWelcome(*frame));
  if (!refusal.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("gang follower: the driver refused this process: ", refusal));
  }
  m.driver = MakeTcpGangChannel(std::move(control), "the gang's driver");
  return m;
}

}  // namespace kvscope::engine

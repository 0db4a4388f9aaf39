// File: engine/tcp_socket.h
//
// The POSIX TCP plumbing under a gang (engine/tcp_comm_group.h, engine/gang_session.h):
// an owned socket, listen / accept / connect, and whole-buffer sends and receives that wait
// at most until a deadline. Every socket gets TCP_NODELAY and keepalive probes (idle 10 s,
// then every 5 s, 3 misses), so a peer host that vanishes without closing is noticed in
// about 25 s even by a reader with no deadline.
//
// Errors: Unavailable when the peer closed or reset the connection or the socket was shut
// down (TcpSocket::Shutdown, from any thread), DeadlineExceeded when the deadline passed;
// each message says what was being done and with whom (the `what` argument).
//
// Thread-safety: one thread sends or receives on a socket at a time; Shutdown may be called
// from any thread to wake it.
#ifndef KVSCOPE_ENGINE_TCP_SOCKET_H_
#define KVSCOPE_ENGINE_TCP_SOCKET_H_

#include <chrono>
#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvscope::engine {

using Deadline = std::chrono::steady_clock::time_point;
// A deadline `seconds` from now; seconds <= 0 or infinite means never.
Deadline DeadlineIn(double seconds);
inline Deadline NoDeadline() { return Deadline::max(); }

class TcpSocket {
 public:
  TcpSocket() = default;
  explicit TcpSocket(int fd) : fd_(fd) {}
  TcpSocket(TcpSocket&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  TcpSocket& operator=(TcpSocket&& other) noexcept;
  TcpSocket(const TcpSocket&) = delete;
  TcpSocket& operator=(const TcpSocket&) = delete;
  ~TcpSocket();

  bool valid() const { return fd_ >= 0; }
  int fd() const { return fd_; }

  // Writes all of data[0, n) (no SIGPIPE).
  absl::Status SendAll(const void* data, size_t n, Deadline deadline, const std::string& what);
  // Reads exactly n bytes.
  absl::Status RecvAll(void* data, size_t n, Deadline deadline, const std::string& what);
  // Wakes any thread blocked on this socket (its call fails) and makes the peer's reads end.
  // The descriptor stays open until destruction.
  void Shutdown();

 private:
  int fd_ = -1;
};

// A listening socket on `host` (a name or an address; IPv4 or IPv6) and a free port.
struct TcpListener {
  TcpSocket socket;
  int port = 0;
};
absl::StatusOr<TcpListener> ListenTcp(const std::string& host, int backlog);

// Waits until a connection arrives or the deadline passes (DeadlineExceeded).
absl::StatusOr<TcpSocket> AcceptTcp(TcpSocket& listener, Deadline deadline);

// Connects to host:port, retrying refused connections every 0.1 s until the deadline (the
// listener may not be up yet); with NoDeadline, one try of at most 10 s.
absl::StatusOr<TcpSocket> ConnectTcp(const std::string& host, int port, Deadline deadline);

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_TCP_SOCKET_H_

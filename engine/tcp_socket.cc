#include "engine/tcp_socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"

namespace kvscope::engine {
namespace {

std::string Errno(int err) { return std::strerror(err); }

// Milliseconds left until `deadline` for poll(): -1 for none, at most ~1 s so that a
// shutdown from another thread is seen promptly even if poll missed it.
int PollTimeoutMs(Deadline deadline) {
  if (deadline == NoDeadline()) return 1000;
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                        deadline - std::chrono::steady_clock::now())
                        .count();
  if (left <= 0) return 0;
  return static_cast<int>(std::min<int64_t>(left, 1000));
}

bool Passed(Deadline deadline) {
  return deadline != NoDeadline() && std::chrono::steady_clock::now() >= deadline;
}

void ConfigureSocket(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  int idle = 10, interval = 5, count = 3;
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
  const int flags = fcntl(fd, F_GETFL, 0);
  if (flags >= 0) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

struct AddrInfoDeleter {
  void operator()(addrinfo* ai) const { freeaddrinfo(ai); }
};

absl::StatusOr<std::unique_ptr<addrinfo, AddrInfoDeleter>> Resolve(const std::string& host,
                                                                   int port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (passive) hints.ai_flags = AI_PASSIVE;
  addrinfo* result = nullptr;
  const std::string service = std::to_string(port);
  const int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &result);
  if (rc != 0 || result == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("cannot resolve host '", host,
                                                   "': ", gai_strerror(rc),
                                                   " (give a name or address of this machine)"));
  }
  return std::unique_ptr<addrinfo, AddrInfoDeleter>(result);
}

}  // namespace

Deadline DeadlineIn(double seconds) {
  if (!(seconds > 0) || std::isinf(seconds) || seconds > 1e9) return NoDeadline();
  return std::chrono::steady_clock::now() +
         std::chrono::duration_cast<std::chrono::steady_clock::duration>(
             std::chrono::duration<double>(seconds));
}

TcpSocket& TcpSocket::operator=(TcpSocket&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

TcpSocket::~TcpSocket() {
  if (fd_ >= 0) close(fd_);
}

void TcpSocket::Shutdown() {
  if (fd_ >= 0) shutdown(fd_, SHUT_RDWR);
}

absl::Status TcpSocket::SendAll(const void* data, size_t n, Deadline deadline,
                                const std::string& what) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t sent = send(fd_, p, n, MSG_NOSIGNAL);
    if (sent > 0) {
      p += sent;
      n -= static_cast<size_t>(sent);
      continue;
    }
    if (sent < 0 && errno == EINTR) continue;
    if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (Passed(deadline)) {
        return absl::DeadlineExceededError(absl::StrCat(what, ": timed out sending"));
      }
      pollfd pfd{fd_, POLLOUT, 0};
      poll(&pfd, 1, PollTimeoutMs(deadline));
      if (pfd.revents & (POLLERR | POLLHUP | POLLNVAL)) {
        return absl::UnavailableError(absl::StrCat(what, ": connection closed"));
      }
      continue;
    }
    return absl::UnavailableError(
        absl::StrCat(what, ": connection lost (", Errno(sent < 0 ? errno : EPIPE), ")"));
  }
  return absl::OkStatus();
}

absl::Status TcpSocket::RecvAll(void* data, size_t n, Deadline deadline,
                                const std::string& what) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    const ssize_t got = recv(fd_, p, n, 0);
    if (got > 0) {
      p += got;
      n -= static_cast<size_t>(got);
      continue;
    }
    if (got == 0) {
      return absl::UnavailableError(absl::StrCat(what, ": the peer closed the connection"));
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (Passed(deadline)) {
        return absl::DeadlineExceededError(absl::StrCat(what, ": timed out waiting"));
      }
      pollfd pfd{fd_, POLLIN, 0};
      poll(&pfd, 1, PollTimeoutMs(deadline));
      if (pfd.revents & POLLNVAL) {
        return absl::UnavailableError(absl::StrCat(what, ": socket closed"));
      }
      continue;  // POLLIN / POLLHUP / POLLERR: recv reports what happened
    }
    return absl::UnavailableError(absl::StrCat(what, ": connection lost (", Errno(errno), ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<TcpListener> ListenTcp(const std::string& host, int backlog) {
  auto resolved = Resolve(host, 0, /*passive=*/true);
  if (!resolved.ok()) return resolved.status();
  int last_errno = 0;
  for (addrinfo* ai = resolved->get(); ai != nullptr; ai = ai->ai_next) {
    TcpSocket s(socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol));
    if (!s.valid()) {
      last_errno = errno;
      continue;
    }
    int one = 1;
    setsockopt(s.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(s.fd(), ai->ai_addr, ai->ai_addrlen) != 0 || listen(s.fd(), backlog) != 0) {
      last_errno = errno;
      continue;
    }
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    getsockname(s.fd(), reinterpret_cast<sockaddr*>(&addr), &len);
    const int port = addr.ss_family == AF_INET6
                         ? ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port)
                         : ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
    const int flags = fcntl(s.fd(), F_GETFL, 0);
    if (flags >= 0) fcntl(s.fd(), F_SETFL, flags | O_NONBLOCK);
    return TcpListener{std::move(s), port};
  }
  return absl::UnavailableError(absl::StrCat("cannot listen on ", host, ": ", Errno(last_errno),
                                             " (is it an address of this machine?)"));
}

absl::StatusOr<TcpSocket> AcceptTcp(TcpSocket& listener, Deadline deadline) {
  while (true) {
    const int fd = accept4(listener.fd(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) {
      ConfigureSocket(fd);
      return TcpSocket(fd);
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
      return absl::UnavailableError(absl::StrCat("accept failed: ", Errno(errno)));
    }
    if (Passed(deadline)) return absl::DeadlineExceededError("no connection before the deadline");
    pollfd pfd{listener.fd(), POLLIN, 0};
    poll(&pfd, 1, PollTimeoutMs(deadline));
  }
}

absl::StatusOr<TcpSocket> ConnectTcp(const std::string& host, int port, Deadline deadline) {
  auto resolved = Resolve(host, port, /*passive=*/false);
  if (!resolved.ok()) return resolved.status();
  std::string last_error = "no address";
  while (true) {
    for (addrinfo* ai = resolved->get(); ai != nullptr; ai = ai->ai_next) {
      // Non-blocking connect, waited for until the deadline (at most 10 s per try).
      TcpSocket s(socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol));
      if (!s.valid()) {
        last_error = Errno(errno);
        continue;
      }
      ConfigureSocket(s.fd());
      if (connect(s.fd(), ai->ai_addr, ai->ai_addrlen) == 0) return s;
      if (errno == EINPROGRESS) {
        const Deadline try_deadline =
            std::min(deadline, std::chrono::steady_clock::now() + std::chrono::seconds(10));
        int err = ETIMEDOUT;
        while (true) {
          pollfd pfd{s.fd(), POLLOUT, 0};
          if (poll(&pfd, 1, PollTimeoutMs(try_deadline)) > 0) {
            socklen_t len = sizeof(err);
            getsockopt(s.fd(), SOL_SOCKET, SO_ERROR, &err, &len);
            break;
          }
          if (Passed(try_deadline)) break;
        }
        if (err == 0) return s;
        errno = err;
      }
      last_error = Errno(errno);
    }
    if (Passed(deadline) || deadline == NoDeadline()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return absl::UnavailableError(absl::StrCat("cannot connect to ", host, ":", port, ": ",
                                             last_error));
}

}  // namespace kvscope::engine

#include "engine/tcp_comm_group.h"

#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvscope::engine {
namespace {

// Precedes every collective's payload in both directions.
struct CollectiveHeader {
  uint64_t sequence = 0;  // collectives this rank has started, from 1
  int64_t n = 0;          // floats that follow
};

absl::Status AbortedError() {
  return absl::AbortedError(
      "tensor-parallel group aborted: a rank failed or a gang member went away");
}

// State shared by the hub and the spokes: the connections, the abort flag.
class TcpCommunicator : public Communicator {
 public:
  TcpCommunicator(int rank, int size, std::vector<TcpSocket> sockets,
                  const TcpCommOptions& options)
      : rank_(rank), size_(size), sockets_(std::move(sockets)), options_(options) {}

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void Abort() override {
    std::lock_guard<std::mutex> lock(abort_mu_);
    aborted_.store(true);
    for (TcpSocket& s : sockets_) s.Shutdown();
  }

 protected:
  // Runs one collective; on any failure aborts (waking the other ranks) and returns it.
  template <typename Fn>
  absl::Status Guarded(Fn&& body) {
    if (aborted_.load()) return AbortedError();
    ++sequence_;
    absl::Status status = body();
    if (!status.ok()) {
      const bool was_aborted = aborted_.load();
      Abort();
      if (was_aborted) return AbortedError();
      return absl::Status(status.code(),
                          absl::StrCat("tensor-parallel all-reduce on rank ", rank_, " of ",
                                       size_, ": ", status.message()));
    }
    return absl::OkStatus();
  }

  Deadline CollectiveDeadline() const { return DeadlineIn(options_.timeout_s); }

  const int rank_;
  const int size_;
  std::vector<TcpSocket> sockets_;
  const TcpCommOptions options_;
  uint64_t sequence_ = 0;
  std::atomic<bool> aborted_{false};
  std::mutex abort_mu_;
};

class TcpHub final : public TcpCommunicator {
 public:
  // `size` = peers.size() + 1, passed apart: the argument moved from `peers` may be built
  // before a peers.size() beside it is evaluated.
  TcpHub(int size, std::vector<TcpSocket> peers, const TcpCommOptions& options)
      : TcpCommunicator(0, size, std::move(peers), options), received_(sockets_.size()) {}

  absl::Status AllReduceSum(float* data, int64_t n) override {
    if (size_ == 1) return absl::OkStatus();
    return Guarded([&]() -> absl::Status {
      const Deadline deadline = CollectiveDeadline();
      for (size_t i = 0; i < sockets_.size(); ++i) {
        const int peer = static_cast<int>(i) + 1;
        const std::string what = absl::StrCat("receiving from rank ", peer);
        CollectiveHeader h;
        KVSCOPE_RETURN_IF_ERROR(sockets_[i].RecvAll(&h, sizeof(h), deadline, what));
        if (h.sequence != sequence_ || h.n != n) {
          return absl::InternalError(absl::StrCat(
              "rank ", peer, " is at collective ", h.sequence, " with ", h.n,
              " floats, the hub at collective ", sequence_, " with ", n,
              " (the ranks ran different steps)"));
        }
        received_[i].resize(static_cast<size_t>(n));
        KVSCOPE_RETURN_IF_ERROR(
            sockets_[i].RecvAll(received_[i].data(), n * sizeof(float), deadline, what));
      }
      // Rank order from 0.0f, as LocalCommGroup sums (bitwise identical results).
      for (int64_t j = 0; j < n; ++j) {
        float sum = 0.0f;
        sum += data[j];
        for (const std::vector<float>& x : received_) sum += x[j];
        data[j] = sum;
      }
      const CollectiveHeader reply{sequence_, n};
      for (size_t i = 0; i < sockets_.size(); ++i) {
        const std::string what = absl::StrCat("sending the sum to rank ", i + 1);
        KVSCOPE_RETURN_IF_ERROR(sockets_[i].SendAll(&reply, sizeof(reply), deadline, what));
        KVSCOPE_RETURN_IF_ERROR(sockets_[i].SendAll(data, n * sizeof(float), deadline, what));
      }
      return absl::OkStatus();
    });
  }

 private:
  std::vector<std::vector<float>> received_;  // per peer, reused across calls
};

class TcpSpoke final : public TcpCommunicator {
 public:
  TcpSpoke(int rank, int size, TcpSocket hub, const TcpCommOptions& options)
      : TcpCommunicator(rank, size, MakeVector(std::move(hub)), options) {}

  absl::Status AllReduceSum(float* data, int64_t n) override {
    return Guarded([&]() -> absl::Status {
      const Deadline deadline = CollectiveDeadline();
      TcpSocket& hub = sockets_[0];
      const CollectiveHeader h{sequence_, n};
      KVSCOPE_RETURN_IF_ERROR(hub.SendAll(&h, sizeof(h), deadline, "sending to rank 0"));
      KVSCOPE_RETURN_IF_ERROR(hub.SendAll(data, n * sizeof(float), deadline, "sending to rank 0"));
      CollectiveHeader reply;
      KVSCOPE_RETURN_IF_ERROR(
          hub.RecvAll(&reply, sizeof(reply), deadline, "waiting for the sum from rank 0"));
      if (reply.sequence != sequence_ || reply.n != n) {
        return absl::InternalError(absl::StrCat("rank 0 answered collective ", reply.sequence,
                                                " with ", reply.n, " floats, expected ",
                                                sequence_, " with ", n));
      }
      return hub.RecvAll(data, n * sizeof(float), deadline, "waiting for the sum from rank 0");
    });
  }

 private:
  static std::vector<TcpSocket> MakeVector(TcpSocket s) {
    std::vector<TcpSocket> v;
    v.push_back(std::move(s));
    return v;
  }
};

}  // namespace

std::unique_ptr<Communicator> CreateTcpHub(std::vector<TcpSocket> peers,
                                           const TcpCommOptions& options) {
  const int size = static_cast<int>(peers.size()) + 1;
  return std::make_unique<TcpHub>(size, std::move(peers), options);
}

std::unique_ptr<Communicator> CreateTcpSpoke(int rank, int size, TcpSocket hub,
                                             const TcpCommOptions& options) {
  return std::make_unique<TcpSpoke>(rank, size, std::move(hub), options);
}

absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> CreateLoopbackTcpGroup(
    int size, const TcpCommOptions& options) {
  if (size < 1) return absl::InvalidArgumentError("a group needs at least one rank");
  KVSCOPE_ASSIGN_OR_RETURN(TcpListener listener, ListenTcp("127.0.0.1", size));
  const Deadline deadline = DeadlineIn(10);
  std::vector<TcpSocket> spokes, hub_side;
  for (int r = 1; r < size; ++r) {
    // Connect, then accept: the kernel completes the handshake from the backlog, so the
    // accepted socket r-1 is the one rank r connected.
    KVSCOPE_ASSIGN_OR_RETURN(TcpSocket s, ConnectTcp("127.0.0.1", listener.port, deadline));
    KVSCOPE_ASSIGN_OR_RETURN(TcpSocket a, AcceptTcp(listener.socket, deadline));
    spokes.push_back(std::move(s));
    hub_side.push_back(std::move(a));
  }
  std::vector<std::unique_ptr<Communicator>> comms;
  comms.push_back(CreateTcpHub(std::move(hub_side), options));
  for (int r = 1; r < size; ++r) {
    comms.push_back(CreateTcpSpoke(r, size, std::move(spokes[r - 1]), options));
  }
  return comms;
}

}  // namespace kvscope::engine

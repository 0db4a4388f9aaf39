// File: engine/tcp_comm_group.h
//
// Communicators over TCP for a tensor-parallel group whose ranks live in several processes
// (a gang, engine/gang_session.h). Star topology: rank 0 is the hub and holds one
// connection per other rank; every other rank holds one connection to the hub (ranks of the
// hub's own process connect over loopback like the rest).
//
// AllReduceSum(data, n), per call:
//   rank r > 0   sends {sequence number, n, data[0, n)} to the hub, then receives the sum;
//   hub          receives every rank's data (checking that sequence number and n agree),
//                sums element-wise in rank order starting from 0.0f
//                (((0 + x0) + x1) + ... + x_{size-1}), exactly as LocalCommGroup does, so the
//                result is bitwise identical to a single-process run, and sends it back.
// Failures never hang: a closed or reset connection, a protocol mismatch or a wait longer
// than TcpCommOptions::timeout_s fails the call; the failing communicator then shuts down
// its connections, so every other rank blocked in the collective fails too (the hub shuts
// down all of its connections on any error). Abort() does the same from any thread. After a
// failure every further call fails (Aborted).
//
// Thread-safety: one thread per communicator, except Abort().
#ifndef KVSCOPE_ENGINE_TCP_COMM_GROUP_H_
#define KVSCOPE_ENGINE_TCP_COMM_GROUP_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/communicator.h"
#include "engine/tcp_socket.h"

namespace kvscope::engine {

struct TcpCommOptions {
  // Longest wait for a peer inside one collective (the ranks run in lockstep, so only a
  // stuck or vanished peer makes a collective this slow).
  double timeout_s = 300;
};

// Rank 0 of `peers.size() + 1` ranks; peers[i] is connected to rank i + 1.
std::unique_ptr<Communicator> CreateTcpHub(std::vector<TcpSocket> peers,
                                           const TcpCommOptions& options);
// Rank `rank` (> 0) of `size`, connected to the hub.
std::unique_ptr<Communicator> CreateTcpSpoke(int rank, int size, TcpSocket hub,
                                             const TcpCommOptions& options);

// All `size` ranks of a group in this process, connected over loopback (tests, and a
// reference for the wiring gang_session.h does across processes). communicators[r] is rank r.
absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> CreateLoopbackTcpGroup(
    int size, const TcpCommOptions& options);

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_TCP_COMM_GROUP_H_

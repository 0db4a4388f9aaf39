// File: engine/gang_session.h
//
// How the processes of a gang find each other over TCP (docs/cluster.md "Multi-node
// trials"; the worker daemon passes the rendezvous blob between machines).
//
//   driver (process 0)   GangDriverSession::Listen binds host:0 and writes the blob
//                        "tcp://HOST:PORT/TOKEN" (TOKEN: 32 random hex digits) to the
//                        rendezvous file atomically (FILE.tmp, then rename). Gather then
//                        accepts, until a deadline, one control connection per follower
//                        process and one connection per rank outside rank 0 (its own ranks
//                        connect over loopback too), and builds rank 0's hub communicator
//                        (engine/tcp_comm_group.h).
//   follower (p > 0)     JoinGang reads the blob, connects its control channel and one
//                        connection per local rank, and waits for the driver's welcome.
// Every connection starts with a hello frame carrying the token; a connection with another
// token (or none) is dropped. A follower whose configuration fingerprint differs from the
// driver's is refused with the reason (it then exits with it). Frames on a connection are
// [u32 length][frame] (engine/gang_messages.h), at most 1 GiB.
#ifndef KVSCOPE_ENGINE_GANG_SESSION_H_
#define KVSCOPE_ENGINE_GANG_SESSION_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/communicator.h"
#include "engine/gang_channel.h"
#include "engine/tcp_comm_group.h"
#include "engine/tcp_socket.h"

namespace kvscope::engine {

// Where the processes of a gang sit in the tensor-parallel group.
struct GangLayout {
  int process = 0;  // this process's gang rank, 0 = the driver
  int nodes = 1;    // processes
  int tp = 1;       // ranks over all processes; nodes divides it
  int ranks_per_process() const { return tp / nodes; }
  int first_rank() const { return process * ranks_per_process(); }
};

struct GangRendezvous {
  std::string host;
  int port = 0;
  std::string token;  // 32 lowercase hex digits
};
std::string FormatRendezvous(const GangRendezvous& r);
// InvalidArgument naming what is wrong with the blob.
absl::StatusOr<GangRendezvous> ParseRendezvous(const std::string& blob);
// Writes `path`.tmp, then renames it to `path`.
absl::Status WriteFileAtomically(const std::string& path, const std::string& text);

// What a process of the gang holds once everyone has joined.
struct GangMembership {
  std::vector<std::unique_ptr<Communicator>> comms;       // local ranks, in rank order
  std::vector<std::unique_ptr<GangChannel>> followers;    // driver: process 1.. in order
  std::unique_ptr<GangChannel> driver;                    // follower: the control channel
};

// A control channel over a connected socket.
std::unique_ptr<GangChannel> MakeTcpGangChannel(TcpSocket socket, const std::string& peer);

class GangDriverSession {
 public:
  // Binds `host` (port 0) and writes the blob to `rendezvous_file`.
  static absl::StatusOr<std::unique_ptr<GangDriverSession>> Listen(
      const GangLayout& layout, const std::string& host, const std::string& rendezvous_file);
  const std::string& blob() const { return blob_; }

  // Waits until every follower process (with `fingerprint`) and every rank has connected,
  // at most until `deadline`: DeadlineExceeded then, naming how many processes and ranks
  // joined and why any was refused.
  absl::StatusOr<GangMembership> Gather(const std::string& fingerprint, Deadline deadline,
                                        const TcpCommOptions& comm_options);

 private:
  GangDriverSession() = default;
  GangLayout layout_;
  GangRendezvous rendezvous_;
  std::string blob_;
  TcpListener listener_;
};

// Joins the gang whose driver published `blob`, as process layout.process (> 0).
absl::StatusOr<GangMembership> JoinGang(const GangLayout& layout, const std::string& blob,
                                        const std::string& fingerprint, Deadline deadline,
                                        const TcpCommOptions& comm_options);

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_GANG_SESSION_H_

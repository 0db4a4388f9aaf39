// File: engine/gang_messages.h
//
// What the driver of a gang (the process of rank 0) and its followers say to each other on
// the control channel (engine/gang_channel.h), as plain structs and their byte encoding.
// Transport-free, so the encoding is unit-tested on its own.
//
//   driver -> follower   kStep     the KV manager calls since the last step (KvOp, replayed
//                                  on the follower's replica manager) and the step's batch
//                        kRelease  Engine::Release(seq_id)
//                        kDone     the run is over: exit 0
//                        kWelcome  answer to a hello: empty = accepted, else why refused
//   any -> driver        kHello    (first frame of every connection) token, process index,
//                                  rank or -1 for the control channel, config fingerprint
//   follower -> driver   kStepAck  the step's status on the follower's ranks
// backend: cuda only, once after joining and before the first step (gang_data_plane.h):
//   follower -> driver   kGpuDevices  the GPU identity of each of the follower's ranks
//   driver -> follower   kDataPlane   how the ranks' collectives run: "host-staged" (over
//                                     the gang's TCP communicators) or "nccl" with the
//                                     group's NCCL unique id
//
// Encoding: one frame per message, [u8 type][fields...], integers little-endian fixed
// width, strings and arrays length-prefixed (u32 / u64). Decoding checks every length
// against the bytes left (InvalidArgument "gang message: ..." for a malformed frame), so a
// corrupt or hostile frame cannot make the reader overrun.
#ifndef KVSCOPE_ENGINE_GANG_MESSAGES_H_
#define KVSCOPE_ENGINE_GANG_MESSAGES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/model.h"
#include "kvcache/kv_cache.h"

namespace kvscope::engine {

enum class GangMessageType : uint8_t {
  kHello = 1,
  kWelcome = 2,
  kStep = 3,
  kStepAck = 4,
  kRelease = 5,
  kDone = 6,
  kGpuDevices = 7,
  kDataPlane = 8,
};

// One mutating KvManager call as the driver made it, with its outcome (the replica must
// reach the same outcome; engine/recording_kv_manager.h).
struct KvOp {
  enum class Kind : uint8_t {
    kAdmit = 1,    // a = seq_id, tokens, max_new_tokens; result = cached prefix tokens
    kAppend = 2,   // a = seq_id, tokens; result = 1 if appended
    kFree = 3,     // a = seq_id
    kSwapOut = 4,  // a = seq_id; result = 1 if swapped out
    kSwapIn = 5,   // a = seq_id
    kFork = 6,     // a = parent, b = child
    kPlan = 7,     // steps
  };
  Kind kind = Kind::kFree;
  int64_t a = 0;
  int64_t b = 0;
  int32_t max_new_tokens = 0;
  std::vector<int32_t> tokens;
  std::vector<kvcache::SeqStep> steps;
  bool ok = true;      // the call succeeded (Status OK)
  int64_t result = 0;  // see kind
  bool operator==(const KvOp& o) const;
};

// A step's batch with its token storage (SeqInput only views tokens).
struct OwnedBatch {
  struct Seq {
    int64_t seq_id = 0;
    std::vector<int32_t> tokens;
    int32_t start_position = 0;
    bool all_logits = false;
  };
  std::vector<Seq> seqs;

  static OwnedBatch From(absl::Span<const SeqInput> batch);
  // Views into this batch; valid while it lives unchanged.
  std::vector<SeqInput> Inputs() const;
};

struct GangHello {
  std::string token;        // the rendezvous token
  int32_t process = 0;      // the sender's gang rank (process index)
  int32_t rank = -1;        // -1: the control channel; else the tensor-parallel rank whose
                            // communicator this connection carries
  std::string fingerprint;  // what the follower will run (engine/gang_session.h)
};

// The data plane of a GPU gang, as the driver decides it (engine/gang_data_plane.h).
struct GangDataPlaneMessage {
  std::string kind;            // "host-staged" or "nccl"
  std::string nccl_unique_id;  // "nccl": the group's id (opaque bytes); else empty
};

struct GangStepAck {
  absl::StatusCode code = absl::StatusCode::kOk;
  std::string message;
  absl::Status ToStatus() const { return absl::Status(code, message); }
};

std::string EncodeHello(const GangHello& hello);
std::string EncodeWelcome(const std::string& refusal);  // "" = accepted
std::string EncodeStep(absl::Span<const KvOp> ops, absl::Span<const SeqInput> batch);
std::string EncodeStepAck(const absl::Status& status);
std::string EncodeRelease(int64_t seq_id);
std::string EncodeDone();
std::string EncodeGpuDevices(const std::vector<std::string>& devices);
std::string EncodeDataPlane(const GangDataPlaneMessage& plane);

// The type of a frame (InvalidArgument if empty or unknown).
absl::StatusOr<GangMessageType> PeekType(const std::string& frame);

absl::StatusOr<GangHello> DecodeHello(const std::string& frame);
absl::StatusOr<std::string> DecodeWelcome(const std::string& frame);
absl::Status DecodeStep(const std::string& frame, std::vector<KvOp>* ops, OwnedBatch* batch);
absl::StatusOr<GangStepAck> DecodeStepAck(const std::string& frame);
absl::StatusOr<int64_t> DecodeRelease(const std::string& frame);
absl::StatusOr<std::vector<std::string>> DecodeGpuDevices(const std::string& frame);
absl::StatusOr<GangDataPlaneMessage> DecodeDataPlane(const std::string& frame);

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_GANG_MESSAGES_H_

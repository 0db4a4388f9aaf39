// File: engine/gang_channel.h
//
// The control channel between a gang's driver and one follower process: whole messages
// (engine/gang_messages.h frames), in order, both ways. gang_session.h implements it over
// TCP; tests use an in-memory pair.
//
// Thread-safety: one sender and one receiver at a time.
#ifndef KVSCOPE_ENGINE_GANG_CHANNEL_H_
#define KVSCOPE_ENGINE_GANG_CHANNEL_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvscope::engine {

class GangChannel {
 public:
  virtual ~GangChannel() = default;
  // Sends one frame; Unavailable when the other side is gone.
  virtual absl::Status Send(const std::string& frame) = 0;
  // The next frame. Waits at most `timeout_s` (<= 0: no limit; DeadlineExceeded after it);
  // Unavailable when the other side is gone.
  virtual absl::StatusOr<std::string> Receive(double timeout_s) = 0;
};

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_GANG_CHANNEL_H_

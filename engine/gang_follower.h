// File: engine/gang_follower.h
//
// A follower process of a gang (engine/gang_driver.h): executes what the driver sends over
// the control channel on this process's ranks until the driver says done.
//
//   kStep     replay the driver's KV manager calls on `replica` (recording_kv_manager.h),
//             mirror the block transfers of the last plan replayed (engine.ApplyPlan),
//             run engine.Forward on the batch (the ranks join the driver's collectives),
//             answer kStepAck with the outcome
//   kRelease  engine.Release
//   kDone     return OK
// Any failure ends the loop with an error: the step's ack carries it to the driver first,
// and the engine's collectives are aborted so that no rank elsewhere waits for this one. A
// lost channel, or a step whose collectives broke because another process ended, returns
// an error saying that the driver (or another member) went away.
#ifndef KVSCOPE_ENGINE_GANG_FOLLOWER_H_
#define KVSCOPE_ENGINE_GANG_FOLLOWER_H_

#include <cstdint>

#include "absl/status/status.h"
#include "engine/gang_channel.h"
#include "engine/gang_engine.h"
#include "kvcache/kv_manager.h"

namespace kvscope::engine {

struct GangFollowerStats {
  int64_t steps = 0;
  int64_t releases = 0;
};

// `engine` (the CPU or the GPU engine) has its rank caches from `replica`. `stats`
// (optional) counts what ran.
absl::Status RunGangFollower(GangChannel& driver, kvcache::KvManager& replica,
                             GangEngine& engine, GangFollowerStats* stats);

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_GANG_FOLLOWER_H_

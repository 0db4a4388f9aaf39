// File: engine/gang_data_plane.h
//
// How the ranks of a GPU gang (backend: cuda, nodes > 1) reduce across processes, agreed
// once after the gang has joined (engine/gang_session.h) and before the first step:
//
//   follower -> driver   kGpuDevices: the GPU identity of each of its local ranks
//   driver               decides with its own ranks' identities (ChooseGangDataPlane);
//                        for NCCL it makes the group's unique id
//   driver -> follower   kDataPlane: the decision and the id
//
// NCCL needs one GPU per rank (it refuses two ranks on one device); otherwise, for example
// tp=2 nodes=2 as two processes on one GPU, each rank's collectives are host-staged over
// the gang's TCP communicators (engine/tcp_comm_group.h). The same rule as the single
// process GPU engine. Device-free: the GPU identities and the id come from the caller.
#ifndef KVSCOPE_ENGINE_GANG_DATA_PLANE_H_
#define KVSCOPE_ENGINE_GANG_DATA_PLANE_H_

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/gang_channel.h"

namespace kvscope::engine {

enum class GangDataPlane { kHostStaged, kNccl };

// "host-staged" or "nccl" (the DeviceCommunicator kinds).
std::string_view GangDataPlaneName(GangDataPlane plane);

// kNccl when every rank has a GPU of its own: `rank_gpus` (one identity per rank of the
// whole group, e.g. the device UUID) has no empty entry and no two equal; kHostStaged
// otherwise (an empty list included).
GangDataPlane ChooseGangDataPlane(absl::Span<const std::string> rank_gpus);

struct GangDataPlaneChoice {
  GangDataPlane plane = GangDataPlane::kHostStaged;
  std::string nccl_unique_id;  // kNccl only
};

// The driver's side. `followers[i]` is process i + 1 with `ranks_per_process` ranks, as is
// this process (own_gpus: its ranks' identities, in rank order). Waits at most `timeout_s`
// for each follower's identities; `new_nccl_id` makes the id when NCCL is chosen. Errors
// name the follower: Unavailable (gone), DeadlineExceeded (silent), InvalidArgument (a
// malformed message or the wrong number of identities).
absl::StatusOr<GangDataPlaneChoice> NegotiateGangDataPlane(
    absl::Span<const std::unique_ptr<GangChannel>> followers,
    const std::vector<std::string>& own_gpus, int ranks_per_process,
    const std::function<absl::StatusOr<std::string>()>& new_nccl_id, double timeout_s);

// A follower's side: sends its ranks' identities and waits (at most `timeout_s`) for the
// driver's decision. InvalidArgument for an unknown kind or an NCCL decision without an id.
absl::StatusOr<GangDataPlaneChoice> JoinGangDataPlane(GangChannel& driver,
                                                      const std::vector<std::string>& own_gpus,
                                                      double timeout_s);

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_GANG_DATA_PLANE_H_

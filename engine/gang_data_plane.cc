#include "engine/gang_data_plane.h"

#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/gang_messages.h"

namespace kvscope::engine {

std::string_view GangDataPlaneName(GangDataPlane plane) {
  return plane == GangDataPlane::kNccl ? "nccl" : "host-staged";
}

GangDataPlane ChooseGangDataPlane(absl::Span<const std::string> rank_gpus) {
  if (rank_gpus.empty()) return GangDataPlane::kHostStaged;
  std::set<std::string> seen;
  for (const std::string& gpu : rank_gpus) {
    if (gpu.empty() || !seen.insert(gpu).second) return GangDataPlane::kHostStaged;
  }
  return GangDataPlane::kNccl;
}

absl::StatusOr<GangDataPlaneChoice> NegotiateGangDataPlane(
    absl::Span<const std::unique_ptr<GangChannel>> followers,
    const std::vector<std::string>& own_gpus, int ranks_per_process,
    const std::function<absl::StatusOr<std::string>()>& new_nccl_id, double timeout_s) {
  std::vector<std::string> all = own_gpus;
  for (size_t i = 0; i < followers.size(); ++i) {
    const std::string who = absl::StrCat("gang follower process ", i + 1);
    absl::StatusOr<std::string> frame = followers[i]->Receive(timeout_s);
    if (!frame.ok()) {
      return absl::Status(frame.status().code(),
                          absl::StrCat(who, " did not report its GPUs: ", frame.status().message()));
    }
    absl::StatusOr<std::vector<std::string>> gpus = DecodeGpuDevices(*frame);
    if (!gpus.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          who, ": ", gpus.status().message(),
          " (is it a cpu-backend process? driver and followers must run the same config)"));
    }
    if (static_cast<int>(gpus->size()) != ranks_per_process) {
      return absl::InvalidArgumentError(absl::StrCat(who, " reported ", gpus->size(),
                                                     " GPU ranks, expected ", ranks_per_process));
    }
    all.insert(all.end(), gpus->begin(), gpus->end());
  }
  GangDataPlaneChoice choice;
  choice.plane = ChooseGangDataPlane(all);
  if (choice.plane == GangDataPlane::kNccl) {
    KVSCOPE_ASSIGN_OR_RETURN(choice.nccl_unique_id, new_nccl_id());
  }
  const std::string frame = EncodeDataPlane(
      {std::string(GangDataPlaneName(choice.plane)), choice.nccl_unique_id});
  for (size_t i = 0; i < followers.size(); ++i) {
    const absl::Status sent = followers[i]->Send(frame);
    if (!sent.ok()) {
      return absl::UnavailableError(absl::StrCat("gang follower process ", i + 1,
                                                 " went away before the first step: ",
                                                 sent.message()));
    }
  }
  return choice;
}

absl::StatusOr<GangDataPlaneChoice> JoinGangDataPlane(GangChannel& driver,
                                                      const std::vector<std::string>& own_gpus,
                                                      double timeout_s) {
  const absl::Status sent = driver.Send(EncodeGpuDevices(own_gpus));
  if (!sent.ok()) {
    return absl::UnavailableError(
        absl::StrCat("the gang's driver (rank 0's process) went away: ", sent.message()));
  }
  absl::StatusOr<std::string> frame = driver.Receive(timeout_s);
  if (!frame.ok()) {
    return absl::Status(frame.status().code(),
                        absl::StrCat("waiting for the gang driver's data plane: ",
                                     frame.status().message()));
  }
  KVSCOPE_ASSIGN_OR_RETURN(const GangDataPlaneMessage plane, DecodeDataPlane(*frame));
  GangDataPlaneChoice choice;
  if (plane.kind == GangDataPlaneName(GangDataPlane::kNccl)) {
    if (plane.nccl_unique_id.empty()) {
      return absl::InvalidArgumentError("gang driver chose nccl but sent no NCCL unique id");
    }
    choice.plane = GangDataPlane::kNccl;
    choice.nccl_unique_id = plane.nccl_unique_id;
  } else if (plane.kind != GangDataPlaneName(GangDataPlane::kHostStaged)) {
    return absl::InvalidArgumentError(
        absl::StrCat("gang driver sent an unknown data plane '", plane.kind, "'"));
  }
  return choice;
}

}  // namespace kvscope::engine

#include "engine/gang_follower.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/gang_messages.h"
#include "engine/recording_kv_manager.h"

namespace kvscope::engine {
namespace {

// Runs one kStep frame on this process's ranks.
absl::Status RunStep(const std::string& frame, kvcache::KvManager& replica,
                     GangEngine& engine) {
  std::vector<KvOp> ops;
  OwnedBatch batch;
  const kvcache::StepPlan* plan = nullptr;
  absl::Status status = DecodeStep(frame, &ops, &batch);
  if (status.ok()) status = ReplayKvOps(ops, replica, &plan);
  if (status.ok() && plan != nullptr) status = engine.ApplyPlan(*plan);
  if (status.ok()) status = engine.Forward(batch.Inputs()).status();
  return status;
}

}  // namespace

absl::Status RunGangFollower(GangChannel& driver, kvcache::KvManager& replica,
                             GangEngine& engine, GangFollowerStats* stats) {
  GangFollowerStats local;
  if (stats == nullptr) stats = &local;
  while (true) {
    absl::StatusOr<std::string> frame = driver.Receive(/*timeout_s=*/0);
    if (!frame.ok()) {
      engine.AbortCollectives();
      return absl::UnavailableError(absl::StrCat(
          "the gang's driver (rank 0's process) went away after ", stats->steps,
          " steps: ", frame.status().message()));
    }
    absl::StatusOr<GangMessageType> type = PeekType(*frame);
    if (!type.ok()) {
      engine.AbortCollectives();
      return type.status();
    }
    switch (*type) {
      case GangMessageType::kStep: {
        absl::Status status = RunStep(*frame, replica, engine);
        const absl::Status sent = driver.Send(EncodeStepAck(status));
        if (!status.ok()) {
          engine.AbortCollectives();
          if (absl::IsUnavailable(status) || absl::IsAborted(status)) {
            // A broken collective: another process ended first.
            status = absl::Status(
                status.code(),
                absl::StrCat("step ", stats->steps + 1, " failed because the gang's driver or "
                             "another member went away or failed: ", status.message()));
          }
          return status;
        }
        if (!sent.ok()) {
          engine.AbortCollectives();
          return absl::UnavailableError(
              absl::StrCat("the gang's driver (rank 0's process) went away: ", sent.message()));
        }
        ++stats->steps;
        break;
      }
      case GangMessageType::kRelease: {
        absl::StatusOr<int64_t> id = DecodeRelease(*frame);
        if (!id.ok()) {
          engine.AbortCollectives();
          return id.status();
        }
        engine.Release(*id);
        ++stats->releases;
        break;
      }
      case GangMessageType::kDone:
        return absl::OkStatus();
      default:
        engine.AbortCollectives();
        return absl::InvalidArgumentError(absl::StrCat(
            "gang: unexpected message type ", static_cast<int>(*type), " from the driver"));
    }
  }
}

}  // namespace kvscope::engine

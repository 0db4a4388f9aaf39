#include "engine/gang_driver.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/gang_messages.h"

namespace kvscope::engine {
namespace {

// The trace another rank's failure leaves in a collective.
bool IsEcho(const absl::Status& status) {
  return absl::IsAborted(status) || absl::IsUnavailable(status);
}

}  // namespace

GangDriver::GangDriver(GangEngine* engine, RecordingKvManager* kv,
                       std::vector<std::unique_ptr<GangChannel>> followers,
                       const GangDriverOptions& options)
    : engine_(engine), kv_(kv), followers_(std::move(followers)), options_(options) {}

std::string GangDriver::Describe(size_t follower) const {
  const int k = engine_->local_ranks();
  const int first = static_cast<int>(follower + 1) * k;
  return absl::StrCat("follower process ", follower + 1, " (rank", k > 1 ? "s " : " ", first,
                      k > 1 ? absl::StrCat("-", first + k - 1) : "", ")");
}

absl::Status GangDriver::Fail(absl::Status status) {
  failed_ = true;
  engine_->AbortCollectives();
  return status;
}

absl::StatusOr<ForwardOutput> GangDriver::Forward(absl::Span<const SeqInput> batch,
                                                  const kvcache::StepPlan* plan) {
  if (failed_) {
    return absl::FailedPreconditionError(
        "gang stopped after an earlier failure; the run cannot continue");
  }
  // A bad batch is refused here, before any process starts the step.
  KVSCOPE_RETURN_IF_ERROR(ValidateSeqInputs(engine_->config(), batch));
  const std::string frame = EncodeStep(kv_->TakeOps(), batch);
  for (size_t i = 0; i < followers_.size(); ++i) {
    const absl::Status sent = followers_[i]->Send(frame);
    if (!sent.ok()) {
      return Fail(absl::UnavailableError(
          absl::StrCat("gang: ", Describe(i), " went away: ", sent.message())));
    }
  }
  absl::StatusOr<ForwardOutput> out = absl::UnknownError("step not run");
  const absl::Status applied = plan != nullptr ? engine_->ApplyPlan(*plan) : absl::OkStatus();
  if (applied.ok()) {
    out = engine_->Forward(batch);
  } else {
    // The followers' ranks are (or will be) waiting in the step's first collective.
    engine_->AbortCollectives();
    out = applied;
  }
  // Every follower answers the step, also when it failed. One failure shows up everywhere
  // (the others' collectives end as aborted or closed), so report the most telling one:
  // a follower gone silent, then a real error (neither aborted nor unavailable) here, then
  // one on a follower, then the echoes.
  absl::Status best = out.status();
  int best_rank = out.ok() ? 0 : (IsEcho(out.status()) ? 2 : 4);
  for (size_t i = 0; i < followers_.size(); ++i) {
    absl::StatusOr<std::string> reply = followers_[i]->Receive(options_.ack_timeout_s);
    absl::Status status;
    int rank = 0;
    if (!reply.ok()) {
      status = absl::UnavailableError(absl::StrCat(
          "gang: ", Describe(i), " went away during a step: ", reply.status().message()));
      rank = 5;
    } else {
      absl::StatusOr<GangStepAck> ack = DecodeStepAck(*reply);
      status = ack.ok() ? ack->ToStatus() : ack.status();
      if (!status.ok()) {
        status = absl::Status(status.code(),
                              absl::StrCat("gang: ", Describe(i), ": ", status.message()));
        rank = IsEcho(status) ? 1 : 3;
      }
    }
    if (rank > best_rank) {
      best = status;
      best_rank = rank;
    }
  }
  if (best_rank == 0) return out;
  return Fail(best);
}

absl::Status GangDriver::Release(int64_t seq_id) {
  if (failed_) return absl::FailedPreconditionError("gang stopped after an earlier failure");
  const std::string frame = EncodeRelease(seq_id);
  for (size_t i = 0; i < followers_.size(); ++i) {
    const absl::Status sent = followers_[i]->Send(frame);
    if (!sent.ok()) {
      return Fail(absl::UnavailableError(
          absl::StrCat("gang: ", Describe(i), " went away: ", sent.message())));
    }
  }
  engine_->Release(seq_id);
  return absl::OkStatus();
}

absl::Status GangDriver::Finish() {
  absl::Status first;
  const std::string frame = EncodeDone();
  for (size_t i = 0; i < followers_.size(); ++i) {
    const absl::Status sent = followers_[i]->Send(frame);
    if (!sent.ok() && first.ok()) {
      first = absl::UnavailableError(
          absl::StrCat("gang: ", Describe(i), " went away before the end: ", sent.message()));
    }
  }
  return first;
}

}  // namespace kvscope::engine

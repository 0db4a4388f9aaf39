#include "engine/recording_kv_manager.h"

#include "absl/strings/str_cat.h"

namespace kvscope::engine {
namespace {

const char* KindName(KvOp::Kind kind) {
  switch (kind) {
    case KvOp::Kind::kAdmit:
      return "Admit";
    case KvOp::Kind::kAppend:
      return "Append";
    case KvOp::Kind::kFree:
      return "Free";
    case KvOp::Kind::kSwapOut:
      return "SwapOut";
    case KvOp::Kind::kSwapIn:
      return "SwapIn";
    case KvOp::Kind::kFork:
      return "Fork";
    case KvOp::Kind::kPlan:
      return "Plan";
  }
  return "?";
}

}  // namespace

absl::StatusOr<int32_t> RecordingKvManager::Admit(const kvcache::SeqRequest& seq) {
  absl::StatusOr<int32_t> cached = inner_->Admit(seq);
  KvOp op;
  op.kind = KvOp::Kind::kAdmit;
  op.a = seq.seq_id;
  op.tokens.assign(seq.tokens.begin(), seq.tokens.end());
  op.max_new_tokens = seq.max_new_tokens;
  op.ok = cached.ok();
  op.result = cached.ok() ? *cached : 0;
  ops_.push_back(std::move(op));
  return cached;
}

bool RecordingKvManager::Append(int64_t seq_id, absl::Span<const int32_t> tokens) {
  const bool appended = inner_->Append(seq_id, tokens);
  KvOp op;
  op.kind = KvOp::Kind::kAppend;
  op.a = seq_id;
  op.tokens.assign(tokens.begin(), tokens.end());
  op.result = appended ? 1 : 0;
  ops_.push_back(std::move(op));
  return appended;
}

void RecordingKvManager::Free(int64_t seq_id) {
  inner_->Free(seq_id);
  KvOp op;
  op.kind = KvOp::Kind::kFree;
  op.a = seq_id;
  ops_.push_back(std::move(op));
}

bool RecordingKvManager::SwapOut(int64_t seq_id) {
  const bool swapped = inner_->SwapOut(seq_id);
  KvOp op;
  op.kind = KvOp::Kind::kSwapOut;
  op.a = seq_id;
  op.result = swapped ? 1 : 0;
  ops_.push_back(std::move(op));
  return swapped;
}

absl::Status RecordingKvManager::SwapIn(int64_t seq_id) {
  absl::Status status = inner_->SwapIn(seq_id);
  KvOp op;
  op.kind = KvOp::Kind::kSwapIn;
  op.a = seq_id;
  op.ok = status.ok();
  ops_.push_back(std::move(op));
  return status;
}

absl::Status RecordingKvManager::Fork(int64_t parent, int64_t child) {
  absl::Status status = inner_->Fork(parent, child);
  KvOp op;
  op.kind = KvOp::Kind::kFork;
  op.a = parent;
  op.b = child;
  op.ok = status.ok();
  ops_.push_back(std::move(op));
  return status;
}

absl::StatusOr<const kvcache::StepPlan*> RecordingKvManager::Plan(
    absl::Span<const kvcache::SeqStep> steps) {
  absl::StatusOr<const kvcache::StepPlan*> plan = inner_->Plan(steps);
  KvOp op;
  op.kind = KvOp::Kind::kPlan;
  op.steps.assign(steps.begin(), steps.end());
  op.ok = plan.ok();
  ops_.push_back(std::move(op));
  return plan;
}

absl::Status ReplayKvOps(absl::Span<const KvOp> ops, kvcache::KvManager& replica,
                         const kvcache::StepPlan** last_plan) {
  if (last_plan != nullptr) *last_plan = nullptr;
  for (size_t i = 0; i < ops.size(); ++i) {
    const KvOp& op = ops[i];
    bool ok = true;
    int64_t result = 0;
    // Any other call may invalidate the plan it returned.
    if (last_plan != nullptr && op.kind != KvOp::Kind::kPlan) *last_plan = nullptr;
    switch (op.kind) {
      case KvOp::Kind::kAdmit: {
        absl::StatusOr<int32_t> cached =
            replica.Admit(kvcache::SeqRequest{op.a, op.tokens, op.max_new_tokens});
        ok = cached.ok();
        result = ok ? *cached : 0;
        break;
      }
      case KvOp::Kind::kAppend:
        result = replica.Append(op.a, op.tokens) ? 1 : 0;
        break;
      case KvOp::Kind::kFree:
        replica.Free(op.a);
        break;
      case KvOp::Kind::kSwapOut:
        result = replica.SwapOut(op.a) ? 1 : 0;
        break;
      case KvOp::Kind::kSwapIn:
        ok = replica.SwapIn(op.a).ok();
        break;
      case KvOp::Kind::kFork:
        ok = replica.Fork(op.a, op.b).ok();
        break;
      case KvOp::Kind::kPlan: {
        absl::StatusOr<const kvcache::StepPlan*> plan = replica.Plan(op.steps);
        ok = plan.ok();
        if (last_plan != nullptr && ok) *last_plan = *plan;
        break;
      }
    }
    if (ok != op.ok || result != op.result) {
      return absl::InternalError(absl::StrCat(
          "gang: this process's KV manager diverged from the driver's at call ", i, " (",
          KindName(op.kind), " of sequence ", op.a, "): the driver got ",
          op.ok ? "OK" : "an error", " / ", op.result, ", the replica ", ok ? "OK" : "an error",
          " / ", result, "; the strategy is not deterministic across processes"));
    }
  }
  return absl::OkStatus();
}

}  // namespace kvscope::engine

// File: kvcache/plan_check.cc
#include "kvcache/plan_check.h"

namespace kvscope::kvcache {

absl::Status CheckStepExtent(const SeqStep& step, int32_t planned_length, int32_t length,
                             StepExtent extent) {
  const int64_t end = static_cast<int64_t>(step.start_position) + step.num_new_tokens;
  const bool end_ok = extent == StepExtent::kWholeRemainder ? end == length : end <= length;
  if (step.num_new_tokens < 1 || step.start_position != planned_length || !end_ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequence ", step.seq_id, ": step computes ", step.num_new_tokens,
        " tokens from position ", step.start_position, " but ", planned_length,
        " tokens were computed and ", length, " appended"));
  }
  return absl::OkStatus();
}

}  // namespace kvscope::kvcache

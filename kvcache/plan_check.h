// File: kvcache/plan_check.h
//
// The validation every KV manager's Plan() starts with: each step's sequence is admitted,
// appears once, and computes tokens that were appended but not yet computed. Managers
// differ only in how much of the appended remainder one step may compute.
#ifndef KVSCOPE_KVCACHE_PLAN_CHECK_H_
#define KVSCOPE_KVCACHE_PLAN_CHECK_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "common/status_macros.h"
#include "kvcache/kv_cache.h"

namespace kvscope::kvcache {

enum class StepExtent {
  kWholeRemainder,  // the step computes every appended, uncomputed token
  kPrefix,          // a prefix of them (chunked prefill)
};

// OK if `step` starts at `planned_length` (tokens computed so far), computes at least one
// token, and ends at `length` (tokens appended) or, for kPrefix, at most there.
absl::Status CheckStepExtent(const SeqStep& step, int32_t planned_length, int32_t length,
                             StepExtent extent);

// Checks every step against `seqs` (a map from seq_id to a pointer-like to a record with
// `stamp`, `planned_length` and `length` fields) and stamps each record with `stamp` so
// that a sequence listed twice is refused. InvalidArgument naming the sequence otherwise.
template <typename SeqMap>
absl::Status CheckPlanSteps(absl::Span<const SeqStep> steps, const SeqMap& seqs,
                            uint64_t stamp, StepExtent extent) {
  for (const SeqStep& step : steps) {
    auto it = seqs.find(step.seq_id);
    if (it == seqs.end()) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", step.seq_id, " is not admitted"));
    }
    auto& s = *it->second;
    if (s.stamp == stamp) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", step.seq_id, " appears twice in the step"));
    }
    s.stamp = stamp;
    KVSCOPE_RETURN_IF_ERROR(CheckStepExtent(step, s.planned_length, s.length, extent));
  }
  return absl::OkStatus();
}

}  // namespace kvscope::kvcache

#endif  // KVSCOPE_KVCACHE_PLAN_CHECK_H_

#include "engine/infinigen_offload_plan.h"

#include <algorithm>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvscope::engine {

absl::StatusOr<OffloadPlan> PlanOffloadStep(absl::Span<const OffloadSeq> seqs,
                                            absl::Span<const int32_t> new_slots,
                                            int64_t prefetch_slots, int32_t block_size) {
  if (prefetch_slots < 0 || block_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("infinigen offload plan: prefetch_slots (",
                                                   prefetch_slots, ") must be >= 0 and block_size (",
                                                   block_size, ") >= 1"));
  }
  const int64_t tokens = static_cast<int64_t>(new_slots.size());
  OffloadPlan plan;
  plan.fresh_base = prefetch_slots;
  plan.history_base = prefetch_slots + tokens;
  plan.fresh_slots.resize(new_slots.size());
  for (int64_t t = 0; t < tokens; ++t) {
    plan.fresh_slots[t] = new_slots[t] < 0 ? -1 : static_cast<int32_t>(plan.fresh_base + t);
  }
  plan.list_begin.assign(seqs.size(), -1);
  int64_t next_history = plan.history_base;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const OffloadSeq& s = seqs[i];
    if (s.sparse) continue;
    if (s.slots.size() != s.positions.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "infinigen offload plan: sequence ", i, " lists ", s.slots.size(), " slots but ",
          s.positions.size(), " positions"));
    }
    plan.list_begin[i] = static_cast<int64_t>(plan.lists.size());
    for (size_t j = 0; j < s.slots.size(); ++j) {
      const int32_t p = s.positions[j];
      if (p >= s.start_position && p < s.start_position + s.num_new_tokens) {
        const int64_t row = static_cast<int64_t>(s.first_row) + (p - s.start_position);
        if (row < 0 || row >= tokens || new_slots[row] < 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              "infinigen offload plan: sequence ", i, "'s new position ", p, " maps to token row ",
              row, ", which is outside the step's ", tokens, " rows or writes no slot"));
        }
        plan.lists.push_back(plan.fresh_slots[row]);
        continue;
      }
      if (s.slots[j] < 0) {
        return absl::InvalidArgumentError(absl::StrCat("infinigen offload plan: sequence ", i,
                                                       "'s position ", p, " has host slot ",
                                                       s.slots[j]));
      }
      plan.history_src.push_back(s.slots[j]);
      plan.history_dst.push_back(static_cast<int32_t>(next_history));
      plan.lists.push_back(static_cast<int32_t>(next_history));
      ++next_history;
    }
  }
  if (next_history > std::numeric_limits<int32_t>::max()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "infinigen offload plan: the step needs ", next_history,
        " working slots, beyond the 32-bit slot numbering"));
  }
  const int64_t blocks = std::max<int64_t>(1, (next_history + block_size - 1) / block_size);
  plan.num_slots = blocks * block_size;
  return plan;
}

}  // namespace kvscope::engine

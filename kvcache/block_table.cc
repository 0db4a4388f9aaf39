#include "kvcache/block_table.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace kvscope::kvcache {

void BlockTable::ReplaceBlock(size_t index, int32_t block, int32_t block_size) {
  blocks[index] = block;
  const size_t begin = index * block_size;
  const size_t end = std::min(slots.size(), begin + block_size);
  for (size_t t = begin; t < end; ++t) {
    slots[t] = block * block_size + static_cast<int32_t>(t - begin);
  }
}

void BlockTable::RebuildSlots(int32_t block_size) {
  for (size_t t = 0; t < slots.size(); ++t) {
    slots[t] = blocks[t / block_size] * block_size + static_cast<int32_t>(t % block_size);
  }
}

absl::Status FillStepPlan(absl::Span<const SeqStep> steps,
                          absl::FunctionRef<BlockTable*(int64_t)> find, uint64_t stamp,
                          StepPlan* plan) {
  // Validate everything first so a bad step leaves the previous plan intact.
  size_t new_tokens = 0;
  for (const SeqStep& step : steps) {
    BlockTable* table = find(step.seq_id);
    if (table == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", step.seq_id, " is not held on the device"));
    }
    if (table->plan_stamp == stamp) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", step.seq_id, " appears twice in the step"));
    }
    table->plan_stamp = stamp;
    if (step.num_new_tokens < 0 || step.start_position < 0 ||
        static_cast<int64_t>(step.start_position) + step.num_new_tokens != table->num_tokens()) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", step.seq_id, ": step computes ", step.num_new_tokens,
                       " tokens from position ", step.start_position, " but the sequence holds ",
                       table->num_tokens(), " tokens (append the new tokens before planning)"));
    }
    new_tokens += step.num_new_tokens;
  }
  plan->steps.assign(steps.begin(), steps.end());
  plan->new_slots.resize(new_tokens);
  plan->views.resize(steps.size());
  int32_t* out = plan->new_slots.data();
  for (size_t i = 0; i < steps.size(); ++i) {
    const SeqStep& step = steps[i];
    const BlockTable* table = find(step.seq_id);
    const int32_t* first = table->slots.data() + step.start_position;
    out = std::copy(first, first + step.num_new_tokens, out);
    plan->views[i] =
        kernels::SeqKvView{table->slots.data(), table->positions.data(), table->num_tokens(), 0};
  }
  return absl::OkStatus();
}

}  // namespace kvscope::kvcache

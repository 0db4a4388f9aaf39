// File: kvcache/block_table.h
//
// One sequence's placement in a block pool, shared by the block-based managers (paged,
// contiguous): its physical blocks and, per token, the slot and the position the attention
// view lists. Slot arrays are maintained incrementally, so building a step plan costs
// O(sequences + new tokens), not O(tokens held).
//
// FillStepPlan turns the scheduler's steps into the plan's new-token slots and views.
// Not thread-safe; owned by the manager.
#ifndef KVSCOPE_KVCACHE_BLOCK_TABLE_H_
#define KVSCOPE_KVCACHE_BLOCK_TABLE_H_

#include <cstdint>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kvcache/kv_manager.h"

namespace kvscope::kvcache {

struct BlockTable {
  std::vector<int32_t> blocks;     // physical block of each logical block
  std::vector<int32_t> slots;      // [num_tokens] block * block_size + offset
  std::vector<int32_t> positions;  // [num_tokens] 0, 1, ..., num_tokens - 1
  uint64_t plan_stamp = 0;         // FillStepPlan's repeated-sequence check

  int32_t num_tokens() const { return static_cast<int32_t>(slots.size()); }
  // Adds the next token in logical block num_tokens / block_size, which must exist.
  void PushToken(int32_t block_size) {
    const int32_t n = num_tokens();
    slots.push_back(blocks[n / block_size] * block_size + n % block_size);
    positions.push_back(n);
  }
  // Moves the tokens of logical block `index` to physical block `block`.
  void ReplaceBlock(size_t index, int32_t block, int32_t block_size);
  // Recomputes every slot from `blocks` (after the blocks all changed, e.g. a swap-in).
  void RebuildSlots(int32_t block_size);
};

// Fills plan->steps, plan->new_slots and plan->views from `steps`. `find` returns the
// sequence's table, or null when it is unknown or not on the device. Each step must end at
// the sequence's last token (start_position + num_new_tokens == tokens held: its new tokens
// were Appended) and no sequence may appear twice; otherwise InvalidArgument and `plan` is
// unchanged. `stamp` must differ between calls. Views point into the tables' vectors.
absl::Status FillStepPlan(absl::Span<const SeqStep> steps,
                          absl::FunctionRef<BlockTable*(int64_t)> find, uint64_t stamp,
                          StepPlan* plan);

}  // namespace kvscope::kvcache

#endif  // KVSCOPE_KVCACHE_BLOCK_TABLE_H_

// File: engine/infinigen_offload_plan.h
//
// Where one step's K/V sit on the device for the layers InfiniGen offloads in the GPU engine
// (layers >= dense_layers; engine/cuda/gpu_infinigen.h). Those layers keep no K/V on the
// device between steps: the pinned host pool holds every token at the cache's host slots
// (kvcache/infinigen_kv_cache.h), and each step a *working pool* on the device holds only
// what the step's attention reads, in its own slot numbering:
//
//   [0, prefetch_slots)             the two prefetch buffers: the cache's prefetch slot s
//                                   is working slot s - cache.FirstPrefetchSlot();
//   [fresh_base, + tokens)          the step's new K/V: token row t at fresh_base + t;
//   [history_base, + history)       the earlier tokens of the sequences that attend to every
//                                   token (a prefill chunk after the first, a decode that
//                                   does not speculate), gathered from the host pool in
//                                   every offloaded layer (the reference's load_cache).
//
// Sparse (speculating) sequences read only prefetch slots and their new token's fresh slot,
// so a plain prefill and every decode move nothing but the selected rows. The numbering is
// the same for every offloaded layer of the step (what differs per layer is the content).
//
// Pure host code (no CUDA), so that the numbering is tested on every machine.
#ifndef KVSCOPE_ENGINE_INFINIGEN_OFFLOAD_PLAN_H_
#define KVSCOPE_ENGINE_INFINIGEN_OFFLOAD_PLAN_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace kvscope::engine {

// One step sequence as the shared (all-heads) attention list of the infinigen cache gives it.
struct OffloadSeq {
  absl::Span<const int32_t> slots;      // host slots of the list, HOST memory
  absl::Span<const int32_t> positions;  // their positions, same length
  int32_t start_position = 0;           // first position the step writes
  int32_t num_new_tokens = 0;           // positions [start, start + n) are new this step
  int32_t first_row = 0;                // step token row of start_position
  bool sparse = false;                  // speculates: its offloaded lists are the selection's
};

struct OffloadPlan {
  int64_t fresh_base = 0;    // working slot of token row 0
  int64_t history_base = 0;  // working slot of the first gathered earlier token
  int64_t num_slots = 0;     // working slots the step needs, a multiple of block_size (>= 1 block)
  // [tokens]: the working slot each new token's K/V is written to; -1 where new_slots is -1.
  std::vector<int32_t> fresh_slots;
  // Per sequence: offset of its working-slot list in `lists` (num entries = its list's
  // length), or -1 for a sparse sequence.
  std::vector<int64_t> list_begin;
  std::vector<int32_t> lists;
  // Earlier tokens to gather in every offloaded layer: host slot -> working slot.
  std::vector<int32_t> history_src, history_dst;
};

// The working-pool numbering of one step. `new_slots`: the step's host slot per token row
// (KvCache::NewTokenSlots; -1 = the row writes nothing); `prefetch_slots`: 2 x
// InfinigenKvCache::PrefetchBufferSlots(). InvalidArgument when a list's slots and positions
// differ in length, a new position's row lies outside new_slots or writes no slot, or an
// earlier token has a negative host slot.
absl::StatusOr<OffloadPlan> PlanOffloadStep(absl::Span<const OffloadSeq> seqs,
                                            absl::Span<const int32_t> new_slots,
                                            int64_t prefetch_slots, int32_t block_size);

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_INFINIGEN_OFFLOAD_PLAN_H_

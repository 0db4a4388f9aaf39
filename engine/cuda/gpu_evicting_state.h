// File: engine/cuda/gpu_evicting_state.h
//
// The device side of the fixed-budget strategies (`h2o`, `streaming`: kvcache/
// evicting_kv_cache.h) for one tensor-parallel rank of the GPU engine. The host
// EvictingKvManager keeps admission, slot reservation, budgets and planning (how MANY
// entries each (layer, head) lists is decision-independent, so the host plans it alone);
// which tokens are kept is decided here, on the device, by the verified strategy kernels
// (kernels/cuda/h2o_ops.h, streaming_ops.h, evicting_ops.h), which reproduce
// EvictingKvCache::OnAttention's decisions exactly.
//
// One step (GpuModelShard::Forward, after kv.PrepareStep):
//   Prepare        gathers, for every layer, this rank's KV heads and the step's sequences,
//                  the host entry arrays (EvictingKvManager::Seq::head_pos / head_slots /
//                  head_score, entries j < view_n) into one pinned buffer and uploads it with
//                  ONE host-to-device copy, together with the per-sequence step values
//                  (view_n, length, budget) of all sequences, of those that compress and of
//                  those that evict; builds the per-(layer, sequence) device views
//                  (SeqKvView with per-head lists, head_stride = view_n).
//   per layer l    the attention reads views(l) (h2o: PagedAttention with attention-mass
//                  output into mass()); then OnAttention(l) enqueues, on the shard's stream
//                  and without a host sync: h2o score accumulation (and re-zeroes the mass);
//                  for the compressing sequences SelectKeep -> CompactKept; for the evicting
//                  sequences Victims -> ReplaceVictims; streaming positions=rolling then
//                  ShiftSinkKeys. K/V rows move inside the device pool only.
//   after the body EnqueueDownload copies the updated positions (and scores) back to the
//                  pinned buffer (one device-to-host copy); after the stream has drained,
//                  CommitToHost writes them into the manager's arrays, so the host cache
//                  (HeldPositions, the next Plan, stats) equals what the CPU engine's
//                  EvictingKvCache would hold. Slots never change (entry j of a sequence
//                  always uses slot S[j]); they are uploaded, not downloaded.
// The host arrays are authoritative between steps; the device copies live for one step.
// Evicted-count bookkeeping of ShiftSinkKeys is computed on the host: a decode eviction
// evicts 1 per (sequence, head); a streaming compression keeps exactly budget.total of the
// prompt's view_n entries (positions 0..L-1, L > total: sinks and window are disjoint), so
// it evicts view_n - total.
//
// Threading: one state per rank (shard); the ranks' CommitToHost calls write disjoint
// entries (their own heads) of the shared manager arrays, as the CPU rank caches do.
#ifndef KVSCOPE_ENGINE_CUDA_GPU_EVICTING_STATE_H_
#define KVSCOPE_ENGINE_CUDA_GPU_EVICTING_STATE_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/evicting_ops.h"
#include "kernels/cuda/kv_pool.h"
#include "kernels/ops.h"
#include "kvcache/evicting_kv_cache.h"

namespace kvscope::engine::cuda {

// OK for the policies the device kernels implement (H2oPolicy, StreamingPolicy);
// Unimplemented naming the policy otherwise.
absl::Status CheckGpuSupportsEvictionPolicy(const kvcache::EvictingKvCache& kv);

// The host image of one step, as GpuEvictingState::Prepare uploads it (host-only; built and
// written back by the two functions below, which the CPU-side tests drive directly).
// Entry j of (step sequence i, local KV head h) in layer l is element
// l * layer_entries + seq_offset[i] + h * view_n[i] + j of positions / slots / scores: the
// kernels' EntryLists with head_offset = seq_offset, head_stride = view_n, per-layer bases.
struct EvictingStepImage {
  int32_t num_layers = 0, kv_heads = 0, num_heads = 0, num_seqs = 0;
  int32_t max_view_n = 0;   // the attention's max_cached and the mass row stride
  int32_t keep_stride = 1;  // >= every compressing sequence's view_n
  int64_t layer_entries = 0;
  bool uses_scores = false;  // h2o
  bool is_h2o = false;
  bool rolling = false;  // some sequence re-rotates sink keys (streaming positions=rolling)
  std::vector<int64_t> seq_offset;        // [num_seqs]
  std::vector<int32_t> positions, slots;  // [num_layers][layer_entries]
  std::vector<double> scores;             // same shape when uses_scores, else empty
  // Per-sequence values of a subset of the step's sequences: all of them, those that
  // compress (EvictingKvManager::Action::kCompress) and those that evict (kEvict).
  struct Subset {
    std::vector<int32_t> index;  // the step sequence of each member
    std::vector<int64_t> head_offset;
    std::vector<int32_t> head_stride, view_n, length, total, recent;
    std::vector<int32_t> held;         // budget.total: entries ShiftSinkKeys looks at
    std::vector<int32_t> shift_below;  // EvictionPolicy::ShiftedKeysBelow(budget)
    std::vector<int32_t> evicted;      // [members][kv_heads]: tokens the step evicts
    int32_t count() const { return static_cast<int32_t>(index.size()); }
  };
  Subset all, compress, evict;
};

// The image of the step `kv` has prepared (after kv.PrepareStep): this rank's heads, every
// layer. ResourceExhausted when an entry's slot is outside [0, pool_slots); InvalidArgument
// when the shapes disagree; Unimplemented for a policy without device kernels.
absl::StatusOr<EvictingStepImage> PackEvictingStep(const kvcache::EvictingKvCache& kv,
                                                   int32_t num_layers, int32_t kv_heads,
                                                   int32_t num_heads, int64_t pool_slots);
// Writes an image's positions (and scores, when it has them) [num_layers][layer_entries],
// e.g. after the device made the step's decisions, into the manager's arrays of the planned
// sequences (this rank's heads, entries j < view_n).
void CommitEvictingStep(const kvcache::EvictingKvCache& kv, const EvictingStepImage& image,
                        const int32_t* positions, const double* scores);

class GpuEvictingState {
 public:
  GpuEvictingState() = default;

  // Uploads the step's entry arrays of `kv` (after kv.PrepareStep) for `num_layers` layers,
  // `kv_heads` KV heads and `num_heads` query heads of this rank, and prepares the views and
  // scratch. ResourceExhausted when an entry's slot is outside [0, pool_slots) (the device
  // pool); Unimplemented for a policy CheckGpuSupportsEvictionPolicy refuses. Adds the
  // copied bytes to *h2d_bytes. Asynchronous on `stream` (the pinned buffer must not be
  // rewritten before the stream has passed the copy: Forward ends synchronized).
  absl::Status Prepare(kvcache::EvictingKvCache& kv, int32_t num_layers, int32_t kv_heads,
                       int32_t num_heads, int64_t pool_slots, cudaStream_t stream,
                       int64_t* h2d_bytes);

  // Device views of layer `layer`: [num_seqs] SeqKvView; consecutive layers are
  // views_per_layer() apart.
  const kernels::SeqKvView* views() const { return views_; }
  int64_t views_per_layer() const { return image_.num_seqs; }
  // The largest view (entries listed): the attention's max_cached and the mass row stride.
  int32_t max_cached() const { return image_.max_view_n; }
  // h2o: the zeroed attention-mass buffer [num_seqs][num_heads][max_cached()] the attention
  // of every layer adds into (OnAttention consumes and re-zeroes it); null for streaming.
  float* mass() const { return image_.uses_scores ? mass_ : nullptr; }

  // The decisions and moves of EvictingKvCache::OnAttention(layer), enqueued on `stream`.
  absl::Status OnAttention(int32_t layer, const kernels::cuda::CudaKvPool& pool,
                           cudaStream_t stream);

  // Enqueues the copy of the updated positions (and scores) to the pinned buffer; adds the
  // bytes to *d2h_bytes.
  absl::Status EnqueueDownload(cudaStream_t stream, int64_t* d2h_bytes);
  // After the stream has passed EnqueueDownload's copy: writes positions (and scores) into
  // the manager's arrays of the planned sequences (this rank's heads only).
  void CommitToHost();

  // Pinned and device bytes held (for the memory report).
  int64_t pinned_bytes() const { return static_cast<int64_t>(staging_.bytes()); }
  int64_t device_bytes() const {
    return static_cast<int64_t>(dev_.bytes() + mass_buffer_.bytes());
  }

 private:
  // Per-sequence values of one subset (all / compressing / evicting), device pointers.
  struct Subset {
    int32_t count = 0;  // members
    const int64_t* head_offset = nullptr;
    const int32_t* head_stride = nullptr;
    const int32_t* view_n = nullptr;
    const int32_t* length = nullptr;
    const int32_t* total = nullptr;
    const int32_t* recent = nullptr;
    const int32_t* held = nullptr;         // budget.total
    const int32_t* shift_below = nullptr;  // ShiftedKeysBelow(budget)
    const int32_t* evicted = nullptr;      // [count][kv_heads]
  };
  kernels::cuda::EntryLists Lists(int32_t layer, const Subset& subset) const;
  kernels::cuda::EvictStep Step(const Subset& subset) const;

  kvcache::EvictingKvCache* kv_ = nullptr;  // set by Prepare, cleared by CommitToHost
  EvictingStepImage image_;                  // the step's host image (entries uploaded)
  int32_t rot_half_ = 0;
  Subset all_, compress_, evict_;

  // Pinned staging: the uploaded part (scores, positions, slots, metadata) at [0, upload_),
  // and the download lands on the scores and positions at the same offsets.
  kernels::cuda::PinnedBuffer staging_;
  kernels::cuda::DeviceBuffer dev_;  // uploaded part, then views and scratch
  int64_t upload_bytes_ = 0;
  int64_t scores_at_ = 0, positions_at_ = 0, slots_at_ = 0;  // byte offsets
  int32_t* keep_ = nullptr;        // device [compress][kv_heads][keep_stride]
  int32_t* keep_count_ = nullptr;  // device [compress][kv_heads]
  int32_t* victims_ = nullptr;     // device [evict][kv_heads]
  kernels::SeqKvView* views_ = nullptr;
  kernels::cuda::DeviceBuffer mass_buffer_;
  float* mass_ = nullptr;
  int64_t mass_bytes_ = 0;
  kernels::cuda::DeviceBuffer inv_freq_;  // float32 [rot_half] (rolling positions)
};

}  // namespace kvscope::engine::cuda

#endif  // KVSCOPE_ENGINE_CUDA_GPU_EVICTING_STATE_H_

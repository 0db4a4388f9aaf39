// File: kvcache/infinigen_kv_cache.h
//
// The per-rank KvCache of InfinigenKvManager (strategy: infinigen_kv_manager.h).
//
// Storage, per layer, one pool in the kernels/ops.h block layout (block size
// InfinigenKvManager::kBlockSize) holding two regions:
//   slots [0, host_slots)                     the host pool: every token's K/V at the slot
//                                             the manager gave its position (WriteKv writes
//                                             there: the reference's store_cache);
//   slots [host_slots, + 2 * staging_slots)   the prefetch buffers of the step (parity of
//                                             the layer picks one), where Speculate copies
//                                             the selected tokens' K/V.
// On the CPU both regions are one allocation so the attention op reads them through one
// KvPoolView. The GPU engine (engine/cuda/gpu_infinigen.h) keeps the host region in pinned
// host memory at the same slots (the dense layers also in a device pool), numbers each
// step's device copies of the offloaded layers in a working pool of its own
// (engine/infinigen_offload_plan.h: prefetch slot s at s - FirstPrefetchSlot()), selects on
// the device and records the outcome here (RecordSpeculation); with
// KvManagerContext::host_kv_storage false this cache then allocates no K/V or partial keys
// (Speculate refuses, FailedPrecondition).
// Partial key cache, per layer >= dense_layers (default 2): [host_slots][kv_heads]
// [partial_dim] skewed key columns (written in OnAttention from the keys the layer stored).
//
// Protocol additions to kv_cache.h, used by the model (engine/model.cc) when the cache is an
// InfinigenKvCache:
//   SpeculationRows()          step token rows of the decode sequences (speculation inputs)
//   Speculate(l, partial_q)    during layer l-1: score, select and copy layer l's tokens
//   WantsMassSample / SampleAttentionMass   after layer l's attention on sampled steps
// Views: the dense layers (0 and 1 by default), prefill steps, and layers whose Speculate
// did not run read every token of the sequence (one list shared by all KV heads);
// speculated layers read, per KV head, the selected tokens (in the prefetch buffer,
// ascending position) plus the new token. Host-pool eviction (host_capacity < 1) masks
// tokens out of the speculated layers only; the dense layers keep every token.
//
// Thread-safety: one instance per rank, used by that rank's thread (kv_cache.h).
#ifndef KVSCOPE_KVCACHE_INFINIGEN_KV_CACHE_H_
#define KVSCOPE_KVCACHE_INFINIGEN_KV_CACHE_H_

#include <cstdint>
#include <vector>

#include "kvcache/infinigen_kv_manager.h"
#include "kvcache/kv_cache.h"

namespace kvscope::kvcache {

class InfinigenKvCache final : public KvCache {
 public:
  // `manager`, `planned` and `stats` are owned by the manager, which outlives this cache.
  InfinigenKvCache(InfinigenKvManager* manager, const InfinigenKvManager::Planned* planned,
                   int rank, InfinigenRankStats* stats);

  const KvShape& shape() const override { return shape_; }
  // Besides kv_cache.h: FailedPrecondition when the skewing matrices are not set yet.
  absl::Status PrepareStep(absl::Span<const SeqStep> seqs) override;
  kernels::KvPoolView Pool(int32_t layer) override;
  absl::Span<const int32_t> NewTokenSlots() const override { return planned_->plan.new_slots; }
  absl::Span<const kernels::SeqKvView> SeqViews(int32_t layer) override;
  void OnAttention(int32_t layer) override;
  void Release(int64_t seq_id) override {}
  int32_t NumTokens(int64_t seq_id) const override { return manager_->NumTokens(seq_id); }
  int64_t ReservedBytes() const override { return manager_->Usage().reserved_bytes; }
  int64_t UsedBytes() const override { return manager_->Usage().used_bytes; }

  // ---- InfiniGen hooks ----
  InfinigenKvManager& manager() { return *manager_; }
  const InfinigenSkew* skew() const { return manager_->skew(); }
  int rank() const { return rank_; }
  // Rows (in the step's packed token order) of the decode tokens that speculate, one per
  // sparse sequence, in step order. Empty for prefill-only steps.
  absl::Span<const int32_t> SpeculationRows() const { return spec_rows_; }
  // Selects layer `layer`'s tokens (dense_layers <= layer < num_layers) for every sparse
  // sequence and copies their K/V into the layer's prefetch buffer. partial_q: [SpeculationRows().size()]
  // [num_heads_per_rank][partial_dim], the skewed partial queries of layer `layer` at the
  // decode tokens, row-major. InvalidArgument for a layer outside that range.
  absl::Status Speculate(int32_t layer, const float* partial_q);
  // Whether the model should call SampleAttentionMass after layer `layer`'s attention.
  bool WantsMassSample(int32_t layer) const;
  // The share of the full-cache attention mass (softmax over every token of the sequence,
  // q·k·scale, per query head, averaged over heads) held by the tokens the layer attended
  // to; one sample per sampled sparse sequence. q: [tokens][num_heads][head_dim] with row
  // stride q_stride (the step's skewed queries of the layer).
  void SampleAttentionMass(int32_t layer, const float* q, int64_t q_stride, float scale);

  // ---- For a device implementation (engine/cuda/gpu_infinigen.h), which scores, selects
  // and gathers on the device with the rules of Speculate and records the outcome here
  // instead of calling Speculate. r indexes SpeculationRows(). ----
  // The candidates Speculate would score at `layer` for sparse sequence r: per local KV head
  // the positions still in the host pool, ascending, truncated to the common count n (the
  // minimum over the heads). `layer` in [dense_layers, num_layers).
  void SpeculationCandidates(int32_t layer, int32_t r,
                             std::vector<std::vector<int32_t>>* cands) const;
  // The step facts of sparse sequence r: its new token's position, the host slot of a
  // position, its max_num_kv, and its first prefetch-buffer slot at `layer` (the selected
  // tokens go to that slot + j, j < n').
  int32_t SparsePosition(int32_t r) const {
    return planned_->plan.steps[spec_seq_[r]].start_position;
  }
  int32_t SparseSlot(int32_t r, int32_t position) const {
    return planned_->seqs[spec_seq_[r]].seq->slots[position];
  }
  int32_t SparseMaxNumKv(int32_t r) const { return planned_->seqs[spec_seq_[r]].seq->max_num_kv; }
  int64_t PrefetchSlot(int32_t layer, int32_t r) const {
    return staging_base_[layer & 1] + planned_->seqs[spec_seq_[r]].staging_offset;
  }
  // The step index (into the step's sequences and SeqViews) of sparse sequence r.
  int32_t SparseStepIndex(int32_t r) const { return spec_seq_[r]; }
  // This step's prefetch region: the first slot of the parity-0 buffer (after the host
  // slots, block-aligned) and the distance from it to the parity-1 buffer (a multiple of the
  // block size); PrefetchSlot(layer, r) - FirstPrefetchSlot() < 2 * PrefetchBufferSlots().
  int64_t FirstPrefetchSlot() const { return staging_base_[0]; }
  int64_t PrefetchBufferSlots() const { return staging_base_[1] - staging_base_[0]; }
  // Records layer `layer`'s selection made elsewhere, as Speculate would have left it
  // without copying any K/V: counts[r] = n' of sparse sequence r; positions[(r * kv_heads +
  // kh) * stride + j], j < counts[r], the selected positions (ascending, from
  // SpeculationCandidates). Sets the layer's views (prefetch slots, then the new token),
  // SelectedPositions, the statistics and the eviction counters. InvalidArgument for a layer
  // outside [dense_layers, num_layers), a count above max_num_kv or a wrong span size.
  absl::Status RecordSpeculation(int32_t layer, absl::Span<const int32_t> counts,
                                 absl::Span<const int32_t> positions, int32_t stride);

  // For tests: the positions layer `layer` selected for step sequence `i` and local KV head
  // `kv_head` in the last Speculate (ascending; empty if none).
  std::vector<int32_t> SelectedPositions(int32_t layer, int32_t i, int32_t kv_head) const;
  // For tests: the partial keys (layer >= dense_layers) of the token at `slot`, local KV head.
  const float* PartialKey(int32_t layer, int32_t slot, int32_t kv_head) const;

 private:
  float* KeyAt(int32_t layer, int64_t slot, int32_t head) {
    return k_[layer].data() + ((slot / kBlock) * shape_.num_kv_heads + head) * kBlock *
                                  shape_.head_dim + (slot % kBlock) * shape_.head_dim;
  }
  int64_t Offset(int64_t slot, int32_t head) const {
    return ((slot / kBlock) * shape_.num_kv_heads + head) * kBlock * shape_.head_dim +
           (slot % kBlock) * shape_.head_dim;
  }
  // SpeculationCandidates into cands (one list per local KV head); returns n.
  int32_t Candidates(int32_t layer, int32_t r, std::vector<std::vector<int32_t>>& cands) const;
  // Counter-based host-pool eviction of this rank's heads before a decode token is added.
  void EvictForDecode(InfinigenKvManager::Seq& s, int32_t position);

  static constexpr int32_t kBlock = InfinigenKvManager::kBlockSize;
  InfinigenKvManager* manager_;
  const InfinigenKvManager::Planned* planned_;
  int rank_;
  InfinigenRankStats* stats_;
  KvShape shape_;
  int32_t heads_per_rank_;
  int32_t partial_dim_;
  std::vector<int32_t> model_kv_head_;  // [kv heads] the model KV head of each local head
  int64_t num_blocks_ = 0;
  int64_t staging_base_[2] = {0, 0};    // first slot of each prefetch buffer
  std::vector<std::vector<float>> k_, v_;   // per layer [num_blocks][kv_heads][block][dim]
  std::vector<std::vector<float>> pk_;      // per layer [host slots][kv_heads][partial_dim]
  // Full views (shared by all heads): every token of each step sequence.
  std::vector<int32_t> full_slots_, full_pos_;
  std::vector<kernels::SeqKvView> full_views_;
  // Speculated views per layer: backing [Σ seqs][kv_heads][max_num_kv + 1] and views.
  std::vector<std::vector<int32_t>> sel_slots_, sel_pos_;
  std::vector<std::vector<kernels::SeqKvView>> views_;
  std::vector<bool> speculated_;        // per layer, this step
  std::vector<int32_t> spec_rows_, spec_seq_;  // per sparse sequence: token row, step index
  std::vector<double> scores_, agg_;    // scratch
  std::vector<int32_t> cand_, pick_;    // scratch
};

}  // namespace kvscope::kvcache

#endif  // KVSCOPE_KVCACHE_INFINIGEN_KV_CACHE_H_

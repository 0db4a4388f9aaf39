// File: kvcache/evicting_kv_cache.h
//
// The machinery shared by the fixed-budget lossy strategies (`h2o`, `streaming`): every
// sequence keeps, per layer and per KV head, at most `budget` tokens; which ones is decided
// by an EvictionPolicy (h2o_kv_manager.h, streaming_kv_manager.h).
//
// Life of a sequence (all layers and KV heads in lockstep as to HOW MANY tokens they hold;
// each (layer, head) chooses WHICH):
//   admission  the prompt of L tokens is processed with full attention, so admission
//              reserves max(L, decode_slots) slots, decode_slots = min(budget + 1,
//              L + max_new_tokens) (one extra "incoming" slot for the token that is added
//              before one is evicted). kLater when the free slots are short, kNever when the
//              pool cannot hold the reservation or the budget is zero tokens.
//   prefill    chunks go to slots S[pos] (entry index == position); views list all of them.
//   compress   once, in OnAttention of the step that computes the prompt's last token, if
//              L > budget: per (layer, KV head) the policy picks `budget` entries (from the
//              accumulated prefill scores for H2O); they are compacted, with their K/V, into
//              entries/slots 0..budget-1. The manager gives back the slots beyond
//              decode_slots when it plans that step (nothing writes them before the
//              compaction has read them: Forward follows Plan directly).
//   decode     while fewer than `budget` tokens are held the new token takes entry `held`;
//              afterwards it takes entry `budget` (slot S[budget]) and, in OnAttention, the
//              policy picks one victim per (layer, head) among the budget + 1 entries; the
//              new token's K/V (and score) move into the victim's entry and slot, so the
//              held count stays `budget`. Evicted tokens never return.
// Every token keeps its ORIGINAL position in the views (the causal rule and the policy read
// it); RoPE was applied when it was written. Only a policy with ShiftedKeysBelow > 0
// (streaming positions=rolling) later re-rotates some stored keys, in OnAttention.
// Eviction decisions are therefore taken rank-locally in OnAttention, per (layer, KV head),
// without cross-rank traffic; each rank writes only its own heads' entries, in arrays the
// manager allocated at admission (no locking, no reallocation during Forward). With
// replicated KV heads (tp > num_kv_heads) each rank keeps its own token set for its copy of
// the head, scored by its own query heads (entries are indexed by rank * kv_heads_per_rank
// + local head, which never overlap).
// Scores (H2O): the per-(layer, KV head) sum of post-softmax probabilities every query has
// given the token (GQA: summed over the group's query heads), accumulated in double from
// the attention op's float mass buffer; a token's score starts at zero when it is written.
//
// Append never fails within the reservation, so these strategies never preempt.
// Usage: reserved = slots owned * BytesPerToken, used = tokens held per (layer, head) *
// BytesPerToken.
//
// Thread-safety: see kv_manager.h; rank caches touch only their own heads' entries and
// their own pools during Forward.
#ifndef KVSCOPE_KVCACHE_EVICTING_KV_CACHE_H_
#define KVSCOPE_KVCACHE_EVICTING_KV_CACHE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "kvcache/kv_manager.h"

namespace kvscope::kvcache {

// A sequence's budget, fixed at admission.
struct EvictBudget {
  int32_t total = 0;   // tokens kept per (layer, KV head)
  int32_t recent = 0;  // of which the most recent window (H2O) / the window (streaming)
};

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  virtual std::string name() const = 0;
  // The budget of a sequence with `prompt_len` tokens and `max_new_tokens` to generate;
  // InvalidArgument (with the reason shown to the user) when it cannot be served.
  virtual absl::StatusOr<EvictBudget> Budget(int64_t prompt_len, int64_t max_new_tokens) const = 0;
  // Whether the policy reads attention scores (the attention op then accumulates mass).
  virtual bool UsesScores() const = 0;
  // Entries to keep (ascending indices, exactly budget.total of them) out of `n` > total
  // entries with these positions and scores, after a prompt of `length` tokens.
  virtual void SelectKeep(const int32_t* positions, const double* scores, int32_t n,
                          int32_t length, const EvictBudget& budget,
                          std::vector<int32_t>* keep) const = 0;
  // The entry to evict out of `n` = budget.total + 1 entries; `length` = tokens of the
  // sequence so far (the newest has position length - 1).
  virtual int32_t Victim(const int32_t* positions, const double* scores, int32_t n,
                         int32_t length, const EvictBudget& budget) const = 0;
  // Rolling positions (streaming positions=rolling): after tokens are evicted, the keys of
  // held entries whose original position is below this bound are re-rotated (RoPE) by the
  // number of tokens just evicted, so that every key's distance to later queries is its
  // distance in the cache. 0 (the default): keys keep the rotation they were written with.
  virtual int32_t ShiftedKeysBelow(const EvictBudget& budget) const { return 0; }
};

class EvictingKvManager : public KvManager {
 public:
  // InvalidArgument for bad geometry or a budget below one token's KV.
  static absl::StatusOr<std::unique_ptr<EvictingKvManager>> Create(
      const KvManagerContext& context, std::unique_ptr<EvictionPolicy> policy);

  std::string name() const override { return policy_->name(); }
  const KvGeometry& geometry() const override { return context_.geometry; }
  int64_t CapacityTokens() const override { return num_slots_; }

  Admission CanAdmit(const SeqRequest& seq) const override;
  absl::StatusOr<int32_t> Admit(const SeqRequest& seq) override;
  bool Append(int64_t seq_id, absl::Span<const int32_t> tokens) override;
  void Free(int64_t seq_id) override;
  int32_t NumTokens(int64_t seq_id) const override;
  absl::StatusOr<const StepPlan*> Plan(absl::Span<const SeqStep> steps) override;
  KvUsage Usage() const override;
  KvCounters Counters() const override { return KvCounters{}; }
  std::unique_ptr<KvCache> CreateRankCache(int rank) override;

  // Introspection for tests: the (original) positions held by (seq, layer, global KV head)
  // after the last completed Forward, in entry order; empty if unknown.
  std::vector<int32_t> HeldPositions(int64_t seq_id, int32_t layer, int32_t kv_head) const;
  // The budget fixed at admission (total 0 if unknown).
  EvictBudget BudgetOf(int64_t seq_id) const;
  // Slots the sequence owns.
  int32_t OwnedSlots(int64_t seq_id) const;
  int64_t free_slots() const { return static_cast<int64_t>(free_.size()); }
  const EvictionPolicy& policy() const { return *policy_; }
  // KvManagerContext::host_kv_storage: false when a device engine keeps the K/V (the rank
  // caches then hold no K/V memory; their Pool(l) has null k/v and the real block count).
  bool host_kv_storage() const { return context_.host_kv_storage; }

  // ---- Shared with the rank caches (EvictingKvCache); not for other callers. ----
  struct Seq {
    int64_t id = 0;
    int32_t prompt_len = 0;
    int32_t length = 0;          // tokens appended (next position)
    int32_t planned_length = 0;  // tokens planned (computed or being computed)
    int32_t held = 0;            // entries per (layer, head) once the planned step is done
    int32_t decode_slots = 0;
    EvictBudget budget;
    int32_t stride = 0;                // entries per (layer, head) array
    std::vector<int32_t> slots;        // S: the slots owned
    std::vector<int32_t> head_slots;   // [layers][global kv heads][stride]: entry j -> S[j]
    std::vector<int32_t> head_pos;     // same shape: original position of each entry
    std::vector<double> head_score;    // same shape: accumulated attention mass
    uint64_t stamp = 0;
  };
  enum class Action { kNone, kCompress, kEvict };
  struct PlannedSeq {
    Seq* seq = nullptr;
    int32_t view_n = 0;  // entries each view lists this step
    Action action = Action::kNone;
    int32_t length = 0;  // tokens after the step
  };
  struct Planned {
    StepPlan plan;
    std::vector<PlannedSeq> seqs;  // parallel to plan.steps
    int32_t max_view_n = 0;
    uint64_t generation = 0;
  };
  int32_t global_kv_heads() const {
    return context_.geometry.kv_heads_per_rank * context_.geometry.tp_size;
  }

 private:
  EvictingKvManager(const KvManagerContext& context, std::unique_ptr<EvictionPolicy> policy,
                    int64_t num_slots);
  // Reservation (slots) for admission, or the reason it can never be served.
 public:
  int64_t PeakTokens(const SeqRequest& seq) const override;

 private:
  absl::StatusOr<int64_t> Reservation(const SeqRequest& seq, EvictBudget* budget,
                                      int32_t* decode_slots) const;

  KvManagerContext context_;
  std::unique_ptr<EvictionPolicy> policy_;
  int64_t num_slots_;
  std::vector<int32_t> free_;  // free slots, the next one at the back
  absl::flat_hash_map<int64_t, std::unique_ptr<Seq>> seqs_;
  uint64_t plan_stamp_ = 0;
  Planned planned_;
};

// The per-rank KvCache of EvictingKvManager: owns the rank's pool (block layout of
// kernels/ops.h with block_size kBlockSize; none when the manager's host_kv_storage is
// false: the CPU engine then refuses the cache, a device engine keeps the K/V), serves
// per-KV-head views from the manager's entries, accumulates attention mass and applies
// compression / eviction in OnAttention.
class EvictingKvCache final : public KvCache {
 public:
  static constexpr int32_t kBlockSize = 16;

  EvictingKvCache(EvictingKvManager* manager, const EvictingKvManager::Planned* planned,
                  int rank, int64_t num_slots);

  const KvShape& shape() const override { return shape_; }
  absl::Status PrepareStep(absl::Span<const SeqStep> seqs) override;
  kernels::KvPoolView Pool(int32_t layer) override;
  absl::Span<const int32_t> NewTokenSlots() const override { return planned_->plan.new_slots; }
  absl::Span<const kernels::SeqKvView> SeqViews(int32_t layer) override { return views_[layer]; }
  float* AttentionMassBuffer(int32_t layer, int32_t num_heads_local, int64_t* max_cached) override;
  void OnAttention(int32_t layer) override;
  void Release(int64_t seq_id) override {}
  int32_t NumTokens(int64_t seq_id) const override { return manager_->NumTokens(seq_id); }
  int64_t ReservedBytes() const override { return manager_->Usage().reserved_bytes; }
  int64_t UsedBytes() const override { return manager_->Usage().used_bytes; }

  // ---- For a device engine that does OnAttention's work itself (engine/cuda/
  // gpu_evicting_state.h): the manager's plan of the step, the manager and this cache's
  // rank. Such an engine reads and writes only this rank's heads' entries of the planned
  // sequences, during its Forward, and never calls AttentionMassBuffer / OnAttention. ----
  const EvictingKvManager::Planned& planned() const { return *planned_; }
  const EvictingKvManager& manager() const { return *manager_; }
  int rank() const { return rank_; }

 private:
  // Copies K and V of (layer, local head) from slot `src` to slot `dst`.
  void MoveHead(int32_t layer, int32_t head, int32_t src, int32_t dst);
  // Re-rotates the key of (layer, local head) at `slot` by `delta` positions (RoPE angles
  // delta * inv_freq, computed in double; R(a)R(b) = R(a + b)).
  void ShiftKey(int32_t layer, int32_t head, int32_t slot, int32_t delta);

  EvictingKvManager* manager_;
  const EvictingKvManager::Planned* planned_;
  int rank_;
  KvShape shape_;
  int64_t num_blocks_;
  std::vector<std::vector<float>> k_, v_;  // per layer [num_blocks][kv_heads][block][dim]
  std::vector<std::vector<kernels::SeqKvView>> views_;  // per layer, per step sequence
  std::vector<float> mass_;
  int32_t mass_heads_ = 0;
  int64_t mass_stride_ = 0;
  bool mass_valid_ = false;
  std::vector<int32_t> keep_;  // scratch
};

}  // namespace kvscope::kvcache

#endif  // KVSCOPE_KVCACHE_EVICTING_KV_CACHE_H_

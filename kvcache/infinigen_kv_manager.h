// File: kvcache/infinigen_kv_manager.h
//
// `infinigen`: InfiniGen (OSDI 2024; kv-strategies.md §4) as an offloading strategy.
//
// Where KV lives (per rank):
//   host pool     the full K/V of every layer and every token, in host memory (plain host
//                 memory on the CPU; a CUDA build allocates it pinned). Optionally limited to
//                 `host_capacity` x (prompt + max_new_tokens) tokens per (layer >= 2, KV head)
//                 with the reference's counter-based eviction: before a decode token is
//                 added beyond the limit, each (layer, head) drops, among its live tokens at
//                 positions < length/2, the one selected for prefetch the fewest times (ties:
//                 the oldest; if none is that old, the least selected overall). Evicted tokens
//                 are never selected again (their storage is kept, only masked, as in the
//                 reference's accuracy artifact; host_bytes counts live tokens).
//   device        the partial key cache (d' skewed key columns per token, layers >=
//                 dense_layers), and a prefetch buffer of max_num_kv tokens per sequence (two of them, alternating
//                 by layer parity, so that layer i+1's transfer can overlap layer i).
// Per decode step of a sequence (one new token at a position >= its prompt length):
//   layers 0, 1   read their full KV (bytes of every earlier token are counted as moved);
//                 `dense_layers` (default 2, as the reference) sets how many;
//   layer i >= 1  the model speculates for layer i+1 (engine/infinigen_forward.h): partial
//                 query x InfinigenKvCache::Speculate scores the partial keys of layer i+1,
//                 selects n' tokens per KV head (infinigen_selection.h) and copies their K/V
//                 from the host pool into the prefetch buffer, counting the bytes; layer i+1
//                 then attends to those n' tokens plus the new token.
// Prefill (and chunked prefill) is dense attention over the whole prompt.
// max_num_kv of a sequence = max_num_kv if given, else int(max_kv_ratio x (prompt +
// max_new_tokens)); zero is refused at admission.
//
// Device accounting (what --kv-memory buys): per token, the full KV of layers 0-1 and the
// partial keys of the other layers; per sequence, its two prefetch buffers. PeakTokens and
// CapacityTokens are in those per-token units, so the prefetch buffers appear as extra
// tokens. Append never fails within the admission's reservation (no preemption).
//
// Thread-safety: kv_manager.h. Each rank cache writes only its own heads' eviction state and
// its own statistics slot.
#ifndef KVSCOPE_KVCACHE_INFINIGEN_KV_MANAGER_H_
#define KVSCOPE_KVCACHE_INFINIGEN_KV_MANAGER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "kvcache/infinigen_skew.h"
#include "kvcache/kv_manager.h"

namespace kvscope::kvcache {

struct InfinigenOptions {
  std::optional<double> alpha;         // unset: the skew's family default (4 OPT, 5 Llama)
  double partial_ratio = 0.2;          // d' = int(head_dim * partial_ratio), must be >= 1
  double max_kv_ratio = 0.2;           // of prompt + max_new_tokens
  std::optional<int64_t> max_num_kv;   // tokens; overrides max_kv_ratio
  double host_capacity = 1.0;          // host pool limit per (layer, head); 1 = none
  int32_t calibration_tokens = 256;    // seeded random calibration prompt (engine/)
  uint64_t calibration_seed = 0;
  // A calibration text's token ids (KvManagerContext::calibration_ids); when set, the
  // skewing is calibrated on its first tokens (up to the model's context) instead.
  std::shared_ptr<const std::vector<int32_t>> calibration_ids;
  int32_t dense_layers = 2;           // first layers that always read their full KV (>= 1)
  int32_t mass_sample_interval = 8;    // measure captured attention mass every N-th decode
                                       // step of a sequence; 0 = never
};

// Statistics one rank cache accumulates (read by the manager between steps).
struct InfinigenRankStats {
  int64_t h2d_bytes = 0;
  std::vector<int64_t> selected_tokens_per_layer;  // Σ n' per layer
  std::vector<int64_t> selections_per_layer;       // selections per layer
  double mass_captured_sum = 0;
  int64_t mass_samples = 0;
  int64_t evicted_tokens = 0;  // host-pool evictions (per layer and head)
};

class InfinigenKvManager final : public KvManager {
 public:
  static constexpr int32_t kBlockSize = 16;

  // InvalidArgument for alpha < 0, ratios outside [0, 1], partial_ratio giving no column,
  // max_num_kv < 1 or max_kv_ratio == 0 (a budget of zero tokens), host_capacity == 0, or a
  // device budget that holds no token.
  static absl::StatusOr<std::unique_ptr<InfinigenKvManager>> Create(
      const KvManagerContext& context, const InfinigenOptions& options);

  std::string name() const override { return "infinigen"; }
  const KvGeometry& geometry() const override { return context_.geometry; }
  int64_t CapacityTokens() const override;
  int64_t PeakTokens(const SeqRequest& seq) const override;
  Admission CanAdmit(const SeqRequest& seq) const override;
  absl::StatusOr<int32_t> Admit(const SeqRequest& seq) override;
  bool Append(int64_t seq_id, absl::Span<const int32_t> tokens) override;
  void Free(int64_t seq_id) override;
  int32_t NumTokens(int64_t seq_id) const override;
  absl::StatusOr<const StepPlan*> Plan(absl::Span<const SeqStep> steps) override;
  KvUsage Usage() const override;
  KvCounters Counters() const override;
  std::unique_ptr<KvCache> CreateRankCache(int rank) override;

  const InfinigenOptions& options() const { return options_; }
  int32_t partial_dim() const { return partial_dim_; }
  // The skewing artefacts (null until set). The engine calibrates and sets them before the
  // first step (engine/infinigen_calibration.h); InvalidArgument if they do not match the
  // geometry or partial_dim.
  const InfinigenSkew* skew() const { return skew_.get(); }
  // The same, shareable with another manager of the same model and options (SetSkew).
  std::shared_ptr<const InfinigenSkew> shared_skew() const { return skew_; }
  absl::Status SetSkew(std::shared_ptr<const InfinigenSkew> skew);
  double alpha() const;
  // max_num_kv of a sequence with this prompt and output (may be 0: refused at admission).
  int64_t MaxNumKv(int64_t prompt_len, int64_t max_new_tokens) const;

  // ---- Shared with the rank caches (InfinigenKvCache); not for other callers. ----
  struct Seq {
    int64_t id = 0;
    int32_t prompt_len = 0;
    int32_t peak = 0;            // prompt + max_new_tokens: host slots owned
    int32_t length = 0;          // tokens appended
    int32_t planned_length = 0;  // tokens planned
    int32_t max_num_kv = 0;
    int32_t host_limit = 0;      // live tokens per (sparse layer, head); 0 = unlimited
    int64_t reserved_units = 0;  // PeakTokens
    int64_t decode_steps = 0;
    std::vector<int32_t> slots;  // [peak] host slot of each position
    // Eviction state per (sparse layer l-2, global KV head g, position), sized only when
    // host_limit > 0: live flag and times selected.
    std::vector<uint8_t> alive;
    std::vector<int32_t> count;
    std::vector<int32_t> alive_count;  // [sparse layers][global KV heads]
    uint64_t stamp = 0;
  };
  struct PlannedSeq {
    Seq* seq = nullptr;
    bool decode = false;        // one new token after the prompt: dense layers load all KV
    bool sparse = false;        // decode with sparse layers: they read selected tokens
    bool sample_mass = false;   // measure the captured attention mass this step
    int32_t staging_offset = 0; // first prefetch-buffer slot of this sequence
    int32_t token_row = 0;      // index of its first new token in the step's packed tokens
  };
  struct Planned {
    StepPlan plan;
    std::vector<PlannedSeq> seqs;  // parallel to plan.steps
    int64_t host_slots = 0;        // host pool size (slots) every rank must have
    int32_t staging_slots = 0;     // prefetch-buffer slots per parity this step
    uint64_t generation = 0;
  };
  int32_t global_kv_heads() const {
    return context_.geometry.kv_heads_per_rank * context_.geometry.tp_size;
  }
  int32_t dense_layers() const {
    return std::min(options_.dense_layers, context_.geometry.num_layers);
  }
  int32_t sparse_layers() const { return context_.geometry.num_layers - dense_layers(); }
  // false: the rank caches keep no K/V or partial keys (a GPU engine holds them; Pool(l)
  // then has null k/v and only Speculate's bookkeeping half, RecordSpeculation, is usable).
  bool host_kv_storage() const { return context_.host_kv_storage; }

 private:
  InfinigenKvManager(const KvManagerContext& context, const InfinigenOptions& options,
                     int32_t partial_dim);
  int64_t DeviceBytesPerToken() const;
  int64_t PrefetchBytes(int64_t max_num_kv) const;

  KvManagerContext context_;
  InfinigenOptions options_;
  int32_t partial_dim_;
  std::shared_ptr<const InfinigenSkew> skew_;
  absl::flat_hash_map<int64_t, std::unique_ptr<Seq>> seqs_;
  std::vector<int32_t> free_slots_;  // freed host slots, reused first
  int64_t host_slots_ = 0;           // host slots ever allocated
  int64_t reserved_units_ = 0;
  uint64_t plan_stamp_ = 0;
  Planned planned_;
  std::vector<std::unique_ptr<InfinigenRankStats>> rank_stats_;  // one per rank cache
};

}  // namespace kvscope::kvcache

#endif  // KVSCOPE_KVCACHE_INFINIGEN_KV_MANAGER_H_

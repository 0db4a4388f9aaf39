// File: kvcache/streaming_kv_manager.h
//
// `streaming`: StreamingLLM attention sinks (kv-strategies.md §5). Per layer and KV head a
// sequence keeps its first `sink_tokens` tokens plus the most recent `recent` tokens:
//   recent = recent_size if given, else int(kv_budget * (L + max_new_tokens)) - sink_tokens
//            (at least 0) if kv_budget is given, else recent_size's default (2000).
// The prompt is computed with full attention and then compressed once to sinks + window;
// every decode step adds the new token and evicts the oldest non-sink token. The choice is
// positional, identical for every layer and head.
// positions=original (default): every key keeps the position it was written at (as in H2O):
// a query at position p sees the key of the token at position k at distance p - k, so the
// sinks' distance grows without bound.
// positions=rolling (StreamingLLM's pos-shift): positions are places in the cache: the
// sinks are at 0..S-1, the window keys follow (S, S+1, ...), and a new token's query is at
// the number of tokens kept before it. RoPE scores depend only on the query position minus
// the key position, and the window is contiguous and ends right before the new token, so
// window keys are at the same distance from the query in both policies; only the sinks
// differ (rolling: distance S + R - s instead of p - s). It is therefore implemented without
// touching the model: queries, new keys and window keys keep their original rotation, and
// every time tokens are evicted the sinks' stored keys are re-rotated forward by the number
// evicted (EvictionPolicy::ShiftedKeysBelow), i.e. the cache is shifted as a whole by the
// tokens dropped so far. Logits equal those of a model that rotated everything by cache
// position (up to float rounding). Needs a RoPE model (KvGeometry::rope_inv_freq); refused
// with InvalidArgument for learned positions (OPT). The views still list original positions
// (the causal rule and the kept-set choice use them).
// Mechanics, memory accounting and threading: evicting_kv_cache.h.
#ifndef KVSCOPE_KVCACHE_STREAMING_KV_MANAGER_H_
#define KVSCOPE_KVCACHE_STREAMING_KV_MANAGER_H_

#include <cstdint>
#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "kvcache/evicting_kv_cache.h"

namespace kvscope::kvcache {

struct StreamingOptions {
  int64_t sink_tokens = 4;
  int64_t recent_size = 2000;
  std::optional<double> kv_budget;  // used when recent_size is not given explicitly
  bool rolling_positions = false;
};

class StreamingPolicy final : public EvictionPolicy {
 public:
  explicit StreamingPolicy(const StreamingOptions& options) : options_(options) {}
  std::string name() const override { return "streaming"; }
  absl::StatusOr<EvictBudget> Budget(int64_t prompt_len, int64_t max_new_tokens) const override;
  bool UsesScores() const override { return false; }
  void SelectKeep(const int32_t* positions, const double* scores, int32_t n, int32_t length,
                  const EvictBudget& budget, std::vector<int32_t>* keep) const override;
  int32_t Victim(const int32_t* positions, const double* scores, int32_t n, int32_t length,
                 const EvictBudget& budget) const override;
  int32_t ShiftedKeysBelow(const EvictBudget& budget) const override {
    return options_.rolling_positions ? budget.total - budget.recent : 0;  // the sinks
  }

 private:
  StreamingOptions options_;
};

// InvalidArgument for negative sizes, a zero budget, kv_budget outside (0, 1], or rolling
// positions with a model without RoPE (context.geometry.rope_inv_freq empty or
// inconsistent with rope_rot_dim / head_dim).
absl::StatusOr<std::unique_ptr<EvictingKvManager>> CreateStreamingKvManager(
    const KvManagerContext& context, const StreamingOptions& options);

}  // namespace kvscope::kvcache

#endif  // KVSCOPE_KVCACHE_STREAMING_KV_MANAGER_H_

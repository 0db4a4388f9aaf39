// File: kvcache/streaming_kv_manager.h
//
// `streaming`: StreamingLLM attention sinks (kv-strategies.md §5). Per layer and KV head a
// sequence keeps its first `sink_tokens` tokens plus the most recent `recent` tokens:
//   recent = recent_size if given, else int(kv_budget * (L + max_new_tokens)) - sink_tokens
//            (at least 0) if kv_budget is given, else recent_size's default (2000).
// The prompt is computed with full attention and then compressed once to sinks + window;
// every decode step adds the new token and evicts the oldest non-sink token. The choice is
// positional, identical for every layer and head.
// positions=original: every key keeps its original position (as in H2O). positions=rolling
// (re-rotating keys by their place in the cache) needs queries rotated by their cache
// position, which the model does not support: it is refused with Unimplemented.
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

 private:
  StreamingOptions options_;
};

// InvalidArgument for negative sizes, a zero budget, kv_budget outside (0, 1];
// Unimplemented for rolling positions.
absl::StatusOr<std::unique_ptr<EvictingKvManager>> CreateStreamingKvManager(
    const KvManagerContext& context, const StreamingOptions& options);

}  // namespace kvscope::kvcache

#endif  // KVSCOPE_KVCACHE_STREAMING_KV_MANAGER_H_

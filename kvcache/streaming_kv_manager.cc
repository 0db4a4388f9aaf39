#include "kvcache/streaming_kv_manager.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace kvscope::kvcache {

absl::StatusOr<EvictBudget> StreamingPolicy::Budget(int64_t prompt_len,
                                                    int64_t max_new_tokens) const {
  int64_t recent = options_.recent_size;
  if (options_.kv_budget) {
    recent = std::max<int64_t>(
        0, static_cast<int64_t>(*options_.kv_budget * (prompt_len + max_new_tokens)) -
               options_.sink_tokens);
  }
  const int64_t total = options_.sink_tokens + recent;
  if (total < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("streaming: a budget of zero tokens (sink_tokens ", options_.sink_tokens,
                     " + recent ", recent, ")"));
  }
  if (total > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrCat("streaming: budget of ", total,
                                                   " tokens is too large"));
  }
  return EvictBudget{static_cast<int32_t>(total), static_cast<int32_t>(recent)};
}

void StreamingPolicy::SelectKeep(const int32_t* positions, const double*, int32_t n,
                                 int32_t length, const EvictBudget& budget,
                                 std::vector<int32_t>* keep) const {
  const int32_t sinks = budget.total - budget.recent;
  const int32_t window_start = length - budget.recent;
  keep->clear();
  for (int32_t j = 0; j < n; ++j) {
    if (positions[j] < sinks || positions[j] >= window_start) keep->push_back(j);
  }
}

int32_t StreamingPolicy::Victim(const int32_t* positions, const double*, int32_t n, int32_t,
                                const EvictBudget& budget) const {
  const int32_t sinks = budget.total - budget.recent;
  int32_t victim = -1;
  for (int32_t j = 0; j < n; ++j) {
    if (positions[j] >= sinks && (victim < 0 || positions[j] < positions[victim])) victim = j;
  }
  if (victim >= 0) return victim;
  for (int32_t j = 0; j < n; ++j) {  // only sinks (recent = 0): drop the newest
    if (victim < 0 || positions[j] > positions[victim]) victim = j;
  }
  return victim;
}

absl::StatusOr<std::unique_ptr<EvictingKvManager>> CreateStreamingKvManager(
    const KvManagerContext& context, const StreamingOptions& options) {
  if (options.rolling_positions) {
    const KvGeometry& g = context.geometry;
    if (g.rope_inv_freq.empty()) {
      return absl::InvalidArgumentError(
          "streaming: positions=rolling re-rotates stored keys and needs a model with rotary "
          "position embeddings (RoPE); this model has none (learned positions): use "
          "positions=original");
    }
    if (g.rope_rot_dim != 2 * static_cast<int64_t>(g.rope_inv_freq.size()) ||
        g.rope_rot_dim > g.head_dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          "streaming: positions=rolling: RoPE rotary dim ", g.rope_rot_dim, " with ",
          g.rope_inv_freq.size(), " frequencies does not fit head_dim ", g.head_dim));
    }
  }
  if (options.sink_tokens < 0 || options.recent_size < 0) {
    return absl::InvalidArgumentError("streaming: sink_tokens and recent_size must be >= 0");
  }
  if (options.kv_budget && !(*options.kv_budget > 0.0 && *options.kv_budget <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("streaming: kv_budget must be in (0, 1], got ", *options.kv_budget));
  }
  if (!options.kv_budget && options.sink_tokens + options.recent_size == 0) {
    return absl::InvalidArgumentError(
        "streaming: sink_tokens=0 and recent_size=0 give a budget of zero tokens");
  }
  return EvictingKvManager::Create(context, std::make_unique<StreamingPolicy>(options));
}

}  // namespace kvscope::kvcache

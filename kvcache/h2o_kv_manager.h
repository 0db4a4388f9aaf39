// File: kvcache/h2o_kv_manager.h
//
// `h2o`: Heavy-Hitter Oracle (kv-strategies.md §3), real-drop variant. Per layer and per KV
// head a sequence keeps `heavy` heavy hitters (highest accumulated attention mass) plus the
// `recent` most recent tokens. Budgets are fixed at admission from the prompt length L and
// the request's output limit G:
//   heavy  = heavy_size if given, else int(heavy_ratio * L) if given, else
//            int(kv_budget / 2 * (L + G)) if kv_budget is given, else int(0.1 * L);
//   recent = the same with recent_size / recent_ratio.
// kv_budget is a fraction of prompt + generated tokens, the one budget knob shared by every
// lossy strategy (kv-strategies.md section 7); the H2O ratios are fractions of the prompt
// as in the original.
// A budget of zero tokens is refused (CanAdmit kNever, or at creation when both sizes are
// given as 0). The prompt is computed with full attention, then compressed once (top-heavy
// by prefill mass outside the window, plus the window); every decode step adds the new token
// and evicts the lowest-scoring token outside the recent window [length - recent, length)
// (ties: the oldest; if the window covers every entry, the lowest score overall).
// Mechanics, memory accounting and threading: evicting_kv_cache.h.
#ifndef KVSCOPE_KVCACHE_H2O_KV_MANAGER_H_
#define KVSCOPE_KVCACHE_H2O_KV_MANAGER_H_

#include <cstdint>
#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "kvcache/evicting_kv_cache.h"

namespace kvscope::kvcache {

struct H2oOptions {
  double heavy_ratio = 0.1;
  double recent_ratio = 0.1;
  std::optional<int64_t> heavy_size;   // overrides heavy_ratio
  std::optional<int64_t> recent_size;  // overrides recent_ratio
  // Fractions of prompt + max new tokens (kv_budget / 2 each); override the ratios. The
  // registry sets them from kv_budget for the sides whose ratio and size are not given.
  std::optional<double> heavy_total_fraction;
  std::optional<double> recent_total_fraction;
};

class H2oPolicy final : public EvictionPolicy {
 public:
  explicit H2oPolicy(const H2oOptions& options) : options_(options) {}
  std::string name() const override { return "h2o"; }
  absl::StatusOr<EvictBudget> Budget(int64_t prompt_len, int64_t max_new_tokens) const override;
  bool UsesScores() const override { return true; }
  void SelectKeep(const int32_t* positions, const double* scores, int32_t n, int32_t length,
                  const EvictBudget& budget, std::vector<int32_t>* keep) const override;
  int32_t Victim(const int32_t* positions, const double* scores, int32_t n, int32_t length,
                 const EvictBudget& budget) const override;

 private:
  H2oOptions options_;
};

// InvalidArgument for ratios outside [0, 1], negative sizes, both sizes 0, or what
// EvictingKvManager::Create refuses.
absl::StatusOr<std::unique_ptr<EvictingKvManager>> CreateH2oKvManager(
    const KvManagerContext& context, const H2oOptions& options);

}  // namespace kvscope::kvcache

#endif  // KVSCOPE_KVCACHE_H2O_KV_MANAGER_H_

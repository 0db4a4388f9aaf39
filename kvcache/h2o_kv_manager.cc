#include "kvcache/h2o_kv_manager.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace kvscope::kvcache {

absl::StatusOr<EvictBudget> H2oPolicy::Budget(int64_t prompt_len,
                                              int64_t max_new_tokens) const {
  const auto side = [&](const std::optional<int64_t>& size,
                        const std::optional<double>& total_fraction, double ratio) -> int64_t {
    if (size) return *size;
    if (total_fraction) {
      return static_cast<int64_t>(*total_fraction * static_cast<double>(prompt_len + max_new_tokens));
    }
    return static_cast<int64_t>(ratio * static_cast<double>(prompt_len));
  };
  const int64_t heavy = side(options_.heavy_size, options_.heavy_total_fraction, options_.heavy_ratio);
  const int64_t recent =
      side(options_.recent_size, options_.recent_total_fraction, options_.recent_ratio);
  if (heavy + recent < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "h2o: a budget of zero tokens (heavy ", heavy, " + recent ", recent,
        ") for a prompt of ", prompt_len, " tokens; raise heavy_ratio/recent_ratio, kv_budget "
        "or heavy_size/recent_size"));
  }
  if (heavy + recent > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrCat("h2o: budget of ", heavy + recent,
                                                   " tokens is too large"));
  }
  return EvictBudget{static_cast<int32_t>(heavy + recent), static_cast<int32_t>(recent)};
}

void H2oPolicy::SelectKeep(const int32_t* positions, const double* scores, int32_t n,
                           int32_t length, const EvictBudget& budget,
                           std::vector<int32_t>* keep) const {
  const int32_t window_start = length - budget.recent;
  std::vector<int32_t> old;
  keep->clear();
  for (int32_t j = 0; j < n; ++j) {
    if (positions[j] >= window_start) {
      keep->push_back(j);
    } else {
      old.push_back(j);
    }
  }
  const size_t heavy = static_cast<size_t>(budget.total) - std::min<size_t>(keep->size(), budget.total);
  std::sort(old.begin(), old.end(), [&](int32_t a, int32_t b) {
    if (scores[a] != scores[b]) return scores[a] > scores[b];
    return positions[a] < positions[b];
  });
  for (size_t i = 0; i < std::min(heavy, old.size()); ++i) keep->push_back(old[i]);
  std::sort(keep->begin(), keep->end());
}

int32_t H2oPolicy::Victim(const int32_t* positions, const double* scores, int32_t n,
                          int32_t length, const EvictBudget& budget) const {
  const int32_t window_start = length - budget.recent;
  auto better = [&](int32_t a, int32_t b) {  // a is a better victim than b
    if (scores[a] != scores[b]) return scores[a] < scores[b];
    return positions[a] < positions[b];
  };
  int32_t victim = -1;
  for (int32_t j = 0; j < n; ++j) {
    if (positions[j] < window_start && (victim < 0 || better(j, victim))) victim = j;
  }
  if (victim >= 0) return victim;
  for (int32_t j = 0; j < n; ++j) {
    if (victim < 0 || better(j, victim)) victim = j;
  }
  return victim;
}

absl::StatusOr<std::unique_ptr<EvictingKvManager>> CreateH2oKvManager(
    const KvManagerContext& context, const H2oOptions& options) {
  auto ratio_ok = [](double r) { return std::isfinite(r) && r >= 0.0 && r <= 1.0; };
  if (!ratio_ok(options.heavy_ratio) || !ratio_ok(options.recent_ratio)) {
    return absl::InvalidArgumentError(absl::StrCat("h2o: heavy_ratio (", options.heavy_ratio,
                                                   ") and recent_ratio (", options.recent_ratio,
                                                   ") must be in [0, 1]"));
  }
  const auto fraction_ok = [&](const std::optional<double>& f) { return !f || ratio_ok(*f); };
  if (!fraction_ok(options.heavy_total_fraction) || !fraction_ok(options.recent_total_fraction)) {
    return absl::InvalidArgumentError("h2o: kv_budget / 2 must be in [0, 1]");
  }
  if ((options.heavy_size && *options.heavy_size < 0) ||
      (options.recent_size && *options.recent_size < 0)) {
    return absl::InvalidArgumentError("h2o: heavy_size and recent_size must be >= 0");
  }
  if (options.heavy_size && options.recent_size && *options.heavy_size + *options.recent_size == 0) {
    return absl::InvalidArgumentError(
        "h2o: heavy_size=0 and recent_size=0 give a budget of zero tokens");
  }
  const double heavy_share =
      options.heavy_total_fraction ? *options.heavy_total_fraction : options.heavy_ratio;
  const double recent_share =
      options.recent_total_fraction ? *options.recent_total_fraction : options.recent_ratio;
  if (!options.heavy_size && !options.recent_size && heavy_share + recent_share == 0) {
    return absl::InvalidArgumentError(
        "h2o: heavy_ratio=0 and recent_ratio=0 give a budget of zero tokens");
  }
  return EvictingKvManager::Create(context, std::make_unique<H2oPolicy>(options));
}

}  // namespace kvscope::kvcache

#include "kvcache/infinigen_selection.h"

#include <algorithm>
#include <numeric>

namespace kvscope::kvcache {

int32_t SpeculatedCount(const double* scores, int32_t num_heads, int32_t n, double alpha,
                        int32_t max_num_kv) {
  if (n <= 0 || num_heads <= 0) return 0;
  int64_t total = 0;
  for (int32_t h = 0; h < num_heads; ++h) {
    const double* row = scores + static_cast<int64_t>(h) * n;
    const double thr = *std::max_element(row, row + n) - alpha;
    for (int32_t j = 0; j < n; ++j) total += row[j] > thr ? 1 : 0;
  }
  const int64_t mean = total / num_heads;  // floor of the mean (counts are >= 0)
  return static_cast<int32_t>(std::min<int64_t>({mean, max_num_kv, n}));
}

void TopKAscending(const double* scores, int32_t n, int32_t k, std::vector<int32_t>* out) {
  out->resize(n);
  std::iota(out->begin(), out->end(), 0);
  k = std::clamp(k, 0, n);
  std::partial_sort(out->begin(), out->begin() + k, out->end(), [&](int32_t a, int32_t b) {
    if (scores[a] != scores[b]) return scores[a] > scores[b];
    return a < b;
  });
  out->resize(k);
  std::sort(out->begin(), out->end());
}

}  // namespace kvscope::kvcache

// File: kvcache/infinigen_selection.h
//
// InfiniGen's token selection rule (kv-strategies.md §4.4) on the partial attention scores
// of one sequence at one layer, as pure functions (the rank cache applies them; tests check
// them against a plain oracle):
//   thr_h = max_j s[h][j] - alpha;  cnt_h = #{j : s[h][j] > thr_h}
//   n'    = min(floor(mean over the rank's query heads of cnt_h), max_num_kv, n)
//   per KV head: the n' candidates with the highest score (grouped-query attention: the
//   maximum over the group's query heads; for multi-head attention that is the head's own
//   score), ties to the earlier candidate.
#ifndef KVSCOPE_KVCACHE_INFINIGEN_SELECTION_H_
#define KVSCOPE_KVCACHE_INFINIGEN_SELECTION_H_

#include <cstdint>
#include <vector>

namespace kvscope::kvcache {

// scores: [num_heads][n] partial logits (row stride n). n' as above; 0 when n == 0.
int32_t SpeculatedCount(const double* scores, int32_t num_heads, int32_t n, double alpha,
                        int32_t max_num_kv);

// The k highest of scores[0..n) (k <= n), ties to the lower index, returned in ascending
// index order.
void TopKAscending(const double* scores, int32_t n, int32_t k, std::vector<int32_t>* out);

}  // namespace kvscope::kvcache

#endif  // KVSCOPE_KVCACHE_INFINIGEN_SELECTION_H_

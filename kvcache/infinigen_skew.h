// File: kvcache/infinigen_skew.h
//
// The offline artefacts of InfiniGen (kv-strategies.md §4.2-4.3) as plain data, so that the
// KV strategy (kvcache/) can use them without depending on the model (engine/), which
// computes them (engine/infinigen_calibration.h):
//   - per layer and model KV head an orthogonal skewing matrix A [head_dim][head_dim]
//     (row-major, A[i][j]; column j is the j-th skewed direction). Queries and keys are
//     stored skewed (q' = q·A, k' = k·A, row vectors), which leaves q·kᵀ unchanged;
//   - per layer and model KV head the `partial_dim` skewed columns (ascending indices)
//     that the partial query weights and the partial key cache keep.
// Grouped-query attention: one A per KV head, shared by the query heads of its group (a
// per-query-head A would change q·kᵀ); the columns are chosen from the group's queries.
// Immutable once built; shared read-only by the manager, its rank caches and the model.
#ifndef KVSCOPE_KVCACHE_INFINIGEN_SKEW_H_
#define KVSCOPE_KVCACHE_INFINIGEN_SKEW_H_

#include <cstdint>
#include <vector>

namespace kvscope::kvcache {

struct InfinigenSkew {
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;  // the model's KV heads (not per rank)
  int32_t head_dim = 0;
  int32_t partial_dim = 0;     // d' = int(head_dim * partial_ratio) columns per head
  double default_alpha = 5.0;  // the family's default alpha: 4 for OPT, 5 for Llama
  std::vector<float> a;          // [num_layers][num_kv_heads][head_dim][head_dim]
  std::vector<int32_t> columns;  // [num_layers][num_kv_heads][partial_dim], ascending

  const float* A(int32_t layer, int32_t kv_head) const {
    return a.data() + (static_cast<int64_t>(layer) * num_kv_heads + kv_head) * head_dim * head_dim;
  }
  const int32_t* Columns(int32_t layer, int32_t kv_head) const {
    return columns.data() + (static_cast<int64_t>(layer) * num_kv_heads + kv_head) * partial_dim;
  }
};

// The model KV head that local KV head `local` of rank `rank` serves, for a model with
// `model_kv_heads` KV heads and `heads_per_rank` query heads on each of `tp` ranks: split
// evenly, or (tp > KV heads) the one replicated head this rank's query heads read, as
// engine/model.h shards them.
inline int32_t ModelKvHead(int32_t model_kv_heads, int32_t heads_per_rank, int32_t tp, int rank,
                           int32_t local) {
  if (model_kv_heads % tp == 0) return rank * (model_kv_heads / tp) + local;
  const int32_t group = heads_per_rank * tp / model_kv_heads;
  return rank * heads_per_rank / group;
}

}  // namespace kvscope::kvcache

#endif  // KVSCOPE_KVCACHE_INFINIGEN_SKEW_H_

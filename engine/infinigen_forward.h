// File: engine/infinigen_forward.h
//
// The model-dependent half of InfiniGen (kv-strategies.md §4.2-4.4) for one
// tensor-parallel rank; the strategy half is kvcache/infinigen_kv_cache.h.
//   - Skewing. OPT (no RoPE): A is folded into this rank's rows of W_q and W_k (and their
//     biases): W'[h] = A_hᵀ W[h], so the projections produce q·A and k·A directly. Llama
//     family: A cannot be folded through RoPE, so q and k are multiplied by A after RoPE.
//     (The reference also pre-scales W_q by 1/√d; here the attention op keeps the scale.)
//   - Partial query of layer l at a decode token from layer l-1's attention input x:
//     OPT: x · W_qp(l)ᵀ + b_qp(l), W_qp = the d' folded rows of each head at its partial
//     columns ([heads·d', hidden]). Llama: RoPE(x · W_q(l)ᵀ) · A then the d' columns (the
//     rotation depends on the position, so no partial weight matrix exists; this computes
//     the head's full query for the speculated rows only).
// Immutable after construction; one instance per ModelShard (not shared across threads).
#ifndef KVSCOPE_ENGINE_INFINIGEN_FORWARD_H_
#define KVSCOPE_ENGINE_INFINIGEN_FORWARD_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "engine/weights.h"
#include "kvcache/infinigen_skew.h"

namespace kvscope::engine {

class InfinigenShard {
 public:
  struct Rope {
    const float* inv_freq = nullptr;
    int64_t rot_dim = 0;
    float scaling = 1.0f;
  };
  // This rank's query heads [head_begin, +heads) and KV heads [kv_head_begin, +kv_heads).
  // `skew` must outlive this object.
  InfinigenShard(const ModelWeights& w, const kvcache::InfinigenSkew& skew, int64_t head_begin,
                 int64_t heads, int64_t kv_head_begin, int64_t kv_heads, Rope rope);

  const kvcache::InfinigenSkew* skew() const { return &skew_; }
  bool folded() const { return folded_; }
  // OPT only: folded rows of this rank, [heads·d, hidden] / [kv_heads·d, hidden], biases
  // [heads·d] / [kv_heads·d] (null when the model has none).
  const float* q_weight(int layer) const { return q_[layer].data(); }
  const float* k_weight(int layer) const { return k_[layer].data(); }
  const float* q_bias(int layer) const { return qb_[layer].empty() ? nullptr : qb_[layer].data(); }
  const float* k_bias(int layer) const { return kb_[layer].empty() ? nullptr : kb_[layer].data(); }
  // OPT only: the partial query weights of this rank, [heads·d', hidden] (each head's folded
  // rows at its partial columns), and their bias [heads·d'] (null when the model has none).
  const float* qp_weight(int layer) const { return qp_[layer].data(); }
  const float* qp_bias(int layer) const {
    return qpb_[layer].empty() ? nullptr : qpb_[layer].data();
  }
  // Llama only: x[t, h, :] ← x[t, h, :] · A(layer, KV head of h), in place. x: [tokens]
  // [num_heads][d] with row stride `stride`; `query` says whether heads are query heads.
  void SkewInPlace(int layer, float* x, int64_t tokens, int64_t stride, bool query) const;
  // Partial queries of layer `layer` at the given rows of `normed` ([*, hidden], the previous
  // layer's attention input) whose positions are `positions[row]`: out [rows][heads][d'].
  void PartialQuery(int layer, const float* normed, absl::Span<const int32_t> rows,
                    const int32_t* positions, std::vector<float>* out) const;

 private:
  const ModelWeights& w_;
  const kvcache::InfinigenSkew& skew_;
  int64_t head_begin_, heads_, kv_head_begin_, kv_heads_, group_;
  Rope rope_;
  bool folded_;
  std::vector<std::vector<float>> q_, k_, qb_, kb_;  // OPT folded, per layer
  std::vector<std::vector<float>> qp_, qpb_;         // OPT partial weights, per layer
};

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_INFINIGEN_FORWARD_H_

#include "engine/infinigen_forward.h"

#include <algorithm>

#include "kernels/ops.h"

namespace kvscope::engine {
namespace {

// out[i, :] = Σ_r A[r][i] · in[r, :] for the d rows of one head (W' = Aᵀ W). in/out: [d][cols].
void FoldRows(const float* a, int64_t d, const float* in, int64_t cols, float* out) {
  std::vector<double> acc(cols);
  for (int64_t i = 0; i < d; ++i) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t r = 0; r < d; ++r) {
      const double f = a[r * d + i];
      const float* row = in + r * cols;
      for (int64_t c = 0; c < cols; ++c) acc[c] += f * row[c];
    }
    for (int64_t c = 0; c < cols; ++c) out[i * cols + c] = static_cast<float>(acc[c]);
  }
}

}  // namespace

InfinigenShard::InfinigenShard(const ModelWeights& w, const kvcache::InfinigenSkew& skew,
                               int64_t head_begin, int64_t heads, int64_t kv_head_begin,
                               int64_t kv_heads, Rope rope)
    : w_(w),
      skew_(skew),
      head_begin_(head_begin),
      heads_(heads),
      kv_head_begin_(kv_head_begin),
      kv_heads_(kv_heads),
      group_(w.config.num_heads / w.config.num_kv_heads),
      rope_(rope),
      folded_(w.config.family == ModelFamily::kOpt) {
  if (!folded_) return;
  const int64_t layers = w.config.num_layers;
  const int64_t d = w.config.head_dim;
  const int64_t hidden = w.config.hidden_size;
  const int64_t pd = skew.partial_dim;
  q_.resize(layers);
  k_.resize(layers);
  qb_.resize(layers);
  kb_.resize(layers);
  qp_.resize(layers);
  qpb_.resize(layers);
  for (int64_t l = 0; l < layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    q_[l].resize(heads * d * hidden);
    k_[l].resize(kv_heads * d * hidden);
    if (!lw.q_bias.empty()) qb_[l].resize(heads * d);
    if (!lw.k_bias.empty()) kb_[l].resize(kv_heads * d);
    qp_[l].resize(heads * pd * hidden);
    if (!lw.q_bias.empty()) qpb_[l].resize(heads * pd);
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t gh = head_begin + h;
      const int32_t kvg = static_cast<int32_t>(gh / group_);
      const float* a = skew.A(static_cast<int32_t>(l), kvg);
      FoldRows(a, d, lw.q.data + gh * d * hidden, hidden, q_[l].data() + h * d * hidden);
      if (!lw.q_bias.empty()) FoldRows(a, d, lw.q_bias.data + gh * d, 1, qb_[l].data() + h * d);
      const int32_t* cols = skew.Columns(static_cast<int32_t>(l), kvg);
      for (int64_t c = 0; c < pd; ++c) {
        std::copy_n(q_[l].data() + (h * d + cols[c]) * hidden, hidden,
                    qp_[l].data() + (h * pd + c) * hidden);
        if (!qpb_[l].empty()) qpb_[l][h * pd + c] = qb_[l][h * d + cols[c]];
      }
    }
    for (int64_t h = 0; h < kv_heads; ++h) {
      const int64_t gk = kv_head_begin + h;
      const float* a = skew.A(static_cast<int32_t>(l), static_cast<int32_t>(gk));
      FoldRows(a, d, lw.k.data + gk * d * hidden, hidden, k_[l].data() + h * d * hidden);
      if (!lw.k_bias.empty()) FoldRows(a, d, lw.k_bias.data + gk * d, 1, kb_[l].data() + h * d);
    }
  }
}

void InfinigenShard::SkewInPlace(int layer, float* x, int64_t tokens, int64_t stride,
                                 bool query) const {
  const int64_t d = skew_.head_dim;
  const int64_t n = query ? heads_ : kv_heads_;
  std::vector<double> tmp(d);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < n; ++h) {
      const int64_t kvg = query ? (head_begin_ + h) / group_ : kv_head_begin_ + h;
      const float* a = skew_.A(layer, static_cast<int32_t>(kvg));
      float* v = x + t * stride + h * d;
      std::fill(tmp.begin(), tmp.end(), 0.0);
      for (int64_t i = 0; i < d; ++i) {
        const double vi = v[i];
        for (int64_t j = 0; j < d; ++j) tmp[j] += vi * a[i * d + j];
      }
      for (int64_t j = 0; j < d; ++j) v[j] = static_cast<float>(tmp[j]);
    }
  }
}

void InfinigenShard::PartialQuery(int layer, const float* normed, absl::Span<const int32_t> rows,
                                  const int32_t* positions, std::vector<float>* out) const {
  const int64_t hidden = w_.config.hidden_size;
  const int64_t d = skew_.head_dim;
  const int64_t pd = skew_.partial_dim;
  const int64_t m = static_cast<int64_t>(rows.size());
  std::vector<float> x(m * hidden);
  std::vector<int32_t> pos(m);
  for (int64_t r = 0; r < m; ++r) {
    std::copy_n(normed + static_cast<int64_t>(rows[r]) * hidden, hidden, x.data() + r * hidden);
    pos[r] = positions[rows[r]];
  }
  out->resize(m * heads_ * pd);
  if (folded_) {
    kernels::Linear(x.data(), m, hidden, qp_[layer].data(), heads_ * pd, hidden,
                    qpb_[layer].empty() ? nullptr : qpb_[layer].data(), out->data());
    return;
  }
  const LayerWeights& lw = w_.layers[layer];
  const int64_t width = heads_ * d;
  std::vector<float> q(m * width);
  kernels::Linear(x.data(), m, hidden, lw.q.data + head_begin_ * d * hidden, width, hidden,
                  lw.q_bias.empty() ? nullptr : lw.q_bias.data + head_begin_ * d, q.data());
  kernels::Rope(q.data(), m, heads_, d, width, pos.data(), rope_.inv_freq, rope_.rot_dim,
                rope_.scaling);
  SkewInPlace(layer, q.data(), m, width, /*query=*/true);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t h = 0; h < heads_; ++h) {
      const int32_t* cols = skew_.Columns(layer, static_cast<int32_t>((head_begin_ + h) / group_));
      for (int64_t c = 0; c < pd; ++c) {
        (*out)[(r * heads_ + h) * pd + c] = q[r * width + h * d + cols[c]];
      }
    }
  }
}

}  // namespace kvscope::engine

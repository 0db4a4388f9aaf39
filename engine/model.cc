#include "engine/model.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "kernels/ops.h"

namespace kvscope::engine {
namespace {

// A view of rows [row_begin, row_begin + rows) of a weight matrix, or an empty view.
const float* RowSlice(const WeightView& w, int64_t row_begin) {
  return w.empty() ? nullptr : w.data + row_begin * w.cols;
}

}  // namespace

std::vector<int> WorkingTensorParallelSizes(const ModelConfig& c, int limit) {
  std::vector<int> sizes;
  for (int t = 1; t <= limit; ++t) {
    const bool heads_split = c.num_heads % t == 0;
    const bool kv_split = c.num_kv_heads % t == 0 || t % c.num_kv_heads == 0;
    const bool mlp_split = c.intermediate_size % t == 0;
    if (heads_split && kv_split && mlp_split) sizes.push_back(t);
  }
  return sizes;
}

absl::Status ValidateSeqInputs(const ModelConfig& c, absl::Span<const SeqInput> batch) {
  for (const SeqInput& s : batch) {
    for (size_t j = 0; j < s.tokens.size(); ++j) {
      if (s.tokens[j] < 0 || s.tokens[j] >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "sequence ", s.seq_id, ": token id ", s.tokens[j], " at position ",
            s.start_position + static_cast<int64_t>(j), " is outside the vocabulary [0, ",
            c.vocab_size, ")"));
      }
    }
    const int64_t end = static_cast<int64_t>(s.start_position) + s.tokens.size();
    if (s.start_position < 0 || end > c.max_position_embeddings) {
      return absl::OutOfRangeError(absl::StrCat(
          "sequence ", s.seq_id, ": ", end, " tokens exceed the model's context of ",
          c.max_position_embeddings, " positions"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateTensorParallelSize(const ModelConfig& c, int tp_size) {
  if (tp_size >= 1) {
    for (int t : WorkingTensorParallelSizes(c, tp_size)) {
      if (t == tp_size) return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "tensor-parallel size ", tp_size, " cannot split this model (", c.num_heads,
      " attention heads, ", c.num_kv_heads, " KV heads, MLP width ", c.intermediate_size,
      "); sizes that work: ", absl::StrJoin(WorkingTensorParallelSizes(c), ", ")));
}

kvcache::KvGeometry KvGeometryFor(const ModelConfig& c, int tp) {
  kvcache::KvGeometry g;
  g.num_layers = static_cast<int32_t>(c.num_layers);
  // Split evenly, or one replicated KV head per rank when tp exceeds them (see ModelShard).
  g.kv_heads_per_rank = static_cast<int32_t>(c.num_kv_heads % tp == 0 ? c.num_kv_heads / tp : 1);
  g.head_dim = static_cast<int32_t>(c.head_dim);
  g.bytes_per_element = sizeof(float);
  g.tp_size = tp;
  g.num_heads_per_rank = static_cast<int32_t>(c.num_heads / tp);
  if (c.family == ModelFamily::kLlama) {
    float attention_scaling = 1.0f;
    g.rope_inv_freq = RopeInvFreq(c, &attention_scaling);
    g.rope_rot_dim = static_cast<int32_t>(RopeRotaryDim(c));
  }
  return g;
}

ModelShard::ModelShard(const ModelWeights& weights, int rank, int tp_size)
    : w_(weights), c_(weights.config), rank_(rank), tp_(tp_size) {
  heads_ = c_.num_heads / tp_;
  head_begin_ = rank_ * heads_;
  if (c_.num_kv_heads % tp_ == 0) {
    kv_heads_ = c_.num_kv_heads / tp_;
    kv_head_begin_ = rank_ * kv_heads_;
  } else {  // Replicated: the one KV head this rank's query heads read.
    kv_heads_ = 1;
    kv_head_begin_ = head_begin_ / (c_.num_heads / c_.num_kv_heads);
  }
  inter_ = c_.intermediate_size / tp_;
  if (c_.family == ModelFamily::kLlama) {
    inv_freq_ = RopeInvFreq(c_, &rope_scaling_);
    rot_dim_ = RopeRotaryDim(c_);
  }
}

kvcache::KvShape ModelShard::kv_shape() const {
  return kvcache::KvShape{static_cast<int32_t>(c_.num_layers), static_cast<int32_t>(kv_heads_),
                          static_cast<int32_t>(c_.head_dim)};
}

absl::Status ModelShard::Forward(absl::Span<const SeqInput> batch, kvcache::KvCache& kv,
                                 Communicator& comm, ForwardOutput* out) {
  // Pack the ragged batch token by token.
  tokens_ = 0;
  for (const SeqInput& s : batch) tokens_ += s.tokens.size();
  ids_.resize(tokens_);
  pos_.resize(tokens_);
  token_seq_.resize(tokens_);
  std::vector<kvcache::SeqStep> steps;
  steps.reserve(batch.size());
  int64_t t = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const SeqInput& s = batch[i];
    for (size_t j = 0; j < s.tokens.size(); ++j, ++t) {
      ids_[t] = s.tokens[j];
      pos_[t] = s.start_position + static_cast<int32_t>(j);
      token_seq_[t] = static_cast<int32_t>(i);
    }
    steps.push_back({s.seq_id, static_cast<int32_t>(s.tokens.size()), s.start_position});
  }
  KVSCOPE_RETURN_IF_ERROR(kv.PrepareStep(steps));
  ig_cache_ = dynamic_cast<kvcache::InfinigenKvCache*>(&kv);
  if (ig_cache_ != nullptr) {
    const kvcache::InfinigenSkew* skew = ig_cache_->skew();  // set: PrepareStep checked it
    if (ig_ == nullptr || ig_->skew() != skew) {
      ig_ = std::make_unique<InfinigenShard>(
          w_, *skew, head_begin_, heads_, kv_head_begin_, kv_heads_,
          InfinigenShard::Rope{inv_freq_.data(), rot_dim_, rope_scaling_});
    }
  }

  const int64_t hidden = c_.hidden_size;
  x_.resize(tokens_ * hidden);
  if (c_.family == ModelFamily::kLlama) {
    KVSCOPE_RETURN_IF_ERROR(
        kernels::Embedding(w_.embed.data, w_.embed.rows, hidden, ids_.data(), tokens_, x_.data()));
  } else {
    const int64_t embed_dim = w_.embed.cols;
    if (w_.project_in.empty()) {
      KVSCOPE_RETURN_IF_ERROR(kernels::Embedding(w_.embed.data, w_.embed.rows, embed_dim,
                                                 ids_.data(), tokens_, x_.data()));
    } else {
      normed_.resize(tokens_ * embed_dim);
      KVSCOPE_RETURN_IF_ERROR(kernels::Embedding(w_.embed.data, w_.embed.rows, embed_dim,
                                                 ids_.data(), tokens_, normed_.data()));
      kernels::Linear(normed_.data(), tokens_, embed_dim, w_.project_in.data, hidden, embed_dim,
                      nullptr, x_.data());
    }
    // Learned positions, stored at position + offset.
    std::vector<int32_t> rows(tokens_);
    for (int64_t i = 0; i < tokens_; ++i) rows[i] = pos_[i] + static_cast<int32_t>(c_.position_offset);
    proj_.resize(tokens_ * hidden);
    KVSCOPE_RETURN_IF_ERROR(kernels::Embedding(w_.positions.data, w_.positions.rows, hidden,
                                               rows.data(), tokens_, proj_.data()));
    kernels::AddInPlace(x_.data(), proj_.data(), tokens_ * hidden);
  }

  for (int layer = 0; layer < c_.num_layers; ++layer) {
    KVSCOPE_RETURN_IF_ERROR(Layer(layer, kv, comm));
  }
  if (rank_ == 0 && out != nullptr) ComputeLogits(batch, out);
  return absl::OkStatus();
}

absl::Status ModelShard::Layer(int layer, kvcache::KvCache& kv, Communicator& comm) {
  const LayerWeights& lw = w_.layers[layer];
  const int64_t hidden = c_.hidden_size;
  const bool llama = c_.family == ModelFamily::kLlama;
  const float eps = static_cast<float>(c_.norm_eps);
  normed_.resize(tokens_ * hidden);

  // Attention block.
  if (llama) {
    kernels::RmsNorm(x_.data(), lw.attn_norm.data, eps, tokens_, hidden, normed_.data());
  } else {
    kernels::LayerNorm(x_.data(), lw.attn_norm.data, lw.attn_norm_bias.data, eps, tokens_, hidden,
                       normed_.data());
  }
  // InfiniGen: from this layer's attention input, speculate which tokens layer + 1 reads
  // and prefetch them (kvcache/infinigen_kv_cache.h).
  if (ig_cache_ != nullptr && layer + 1 >= ig_cache_->manager().dense_layers() &&
      layer + 1 < c_.num_layers &&
      !ig_cache_->SpeculationRows().empty()) {
    ig_->PartialQuery(layer + 1, normed_.data(), ig_cache_->SpeculationRows(), pos_.data(),
                      &spec_q_);
    KVSCOPE_RETURN_IF_ERROR(ig_cache_->Speculate(layer + 1, spec_q_.data()));
  }
  KVSCOPE_RETURN_IF_ERROR(Attention(layer, kv));
  const int64_t d = c_.head_dim;
  proj_.resize(tokens_ * hidden);
  kernels::Linear(attn_.data(), tokens_, heads_ * d, lw.o.data + head_begin_ * d, hidden,
                  lw.o.cols, rank_ == 0 ? lw.o_bias.data : nullptr, proj_.data());
  KVSCOPE_RETURN_IF_ERROR(comm.AllReduceSum(proj_.data(), tokens_ * hidden));
  kernels::AddInPlace(x_.data(), proj_.data(), tokens_ * hidden);

  // MLP block.
  if (llama) {
    kernels::RmsNorm(x_.data(), lw.mlp_norm.data, eps, tokens_, hidden, normed_.data());
  } else {
    kernels::LayerNorm(x_.data(), lw.mlp_norm.data, lw.mlp_norm_bias.data, eps, tokens_, hidden,
                       normed_.data());
  }
  const int64_t row0 = rank_ * inter_;
  up_.resize(tokens_ * inter_);
  kernels::Linear(normed_.data(), tokens_, hidden, RowSlice(lw.up, row0), inter_, hidden,
                  lw.up_bias.empty() ? nullptr : lw.up_bias.data + row0, up_.data());
  if (llama) {
    gate_.resize(tokens_ * inter_);
    kernels::Linear(normed_.data(), tokens_, hidden, RowSlice(lw.gate, row0), inter_, hidden,
                    lw.gate_bias.empty() ? nullptr : lw.gate_bias.data + row0, gate_.data());
    kernels::SiluMul(gate_.data(), inter_, up_.data(), inter_, tokens_, inter_, up_.data(), inter_);
  } else {
    kernels::Relu(up_.data(), tokens_ * inter_);
  }
  kernels::Linear(up_.data(), tokens_, inter_, lw.down.data + row0, hidden, lw.down.cols,
                  rank_ == 0 ? lw.down_bias.data : nullptr, proj_.data());
  KVSCOPE_RETURN_IF_ERROR(comm.AllReduceSum(proj_.data(), tokens_ * hidden));
  kernels::AddInPlace(x_.data(), proj_.data(), tokens_ * hidden);
  return absl::OkStatus();
}

absl::Status ModelShard::Attention(int layer, kvcache::KvCache& kv) {
  const LayerWeights& lw = w_.layers[layer];
  const int64_t hidden = c_.hidden_size;
  const int64_t d = c_.head_dim;
  const int64_t q_width = heads_ * d;
  const int64_t kv_width = kv_heads_ * d;
  q_.resize(tokens_ * q_width);
  k_.resize(tokens_ * kv_width);
  v_.resize(tokens_ * kv_width);
  auto bias = [](const WeightView& b, int64_t begin) {
    return b.empty() ? nullptr : b.data + begin;
  };
  const float* wq = RowSlice(lw.q, head_begin_ * d);
  const float* bq = bias(lw.q_bias, head_begin_ * d);
  const float* wk = RowSlice(lw.k, kv_head_begin_ * d);
  const float* bk = bias(lw.k_bias, kv_head_begin_ * d);
  const bool skewed = ig_cache_ != nullptr;
  if (skewed && ig_->folded()) {  // OPT: the skew is folded into the weights
    wq = ig_->q_weight(layer);
    bq = ig_->q_bias(layer);
    wk = ig_->k_weight(layer);
    bk = ig_->k_bias(layer);
  }
  kernels::Linear(normed_.data(), tokens_, hidden, wq, q_width, hidden, bq, q_.data());
  kernels::Linear(normed_.data(), tokens_, hidden, wk, kv_width, hidden, bk, k_.data());
  kernels::Linear(normed_.data(), tokens_, hidden, RowSlice(lw.v, kv_head_begin_ * d), kv_width,
                  hidden, bias(lw.v_bias, kv_head_begin_ * d), v_.data());
  if (c_.family == ModelFamily::kLlama) {
    kernels::Rope(q_.data(), tokens_, heads_, d, q_width, pos_.data(), inv_freq_.data(), rot_dim_,
                  rope_scaling_);
    kernels::Rope(k_.data(), tokens_, kv_heads_, d, kv_width, pos_.data(), inv_freq_.data(),
                  rot_dim_, rope_scaling_);
    if (skewed) {  // Llama family: the skew follows RoPE
      ig_->SkewInPlace(layer, q_.data(), tokens_, q_width, /*query=*/true);
      ig_->SkewInPlace(layer, k_.data(), tokens_, kv_width, /*query=*/false);
    }
  }
  if (qk_observer_) qk_observer_(layer, q_.data(), k_.data(), tokens_);
  const kernels::KvPoolView pool = kv.Pool(layer);
  if (pool.k == nullptr || pool.v == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layer ", layer, ": the KV cache has no host K/V storage (it was created for a GPU "
        "engine, KvManagerContext::host_kv_storage false); the CPU engine needs a cache "
        "with storage"));
  }
  KVSCOPE_RETURN_IF_ERROR(kernels::WriteKv(pool, k_.data(), v_.data(), kv_width,
                                           kv.NewTokenSlots().data(), tokens_));
  absl::Span<const kernels::SeqKvView> views = kv.SeqViews(layer);
  int64_t max_cached = 0;
  float* mass = kv.AttentionMassBuffer(layer, static_cast<int32_t>(heads_), &max_cached);
  attn_.resize(tokens_ * q_width);
  KVSCOPE_RETURN_IF_ERROR(kernels::Attention(
      q_.data(), q_width, tokens_, static_cast<int32_t>(heads_), static_cast<int32_t>(d),
      token_seq_.data(), pos_.data(), pool, views.data(), static_cast<int32_t>(views.size()),
      static_cast<float>(1.0 / std::sqrt(static_cast<double>(d))), attn_.data(), q_width, mass,
      max_cached));
  if (skewed && ig_cache_->WantsMassSample(layer)) {
    ig_cache_->SampleAttentionMass(layer, q_.data(), q_width,
                                   static_cast<float>(1.0 / std::sqrt(static_cast<double>(d))));
  }
  kv.OnAttention(layer);
  return absl::OkStatus();
}

void ModelShard::ComputeLogits(absl::Span<const SeqInput> batch, ForwardOutput* out) {
  const int64_t hidden = c_.hidden_size;
  // Token rows whose logits are wanted.
  std::vector<int64_t> rows;
  out->row_begin.assign(1, 0);
  int64_t t = 0;
  for (const SeqInput& s : batch) {
    const int64_t n = s.tokens.size();
    if (s.all_logits) {
      for (int64_t j = 0; j < n; ++j) rows.push_back(t + j);
    } else if (n > 0) {
      rows.push_back(t + n - 1);
    }
    t += n;
    out->row_begin.push_back(rows.size());
  }
  const int64_t r = rows.size();
  normed_.resize(r * hidden);
  for (int64_t i = 0; i < r; ++i) {
    std::copy_n(x_.data() + rows[i] * hidden, hidden, normed_.data() + i * hidden);
  }
  const float eps = static_cast<float>(c_.norm_eps);
  if (c_.family == ModelFamily::kLlama) {
    kernels::RmsNorm(normed_.data(), w_.final_norm.data, eps, r, hidden, normed_.data());
  } else if (!w_.final_norm.empty()) {
    kernels::LayerNorm(normed_.data(), w_.final_norm.data, w_.final_norm_bias.data, eps, r, hidden,
                       normed_.data());
  }
  const float* features = normed_.data();
  int64_t feature_dim = hidden;
  if (!w_.project_out.empty()) {
    feature_dim = w_.project_out.rows;
    proj_.resize(r * feature_dim);
    kernels::Linear(normed_.data(), r, hidden, w_.project_out.data, feature_dim, hidden, nullptr,
                    proj_.data());
    features = proj_.data();
  }
  out->vocab_size = w_.lm_head.rows;
  out->logits.resize(r * out->vocab_size);
  kernels::Linear(features, r, feature_dim, w_.lm_head.data, out->vocab_size, feature_dim,
                  nullptr, out->logits.data());
}

}  // namespace kvscope::engine

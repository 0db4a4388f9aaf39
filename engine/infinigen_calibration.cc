#include "engine/infinigen_calibration.h"

#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/communicator.h"
#include "engine/model.h"
#include "kvcache/full_kv_cache.h"
#include "kvcache/infinigen_kv_cache.h"

namespace kvscope::engine {
namespace {

// Singular values (descending, length min(m, n)) and, if `vt` is non-null, the full Vᵀ
// [n][n] of the row-major matrix a [m][n] (destroyed).
absl::Status Svd(std::vector<double>& a, int64_t m, int64_t n, std::vector<double>* sigma,
                 std::vector<double>* vt) {
  const int64_t k = std::min(m, n);
  sigma->assign(k, 0.0);
  std::vector<double> superb(std::max<int64_t>(k, 2));
  std::vector<double> dummy(1);
  if (vt != nullptr) vt->assign(n * n, 0.0);
  const lapack_int info =
      LAPACKE_dgesvd(LAPACK_ROW_MAJOR, 'N', vt != nullptr ? 'A' : 'N', static_cast<lapack_int>(m),
                     static_cast<lapack_int>(n), a.data(), static_cast<lapack_int>(n),
                     sigma->data(), dummy.data(), 1, vt != nullptr ? vt->data() : dummy.data(),
                     static_cast<lapack_int>(vt != nullptr ? n : 1), superb.data());
  if (info != 0) return absl::InternalError(absl::StrCat("LAPACKE_dgesvd failed: info ", info));
  return absl::OkStatus();
}

}  // namespace

std::vector<int32_t> CalibrationPrompt(const ModelConfig& config, int32_t n, uint64_t seed) {
  n = static_cast<int32_t>(std::min<int64_t>(n, config.max_position_embeddings));
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(config.vocab_size - 1));
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) id = dist(rng);
  return ids;
}

absl::StatusOr<kvcache::InfinigenSkew> CalibrateInfinigen(const ModelWeights& weights,
                                                          absl::Span<const int32_t> tokens,
                                                          int32_t partial_dim) {
  const ModelConfig& c = weights.config;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t d = c.head_dim;
  if (n < 2) return absl::InvalidArgumentError("infinigen calibration needs >= 2 tokens");
  if (n > c.max_position_embeddings) {
    return absl::InvalidArgumentError("infinigen calibration prompt exceeds the model context");
  }
  if (partial_dim < 1 || partial_dim > d) {
    return absl::InvalidArgumentError(
        absl::StrCat("infinigen: partial_dim ", partial_dim, " outside [1, ", d, "]"));
  }
  for (int32_t id : tokens) {
    if (id < 0 || id >= c.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("infinigen calibration token ", id, " is outside the vocabulary"));
    }
  }
  const int64_t heads = c.num_heads, kv_heads = c.num_kv_heads, group = heads / kv_heads;
  const int64_t layers = c.num_layers;
  // Post-RoPE queries and keys of every layer from one full-cache forward.
  std::vector<std::vector<float>> qs(layers), ks(layers);
  ModelShard shard(weights, 0, 1);
  shard.set_qk_observer([&](int layer, const float* q, const float* k, int64_t t) {
    qs[layer].assign(q, q + t * heads * d);
    ks[layer].assign(k, k + t * kv_heads * d);
  });
  kvcache::FullKvCache cache(shard.kv_shape(), kvcache::FullKvCache::Options{16, 0});
  LocalCommGroup group_comm(1);
  std::unique_ptr<Communicator> comm = group_comm.ForRank(0);
  const SeqInput input{0, tokens, 0, false};
  KVSCOPE_RETURN_IF_ERROR(shard.Forward(absl::MakeConstSpan(&input, 1), cache, *comm, nullptr));

  kvcache::InfinigenSkew skew;
  skew.num_layers = static_cast<int32_t>(layers);
  skew.num_kv_heads = static_cast<int32_t>(kv_heads);
  skew.head_dim = static_cast<int32_t>(d);
  skew.partial_dim = partial_dim;
  skew.default_alpha = c.family == ModelFamily::kOpt ? 4.0 : 5.0;
  skew.a.resize(layers * kv_heads * d * d);
  skew.columns.resize(layers * kv_heads * partial_dim);
  std::vector<double> qm, km, sq, sk, vt, s(d);
  std::vector<int32_t> order(d);
  for (int64_t l = 0; l < layers; ++l) {
    for (int64_t g = 0; g < kv_heads; ++g) {
      const int64_t rows = n * group;
      qm.resize(rows * d);
      for (int64_t t = 0; t < n; ++t) {
        for (int64_t j = 0; j < group; ++j) {
          const float* src = qs[l].data() + (t * heads + g * group + j) * d;
          std::copy(src, src + d, qm.begin() + (t * group + j) * d);
        }
      }
      const std::vector<double> q_copy = qm;
      km.resize(n * d);
      for (int64_t t = 0; t < n; ++t) {
        const float* src = ks[l].data() + (t * kv_heads + g) * d;
        std::copy(src, src + d, km.begin() + t * d);
      }
      KVSCOPE_RETURN_IF_ERROR(Svd(qm, rows, d, &sq, &vt));
      KVSCOPE_RETURN_IF_ERROR(Svd(km, n, d, &sk, nullptr));
      for (int64_t i = 0; i < d; ++i) {
        s[i] = (i < static_cast<int64_t>(sq.size()) ? sq[i] : 0.0) *
               (i < static_cast<int64_t>(sk.size()) ? sk[i] : 0.0);
      }
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int32_t x, int32_t y) { return s[x] > s[y]; });
      float* a = skew.a.data() + (l * kv_heads + g) * d * d;
      // Column j of A is right singular vector order[j] (row order[j] of Vᵀ).
      for (int64_t i = 0; i < d; ++i) {
        for (int64_t j = 0; j < d; ++j) a[i * d + j] = static_cast<float>(vt[order[j] * d + i]);
      }
      // Partial columns: largest Σ |Q·A| over the calibration rows.
      std::vector<double> mag(d, 0.0);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < d; ++j) {
          double v = 0;
          for (int64_t i = 0; i < d; ++i) v += q_copy[r * d + i] * a[i * d + j];
          mag[j] += std::abs(v);
        }
      }
      std::vector<int32_t> cols(d);
      std::iota(cols.begin(), cols.end(), 0);
      std::stable_sort(cols.begin(), cols.end(),
                       [&](int32_t x, int32_t y) { return mag[x] > mag[y]; });
      cols.resize(partial_dim);
      std::sort(cols.begin(), cols.end());
      std::copy(cols.begin(), cols.end(), skew.columns.begin() + (l * kv_heads + g) * partial_dim);
    }
  }
  return skew;
}

absl::Status PrepareInfinigen(const ModelWeights& weights, kvcache::KvCache& cache) {
  auto* ig = dynamic_cast<kvcache::InfinigenKvCache*>(&cache);
  if (ig == nullptr || ig->skew() != nullptr) return absl::OkStatus();
  kvcache::InfinigenKvManager& manager = ig->manager();
  const auto& text = manager.options().calibration_ids;
  std::vector<int32_t> prompt;
  if (text != nullptr && !text->empty()) {
    // The reference calibrates on the first tokens of a text (2048 of a PG-19 book).
    const size_t n = std::min<size_t>(
        text->size(), static_cast<size_t>(std::max<int64_t>(2, weights.config.max_position_embeddings)));
    prompt.assign(text->begin(), text->begin() + static_cast<std::ptrdiff_t>(n));
  } else {
    prompt = CalibrationPrompt(weights.config, manager.options().calibration_tokens,
                               manager.options().calibration_seed);
  }
  KVSCOPE_ASSIGN_OR_RETURN(kvcache::InfinigenSkew skew,
                           CalibrateInfinigen(weights, prompt, manager.partial_dim()));
  return manager.SetSkew(std::make_shared<const kvcache::InfinigenSkew>(std::move(skew)));
}

}  // namespace kvscope::engine

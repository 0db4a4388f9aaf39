// File: engine/infinigen_calibration.h
//
// InfiniGen's offline step (kv-strategies.md §4.2-4.3): runs the model once over a
// calibration prompt with a full cache, collects every layer's queries and keys as the
// attention op sees them (after RoPE for the Llama family), and per layer and KV head:
//   SVD  Q_g = U_q Σ_q V_qᵀ (Q_g: the group's query heads' rows stacked, [tokens·group, d]),
//        K = U_k Σ_k V_kᵀ (LAPACKE_dgesvd, double precision);
//   A    = V_q with its columns sorted by σ_q ⊙ σ_k, descending (orthogonal);
//   columns: the d' skewed columns with the largest Σ |Q_g · A| over the calibration rows.
// The reference calibrates on a text (the first 2048 tokens of a PG-19 book); callers pass
// any token ids: tokenized text when a tokenizer is at hand, or CalibrationPrompt's seeded
// random ids (what the engine uses by default, and the only choice for presets).
#ifndef KVSCOPE_ENGINE_INFINIGEN_CALIBRATION_H_
#define KVSCOPE_ENGINE_INFINIGEN_CALIBRATION_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/weights.h"
#include "kvcache/infinigen_skew.h"
#include "kvcache/kv_cache.h"

namespace kvscope::engine {

// `n` seeded pseudo-random token ids in [0, vocab), capped at the model's context.
std::vector<int32_t> CalibrationPrompt(const ModelConfig& config, int32_t n, uint64_t seed);

// The skewing artefacts for `partial_dim` columns per head. InvalidArgument for fewer than 2
// tokens, ids outside the vocabulary, or partial_dim outside [1, head_dim]; Internal if the
// SVD fails.
absl::StatusOr<kvcache::InfinigenSkew> CalibrateInfinigen(const ModelWeights& weights,
                                                          absl::Span<const int32_t> tokens,
                                                          int32_t partial_dim);

// If `cache` is an InfinigenKvCache whose manager has no skewing matrices yet, calibrates on
// the manager's calibration text (options calibration_ids: its first tokens, up to the
// model's context) or else its seeded random prompt (calibration_tokens / calibration_seed)
// and sets them. Other caches: nothing to do.
absl::Status PrepareInfinigen(const ModelWeights& weights, kvcache::KvCache& cache);

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_INFINIGEN_CALIBRATION_H_

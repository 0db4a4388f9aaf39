// File: engine/quality.h
//
// The quality cost of a KV strategy against the full cache (../shared/reference/
// kv-strategies.md section 6.2): teacher-forced top-1 agreement and KL(p_full ‖ p_strategy)
// on the full cache's greedy continuation, and perplexity of a token sequence.
//
// Protocol of EvaluateTeacherForced (batch = 1, deterministic):
//   1. Full cache (the engine's default FullKvCache): prefill the prompt, then greedy decode
//      (argmax, lowest id on ties) for num_steps tokens y[0..n). full_logits[t] is the
//      distribution y[t] was chosen from (t = 0: the prefill's last row).
//   2. The strategy: a fresh KvManager and an engine on its rank caches; the manager is
//      driven as the scheduler does (CanAdmit, Admit, Append, Plan, Forward): the whole prompt
//      in one step, then y[0], y[1], ... one token per step (teacher forcing, so errors do not
//      compound). Step t's logits are compared with full_logits[t].
// Perplexity scores ids[1..N) given their prefixes: the first `prefill` tokens (default 1)
// are computed in one step (all rows kept), then one token per step, so that a strategy's
// eviction / selection applies as it does in decoding. exp(mean NLL) over N - 1 tokens.
//
// Everything here runs on the calling thread (the engine's own threads aside). The engines
// are CPU engines unless a QualityEngineFactory builds others (the GPU engine, for a
// `backend: cuda` bench: engine/cuda/gpu_engine.h, GpuQualityEngineFactory).
#ifndef KVSCOPE_ENGINE_QUALITY_H_
#define KVSCOPE_ENGINE_QUALITY_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/gang_engine.h"
#include "engine/metrics.h"
#include "engine/weights.h"
#include "engine/workload.h"
#include "kvcache/kv_manager.h"

namespace kvscope::engine {

// KL(softmax(p) ‖ softmax(q)) in nats, computed in double with log-sum-exp. Always >= 0
// (tiny negative rounding is clamped to 0); +inf when q gives zero probability (-inf logit)
// where p does not. vocab must be >= 1.
double KlDivergence(const float* p_logits, const float* q_logits, int64_t vocab);
// Index of the largest logit (the lowest index on ties).
int32_t ArgmaxLogit(const float* logits, int64_t vocab);
// Whether both rows pick the same greedy token.
bool Top1Agree(const float* p_logits, const float* q_logits, int64_t vocab);
// -log softmax(logits)[target] in double.
double NegLogProb(const float* logits, int64_t vocab, int32_t target);

struct QualityStats {
  double mean_kl = 0;
  double p50_kl = 0, p90_kl = 0, p99_kl = 0;  // Percentile() of metrics.h (numpy linear)
  double top1_agreement = 0;                  // fraction of steps in [0, 1]
  int64_t steps = 0;
};

// Aggregates per-step KL values and agreement flags (equal sizes; all 0 when empty).
QualityStats AggregateQuality(const std::vector<double>& kl, const std::vector<bool>& agree);
// Compares two [steps][vocab] logit sequences row by row (p = reference, q = strategy).
// InvalidArgument when the shapes differ.
absl::StatusOr<QualityStats> CompareLogits(const std::vector<std::vector<float>>& p,
                                           const std::vector<std::vector<float>>& q);

// Builds a fresh manager for one evaluation. Lets tests (and strategies not in the registry)
// plug in their own; the string overloads use kvcache::CreateKvManager.
using KvManagerFactory = std::function<absl::StatusOr<std::unique_ptr<kvcache::KvManager>>()>;

// Builds the engine of one evaluation over all `tp_size` ranks: with `manager` null the full
// cache, else rank caches from manager->CreateRankCache (the manager outlives the engine).
// The evaluation drives it as the scheduler does: KvManager::Plan, GangEngine::ApplyPlan,
// Forward, and Release at the end.
using QualityEngineFactory = std::function<absl::StatusOr<std::unique_ptr<GangEngine>>(
    std::shared_ptr<const ModelWeights> weights, kvcache::KvManager* manager, int tp_size)>;
// The CPU engine with `num_threads` threads (0 = every core): the default everywhere here.
QualityEngineFactory CpuQualityEngineFactory(int num_threads);

// InvalidArgument for an empty prompt, num_steps < 1, or prompt + num_steps beyond the model's
// context; the strategy's errors (admission, out of memory: ResourceExhausted) pass through.
// The engines use tp = ctx.geometry.tp_size and `num_threads` CPU threads (0 = every core).
absl::StatusOr<QualityStats> EvaluateTeacherForced(
    std::shared_ptr<const ModelWeights> weights, const std::string& strategy,
    const std::map<std::string, std::string>& params, const kvcache::KvManagerContext& ctx,
    const std::vector<int32_t>& prompt, int32_t num_steps, int num_threads = 0);
absl::StatusOr<QualityStats> EvaluateTeacherForced(std::shared_ptr<const ModelWeights> weights,
                                                   const KvManagerFactory& make_manager,
                                                   int tp_size, const std::vector<int32_t>& prompt,
                                                   int32_t num_steps, int num_threads = 0);

// Perplexity of `ids` (N >= 2 tokens, N <= the model's context) under the strategy; see the
// protocol above. `prefill` in [1, N - 1].
absl::StatusOr<double> Perplexity(std::shared_ptr<const ModelWeights> weights,
                                  const std::string& strategy,
                                  const std::map<std::string, std::string>& params,
                                  const kvcache::KvManagerContext& ctx,
                                  const std::vector<int32_t>& ids, int32_t prefill = 1,
                                  int num_threads = 0);
absl::StatusOr<double> Perplexity(std::shared_ptr<const ModelWeights> weights,
                                  const KvManagerFactory& make_manager, int tp_size,
                                  const std::vector<int32_t>& ids, int32_t prefill = 1,
                                  int num_threads = 0);
// The same with the full cache (no manager).
absl::StatusOr<double> FullCachePerplexity(std::shared_ptr<const ModelWeights> weights,
                                           int tp_size, const std::vector<int32_t>& ids,
                                           int32_t prefill = 1, int num_threads = 0);

// ---- `kvscope bench` integration ----

// Whether `strategy` drops or approximates KV (h2o, streaming, infinigen), so that quality is
// checked by default.
bool IsLossyStrategy(const std::string& strategy);

struct BenchQualityOptions {
  // Fraction of requests checked; < 0 = default (1 for lossy strategies, 0 otherwise).
  double sample_rate = -1;
  // Teacher-forced steps per request; <= 0 = the request's output length capped at 64.
  int32_t steps = 0;
  // Tokens whose perplexity is reported (empty = none), already tokenized.
  std::vector<int32_t> perplexity_ids;
  // Tokens computed in the first step of the perplexity run (see Perplexity); at least 1,
  // at most len - 1. Texts longer than the context (max_model_len) are cut to its length.
  int32_t perplexity_prefill = 1;
  uint64_t seed = 0;  // picks the requests (the workload seed)
  int num_threads = 0;
  // The engines of the checks; null = CpuQualityEngineFactory(num_threads). The full-cache
  // engine is built once and reused for every request; each request's strategy engine is
  // built over a fresh manager, whose rank caches keep host K/V storage only when
  // host_kv_storage (false for engines that keep the K/V themselves, as the GPU engine).
  // infinigen's skew is calibrated once, by the first strategy engine, and set on every
  // later manager.
  QualityEngineFactory engine_factory;
  bool host_kv_storage = true;
};

struct BenchQualityReport {
  int64_t sampled = 0;  // requests chosen
  int64_t measured = 0;  // of those, measured (the rest failed or could not be rebuilt)
  double sample_rate = 0;  // the rate used
  std::optional<double> perplexity, perplexity_full;
  std::string perplexity_error;  // why the strategy's perplexity is missing ("" if it is not)
  std::vector<std::string> warnings;  // one per request that could not be measured
};

// Validates the options (sample rate in [0, 1] or < 0 for the default, steps >= 0).
absl::Status ValidateBenchQualityOptions(const BenchQualityOptions& options);

// After a serving run: measures the sampled requests (their prompts rebuilt from the workload
// and, for later turns of a conversation, the earlier turns' outputs) and fills their
// quality_mean_kl / quality_top1_agreement, then the perplexities when ids are given.
// Requests that never started get no value. A request whose check fails gets no value and
// a warning; a strategy that cannot run the perplexity text leaves perplexity unset with
// perplexity_error. Errors only for bad options or a failing full-cache perplexity.
absl::StatusOr<BenchQualityReport> MeasureBenchQuality(
    std::shared_ptr<const ModelWeights> weights, const std::string& strategy,
    const std::map<std::string, std::string>& params, const kvcache::KvManagerContext& ctx,
    const std::vector<RequestSpec>& workload, const BenchQualityOptions& options,
    std::vector<RequestRecord>* records);

// Sets summary->quality_mean_kl / quality_top1_agreement from the records (means over those
// carrying a finite value, as Summarize) and the perplexity fields from the report.
void ApplyQualityToSummary(const std::vector<RequestRecord>& records,
                           const BenchQualityReport& report, Summary* summary);

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_QUALITY_H_

#include "engine/quality.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/engine.h"
#include "kvcache/infinigen_kv_manager.h"
#include "kvcache/registry.h"

namespace kvscope::engine {
namespace {

// log Σ exp(x_i) in double.
double LogSumExp(const float* x, int64_t n) {
  double max = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i) max = std::max<double>(max, x[i]);
  if (!std::isfinite(max)) return max;
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - max);
  return max + std::log(sum);
}

// Runs one sequence through an engine, optionally driving a KvManager as the scheduler does.
class SeqDriver {
 public:
  static constexpr int64_t kSeqId = 1;

  SeqDriver(GangEngine& engine, kvcache::KvManager* manager)
      : engine_(engine), manager_(manager) {}
  ~SeqDriver() {
    engine_.Release(kSeqId);
    if (manager_ != nullptr) manager_->Free(kSeqId);
  }

  // First step: `tokens` at positions [0, n). `max_new_tokens` is what follows (admission).
  absl::StatusOr<ForwardOutput> Start(absl::Span<const int32_t> tokens, int32_t max_new_tokens,
                                      bool all_logits) {
    if (manager_ != nullptr) {
      const kvcache::SeqRequest request{kSeqId, tokens, max_new_tokens};
      const kvcache::Admission admission = manager_->CanAdmit(request);
      if (admission.status != kvcache::AdmitStatus::kOk) {
        return absl::ResourceExhaustedError(absl::StrCat(
            manager_->name(), " cannot admit a sequence of ", tokens.size(), " + ",
            max_new_tokens, " tokens",
            admission.reason.empty() ? std::string() : absl::StrCat(": ", admission.reason)));
      }
      KVSCOPE_ASSIGN_OR_RETURN(const int32_t cached, manager_->Admit(request));
      if (cached != 0) {
        // A fresh manager has no prefix cache; all tokens are computed so logits exist.
        return absl::InternalError(absl::StrCat(manager_->name(), " reported ", cached,
                                                " cached tokens for a fresh sequence"));
      }
    }
    return Step(tokens, all_logits);
  }

  // Next token(s) continuing where the sequence stopped.
  absl::StatusOr<ForwardOutput> Step(absl::Span<const int32_t> tokens, bool all_logits) {
    const int32_t start = position_;
    if (manager_ != nullptr) {
      if (!manager_->Append(kSeqId, tokens)) {
        return absl::ResourceExhaustedError(
            absl::StrCat(manager_->name(), " ran out of KV memory at ",
                         start + static_cast<int64_t>(tokens.size()), " tokens"));
      }
      const kvcache::SeqStep step{kSeqId, static_cast<int32_t>(tokens.size()), start};
      KVSCOPE_ASSIGN_OR_RETURN(const kvcache::StepPlan* plan,
                               manager_->Plan(absl::MakeConstSpan(&step, 1)));
      // Engines that hold the K/V themselves mirror the plan's block moves (the GPU engine).
      KVSCOPE_RETURN_IF_ERROR(engine_.ApplyPlan(*plan));
    }
    const SeqInput input{kSeqId, tokens, start, all_logits};
    KVSCOPE_ASSIGN_OR_RETURN(ForwardOutput out, engine_.Forward(absl::MakeConstSpan(&input, 1)));
    position_ += static_cast<int32_t>(tokens.size());
    return out;
  }

 private:
  GangEngine& engine_;
  kvcache::KvManager* manager_;
  int32_t position_ = 0;
};

std::vector<float> LastRow(const ForwardOutput& out) {
  const float* row = out.Row(out.row_begin[1] - 1);
  return std::vector<float>(row, row + out.vocab_size);
}

// Per-step logits of the teacher-forced continuation: the prompt in one step, then each of
// forced[0 .. n-1) in its own step; returns n rows. With `forced` empty, greedy: the
// argmax of each row is fed next (and appended to `*greedy`).
absl::StatusOr<std::vector<std::vector<float>>> RunContinuation(
    GangEngine& engine, kvcache::KvManager* manager, const std::vector<int32_t>& prompt,
    int32_t num_steps, const std::vector<int32_t>* forced, std::vector<int32_t>* greedy) {
  SeqDriver driver(engine, manager);
  std::vector<std::vector<float>> rows;
  rows.reserve(num_steps);
  KVSCOPE_ASSIGN_OR_RETURN(ForwardOutput out, driver.Start(prompt, num_steps, false));
  rows.push_back(LastRow(out));
  for (int32_t t = 1; t < num_steps; ++t) {
    int32_t next;
    if (forced != nullptr) {
      next = (*forced)[t - 1];
    } else {
      next = ArgmaxLogit(rows.back().data(), static_cast<int64_t>(rows.back().size()));
      greedy->push_back(next);
    }
    KVSCOPE_ASSIGN_OR_RETURN(out, driver.Step(absl::MakeConstSpan(&next, 1), false));
    rows.push_back(LastRow(out));
  }
  if (forced == nullptr) {
    greedy->push_back(ArgmaxLogit(rows.back().data(), static_cast<int64_t>(rows.back().size())));
  }
  return rows;
}

absl::Status CheckIds(const ModelConfig& config, const std::vector<int32_t>& ids,
                      const char* what) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(what, " token ", i, " (id ", ids[i],
                                                     ") is outside the vocabulary of ",
                                                     config.vocab_size));
    }
  }
  return absl::OkStatus();
}

// `engine`: an engine over `manager` to use (null: one from make_engine).
absl::StatusOr<double> PerplexityImpl(std::shared_ptr<const ModelWeights> weights,
                                      kvcache::KvManager* manager, int tp_size,
                                      const std::vector<int32_t>& ids, int32_t prefill,
                                      const QualityEngineFactory& make_engine,
                                      GangEngine* engine = nullptr) {
  if (weights == nullptr) return absl::InvalidArgumentError("perplexity: no model weights");
  const int64_t n = static_cast<int64_t>(ids.size());
  if (n < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("perplexity needs at least 2 tokens, got ", n));
  }
  if (n > weights->config.max_position_embeddings) {
    return absl::InvalidArgumentError(
        absl::StrCat("perplexity of ", n, " tokens exceeds the model's context of ",
                     weights->config.max_position_embeddings));
  }
  if (prefill < 1 || prefill > n - 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("perplexity prefill must be in [1, ", n - 1, "], got ", prefill));
  }
  KVSCOPE_RETURN_IF_ERROR(CheckIds(weights->config, ids, "perplexity"));
  std::unique_ptr<GangEngine> owned;
  if (engine == nullptr) {
    KVSCOPE_ASSIGN_OR_RETURN(owned, make_engine(weights, manager, tp_size));
    engine = owned.get();
  }
  SeqDriver driver(*engine, manager);
  double nll = 0;
  KVSCOPE_ASSIGN_OR_RETURN(
      ForwardOutput out,
      driver.Start(absl::MakeConstSpan(ids.data(), prefill), static_cast<int32_t>(n - prefill),
                   true));
  for (int32_t i = 0; i < prefill; ++i) nll += NegLogProb(out.Row(i), out.vocab_size, ids[i + 1]);
  for (int64_t i = prefill; i + 1 < n; ++i) {
    KVSCOPE_ASSIGN_OR_RETURN(out, driver.Step(absl::MakeConstSpan(&ids[i], 1), false));
    nll += NegLogProb(out.Row(0), out.vocab_size, ids[i + 1]);
  }
  return std::exp(nll / static_cast<double>(n - 1));
}

// host_kv_storage: true for CPU engines, whose caches hold the K/V.
KvManagerFactory RegistryFactory(const std::string& strategy,
                                 const std::map<std::string, std::string>& params,
                                 const kvcache::KvManagerContext& ctx,
                                 bool host_kv_storage = true) {
  kvcache::KvManagerContext run_ctx = ctx;
  run_ctx.host_kv_storage = host_kv_storage;
  return [strategy, params, run_ctx]() {
    return kvcache::CreateKvManager(strategy, params, run_ctx);
  };
}

// EvaluateTeacherForced with its engines from make_engine; `full_engine` (optional) is a
// full-cache engine to reuse for step (a).
absl::StatusOr<QualityStats> EvaluateTeacherForcedImpl(
    std::shared_ptr<const ModelWeights> weights, const KvManagerFactory& make_manager,
    int tp_size, const std::vector<int32_t>& prompt, int32_t num_steps,
    const QualityEngineFactory& make_engine, GangEngine* full_engine) {
  if (weights == nullptr) return absl::InvalidArgumentError("quality: no model weights");
  if (prompt.empty()) return absl::InvalidArgumentError("quality: the prompt is empty");
  if (num_steps < 1) {
    return absl::InvalidArgumentError(absl::StrCat("quality: steps must be >= 1, got ", num_steps));
  }
  const int64_t context = weights->config.max_position_embeddings;
  if (static_cast<int64_t>(prompt.size()) + num_steps - 1 > context) {
    return absl::InvalidArgumentError(
        absl::StrCat("quality: prompt of ", prompt.size(), " tokens + ", num_steps,
                     " steps exceeds the model's context of ", context));
  }
  KVSCOPE_RETURN_IF_ERROR(CheckIds(weights->config, prompt, "quality: prompt"));

  // (a) The full cache, greedy.
  std::vector<int32_t> continuation;
  std::vector<std::vector<float>> full;
  {
    std::unique_ptr<GangEngine> owned;
    if (full_engine == nullptr) {
      KVSCOPE_ASSIGN_OR_RETURN(owned, make_engine(weights, nullptr, tp_size));
      full_engine = owned.get();
    }
    KVSCOPE_ASSIGN_OR_RETURN(
        full, RunContinuation(*full_engine, nullptr, prompt, num_steps, nullptr, &continuation));
  }
  // (b) The strategy, teacher-forced on the continuation.
  KVSCOPE_ASSIGN_OR_RETURN(std::unique_ptr<kvcache::KvManager> manager, make_manager());
  if (manager == nullptr) return absl::InternalError("quality: the factory built no manager");
  std::vector<std::vector<float>> strategy;
  {
    KVSCOPE_ASSIGN_OR_RETURN(std::unique_ptr<GangEngine> engine,
                             make_engine(weights, manager.get(), tp_size));
    KVSCOPE_ASSIGN_OR_RETURN(strategy, RunContinuation(*engine, manager.get(), prompt, num_steps,
                                                       &continuation, nullptr));
  }  // the engine (and its rank caches) go before the manager
  return CompareLogits(full, strategy);
}

}  // namespace

double KlDivergence(const float* p, const float* q, int64_t vocab) {
  const double lse_p = LogSumExp(p, vocab);
  const double lse_q = LogSumExp(q, vocab);
  double kl = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    const double log_p = static_cast<double>(p[i]) - lse_p;
    if (std::isinf(log_p) && log_p < 0) continue;  // p_i = 0 contributes nothing
    const double log_q = static_cast<double>(q[i]) - lse_q;
    kl += std::exp(log_p) * (log_p - log_q);
  }
  return std::isnan(kl) ? kl : std::max(0.0, kl);
}

int32_t ArgmaxLogit(const float* logits, int64_t vocab) {
  int32_t best = 0;
  for (int64_t i = 1; i < vocab; ++i) {
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

bool Top1Agree(const float* p_logits, const float* q_logits, int64_t vocab) {
  return ArgmaxLogit(p_logits, vocab) == ArgmaxLogit(q_logits, vocab);
}

double NegLogProb(const float* logits, int64_t vocab, int32_t target) {
  return LogSumExp(logits, vocab) - static_cast<double>(logits[target]);
}

QualityStats AggregateQuality(const std::vector<double>& kl, const std::vector<bool>& agree) {
  QualityStats s;
  s.steps = static_cast<int64_t>(kl.size());
  if (kl.empty()) return s;
  double sum = 0;
  for (double v : kl) sum += v;
  s.mean_kl = sum / static_cast<double>(kl.size());
  s.p50_kl = Percentile(kl, 0.50);
  s.p90_kl = Percentile(kl, 0.90);
  s.p99_kl = Percentile(kl, 0.99);
  int64_t agreed = 0;
  for (bool a : agree) agreed += a ? 1 : 0;
  s.top1_agreement = agree.empty() ? 0.0 : static_cast<double>(agreed) / agree.size();
  return s;
}

absl::StatusOr<QualityStats> CompareLogits(const std::vector<std::vector<float>>& p,
                                           const std::vector<std::vector<float>>& q) {
  if (p.size() != q.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("compare logits: ", p.size(), " reference steps vs ", q.size()));
  }
  std::vector<double> kl;
  std::vector<bool> agree;
  for (size_t t = 0; t < p.size(); ++t) {
    if (p[t].size() != q[t].size() || p[t].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("compare logits: step ", t, " has ",
                                                     p[t].size(), " vs ", q[t].size(),
                                                     " logits"));
    }
    const int64_t vocab = static_cast<int64_t>(p[t].size());
    kl.push_back(KlDivergence(p[t].data(), q[t].data(), vocab));
    agree.push_back(Top1Agree(p[t].data(), q[t].data(), vocab));
  }
  return AggregateQuality(kl, agree);
}

QualityEngineFactory CpuQualityEngineFactory(int num_threads) {
  return [num_threads](std::shared_ptr<const ModelWeights> weights, kvcache::KvManager* manager,
                       int tp_size) -> absl::StatusOr<std::unique_ptr<GangEngine>> {
    EngineOptions options;
    options.tp_size = tp_size;
    options.num_threads = num_threads;
    if (manager != nullptr) {
      options.kv_factory = [manager](const kvcache::KvShape&, int rank) {
        return manager->CreateRankCache(rank);
      };
    }
    KVSCOPE_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine,
                             Engine::Create(std::move(weights), options));
    return std::unique_ptr<GangEngine>(std::move(engine));
  };
}

absl::StatusOr<QualityStats> EvaluateTeacherForced(std::shared_ptr<const ModelWeights> weights,
                                                   const KvManagerFactory& make_manager,
                                                   int tp_size, const std::vector<int32_t>& prompt,
                                                   int32_t num_steps, int num_threads) {
  return EvaluateTeacherForcedImpl(std::move(weights), make_manager, tp_size, prompt, num_steps,
                                   CpuQualityEngineFactory(num_threads), nullptr);
}

absl::StatusOr<QualityStats> EvaluateTeacherForced(
    std::shared_ptr<const ModelWeights> weights, const std::string& strategy,
    const std::map<std::string, std::string>& params, const kvcache::KvManagerContext& ctx,
    const std::vector<int32_t>& prompt, int32_t num_steps, int num_threads) {
  return EvaluateTeacherForced(std::move(weights), RegistryFactory(strategy, params, ctx),
                               std::max<int32_t>(1, ctx.geometry.tp_size), prompt, num_steps,
                               num_threads);
}

absl::StatusOr<double> Perplexity(std::shared_ptr<const ModelWeights> weights,
                                  const KvManagerFactory& make_manager, int tp_size,
                                  const std::vector<int32_t>& ids, int32_t prefill,
                                  int num_threads) {
  KVSCOPE_ASSIGN_OR_RETURN(std::unique_ptr<kvcache::KvManager> manager, make_manager());
  if (manager == nullptr) return absl::InternalError("perplexity: the factory built no manager");
  return PerplexityImpl(std::move(weights), manager.get(), tp_size, ids, prefill,
                        CpuQualityEngineFactory(num_threads));
}

absl::StatusOr<double> Perplexity(std::shared_ptr<const ModelWeights> weights,
                                  const std::string& strategy,
                                  const std::map<std::string, std::string>& params,
                                  const kvcache::KvManagerContext& ctx,
                                  const std::vector<int32_t>& ids, int32_t prefill,
                                  int num_threads) {
  return Perplexity(std::move(weights), RegistryFactory(strategy, params, ctx),
                    std::max<int32_t>(1, ctx.geometry.tp_size), ids, prefill, num_threads);
}

absl::StatusOr<double> FullCachePerplexity(std::shared_ptr<const ModelWeights> weights,
                                           int tp_size, const std::vector<int32_t>& ids,
                                           int32_t prefill, int num_threads) {
  return PerplexityImpl(std::move(weights), nullptr, tp_size, ids, prefill,
                        CpuQualityEngineFactory(num_threads));
}

// ---- bench integration ----

bool IsLossyStrategy(const std::string& strategy) {
  return strategy == "h2o" || strategy == "streaming" || strategy == "streaming_llm" ||
         strategy == "streamingllm" || strategy == "infinigen";
}

absl::Status ValidateBenchQualityOptions(const BenchQualityOptions& o) {
  if (std::isnan(o.sample_rate) || o.sample_rate > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--quality-sample-rate must be in [0, 1], got ", o.sample_rate));
  }
  if (o.steps < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--quality-steps must be >= 1 (0 = default), got ", o.steps));
  }
  return absl::OkStatus();
}

absl::StatusOr<BenchQualityReport> MeasureBenchQuality(
    std::shared_ptr<const ModelWeights> weights, const std::string& strategy,
    const std::map<std::string, std::string>& params, const kvcache::KvManagerContext& ctx,
    const std::vector<RequestSpec>& workload, const BenchQualityOptions& options,
    std::vector<RequestRecord>* records) {
  KVSCOPE_RETURN_IF_ERROR(ValidateBenchQualityOptions(options));
  if (weights == nullptr) return absl::InvalidArgumentError("quality: no model weights");
  BenchQualityReport report;
  report.sample_rate =
      options.sample_rate >= 0 ? options.sample_rate : (IsLossyStrategy(strategy) ? 1.0 : 0.0);
  const int64_t context = std::min<int64_t>(
      weights->config.max_position_embeddings,
      ctx.max_model_len > 0 ? ctx.max_model_len : weights->config.max_position_embeddings);
  // Replays run one sequence alone: they measure what the strategy keeps, not whether the
  // run's memory holds a long sequence, so their pool holds at least one sequence of the
  // whole context (plus slack for block rounding).
  kvcache::KvManagerContext replay_ctx = ctx;
  replay_ctx.kv_memory_bytes = std::max<int64_t>(
      ctx.kv_memory_bytes, ctx.geometry.BytesPerToken() * (context + 64));
  const QualityEngineFactory base_engine = options.engine_factory
                                               ? options.engine_factory
                                               : CpuQualityEngineFactory(options.num_threads);
  const KvManagerFactory registry = RegistryFactory(
      strategy, params, replay_ctx, options.engine_factory ? options.host_kv_storage : true);
  // infinigen: the skew depends only on the model and the strategy's options, so the first
  // engine's calibration (engine/infinigen_calibration.h, a host forward pass) is handed to
  // every later manager instead of being redone per request.
  std::shared_ptr<const kvcache::InfinigenSkew> skew;
  const KvManagerFactory make_manager =
      [&]() -> absl::StatusOr<std::unique_ptr<kvcache::KvManager>> {
    KVSCOPE_ASSIGN_OR_RETURN(std::unique_ptr<kvcache::KvManager> manager, registry());
    auto* ig = dynamic_cast<kvcache::InfinigenKvManager*>(manager.get());
    if (ig != nullptr && skew != nullptr) KVSCOPE_RETURN_IF_ERROR(ig->SetSkew(skew));
    return manager;
  };
  const QualityEngineFactory make_engine =
      [&](std::shared_ptr<const ModelWeights> w, kvcache::KvManager* manager,
          int tp_size) -> absl::StatusOr<std::unique_ptr<GangEngine>> {
    KVSCOPE_ASSIGN_OR_RETURN(std::unique_ptr<GangEngine> engine,
                             base_engine(std::move(w), manager, tp_size));
    auto* ig = dynamic_cast<kvcache::InfinigenKvManager*>(manager);
    if (ig != nullptr && skew == nullptr) skew = ig->shared_skew();
    return engine;
  };
  const int tp = std::max<int32_t>(1, ctx.geometry.tp_size);
  // One full-cache engine for every request (built at the first one that needs it).
  std::unique_ptr<GangEngine> full_engine;
  absl::Status full_engine_status;
  auto full = [&]() -> absl::StatusOr<GangEngine*> {
    if (full_engine == nullptr && full_engine_status.ok()) {
      absl::StatusOr<std::unique_ptr<GangEngine>> made = make_engine(weights, nullptr, tp);
      if (made.ok()) {
        full_engine = std::move(*made);
      } else {
        full_engine_status = made.status();
      }
    }
    if (!full_engine_status.ok()) return full_engine_status;
    return full_engine.get();
  };

  // Prompts as served: later turns of a conversation prepend the earlier prompt and output.
  const size_t n = std::min(workload.size(), records->size());
  std::vector<std::vector<int32_t>> prompts(n);
  std::vector<bool> known(n, false);
  std::map<std::pair<int64_t, int32_t>, size_t> turn_index;
  for (size_t i = 0; i < n; ++i) {
    if (workload[i].conversation_id >= 0) {
      turn_index[{workload[i].conversation_id, workload[i].turn}] = i;
    }
  }
  for (const auto& [key, i] : turn_index) {  // in (conversation, turn) order
    const RequestSpec& r = workload[i];
    if (r.turn == 0) {
      prompts[i] = r.prompt;
      known[i] = true;
      continue;
    }
    auto prev = turn_index.find({key.first, r.turn - 1});
    if (prev == turn_index.end() || !known[prev->second]) continue;
    const size_t p = prev->second;
    prompts[i] = prompts[p];
    const auto& out = (*records)[p].output_ids;
    prompts[i].insert(prompts[i].end(), out.begin(), out.end());
    prompts[i].insert(prompts[i].end(), r.prompt.begin(), r.prompt.end());
    known[i] = true;
  }
  for (size_t i = 0; i < n; ++i) {
    if (workload[i].conversation_id < 0) {
      prompts[i] = workload[i].prompt;
      known[i] = true;
    }
  }

  // Seeded choice: one draw per request, independent of how the run went.
  std::mt19937_64 rng(options.seed ^ 0x9E3779B97F4A7C15ULL);
  for (size_t i = 0; i < n; ++i) {
    const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;
    if (!(u < report.sample_rate)) continue;
    RequestRecord& rec = (*records)[i];
    if (rec.input_tokens <= 0) continue;  // never started
    ++report.sampled;
    if (!known[i] || static_cast<int64_t>(prompts[i].size()) != rec.input_tokens) {
      report.warnings.push_back(
          absl::StrCat("request ", i, ": its served prompt could not be rebuilt"));
      continue;
    }
    int64_t steps = options.steps > 0 ? options.steps
                                      : std::min<int64_t>(64, workload[i].output_len);
    steps = std::min<int64_t>(steps, context - static_cast<int64_t>(prompts[i].size()) + 1);
    if (steps < 1) {
      report.warnings.push_back(absl::StrCat("request ", i, ": no room for a decode step"));
      continue;
    }
    absl::StatusOr<GangEngine*> full_cache = full();
    absl::StatusOr<QualityStats> q =
        full_cache.ok()
            ? EvaluateTeacherForcedImpl(weights, make_manager, tp, prompts[i],
                                        static_cast<int32_t>(steps), make_engine, *full_cache)
            : absl::StatusOr<QualityStats>(full_cache.status());
    if (!q.ok()) {
      report.warnings.push_back(absl::StrCat("request ", i, ": ", q.status().ToString()));
      continue;
    }
    rec.quality_mean_kl = q->mean_kl;
    rec.quality_top1_agreement = q->top1_agreement;
    ++report.measured;
  }

  if (!options.perplexity_ids.empty()) {
    std::vector<int32_t> ids = options.perplexity_ids;
    if (static_cast<int64_t>(ids.size()) > context) ids.resize(context);  // first window
    const int32_t prefill = std::clamp<int32_t>(options.perplexity_prefill, 1,
                                                static_cast<int32_t>(ids.size()) - 1);
    // The full cache's failure is an error (bad ids, text too short); the strategy's
    // refusal is reported, so that the run's results are still written.
    KVSCOPE_ASSIGN_OR_RETURN(GangEngine* const full_cache, full());
    KVSCOPE_ASSIGN_OR_RETURN(
        report.perplexity_full,
        PerplexityImpl(weights, nullptr, tp, ids, prefill, make_engine, full_cache));
    absl::StatusOr<double> ppl = [&]() -> absl::StatusOr<double> {
      KVSCOPE_ASSIGN_OR_RETURN(std::unique_ptr<kvcache::KvManager> manager, make_manager());
      return PerplexityImpl(weights, manager.get(), tp, ids, prefill, make_engine);
    }();
    if (ppl.ok()) {
      report.perplexity = *ppl;
    } else {
      report.perplexity_error = ppl.status().ToString();
    }
  }
  return report;
}

void ApplyQualityToSummary(const std::vector<RequestRecord>& records,
                           const BenchQualityReport& report, Summary* summary) {
  auto mean = [&](std::optional<double> RequestRecord::*field) -> std::optional<double> {
    double sum = 0;
    int64_t count = 0;
    for (const RequestRecord& r : records) {
      const std::optional<double>& v = r.*field;
      if (v.has_value() && std::isfinite(*v)) {
        sum += *v;
        ++count;
      }
    }
    if (count == 0) return std::nullopt;
    return sum / static_cast<double>(count);
  };
  summary->quality_mean_kl = mean(&RequestRecord::quality_mean_kl);
  summary->quality_top1_agreement = mean(&RequestRecord::quality_top1_agreement);
  summary->quality_perplexity = report.perplexity;
  summary->quality_perplexity_full = report.perplexity_full;
}

}  // namespace kvscope::engine

#include "engine/engine.h"

#include <omp.h>

#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/infinigen_calibration.h"
#include "kvcache/full_kv_cache.h"

namespace kvscope::engine {

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::shared_ptr<const ModelWeights> weights,
                                                       const EngineOptions& options) {
  KVSCOPE_RETURN_IF_ERROR(ValidateTensorParallelSize(weights->config, options.tp_size));
  if (options.block_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV block size must be positive, got ", options.block_size));
  }
  std::unique_ptr<Engine> engine(new Engine(std::move(weights), options));
  // Strategies with offline model-dependent setup (InfiniGen's skewing matrices).
  for (auto& cache : engine->caches_) {
    KVSCOPE_RETURN_IF_ERROR(PrepareInfinigen(*engine->weights_, *cache));
  }
  return engine;
}

Engine::Engine(std::shared_ptr<const ModelWeights> weights, const EngineOptions& options)
    : weights_(std::move(weights)), options_(options) {
  const int cores = options_.num_threads > 0
                        ? options_.num_threads
                        : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  threads_per_rank_ = std::max(1, cores / options_.tp_size);
  // Every op, GEMMs included (kernels/cpu/linear.cc), parallelizes with its rank's OpenMP
  // team of threads_per_rank_ threads.
  group_ = std::make_unique<LocalCommGroup>(options_.tp_size);
  for (int r = 0; r < options_.tp_size; ++r) {
    comms_.push_back(group_->ForRank(r));
    shards_.push_back(std::make_unique<ModelShard>(*weights_, r, options_.tp_size));
    const kvcache::KvShape shape = shards_.back()->kv_shape();
    if (options_.kv_factory) {
      caches_.push_back(options_.kv_factory(shape, r));
    } else {
      caches_.push_back(std::make_unique<kvcache::FullKvCache>(
          shape, kvcache::FullKvCache::Options{options_.block_size, options_.max_kv_tokens}));
    }
  }
}

Engine::~Engine() = default;

absl::StatusOr<ForwardOutput> Engine::Forward(absl::Span<const SeqInput> batch) {
  if (failed_) {
    return absl::FailedPreconditionError(
        "engine stopped after an earlier failure inside the forward pass; create a new one");
  }
  KVSCOPE_RETURN_IF_ERROR(ValidateSeqInputs(config(), batch));
  ForwardOutput out;
  const int tp = options_.tp_size;
  std::vector<absl::Status> status(tp);
  auto run_rank = [&](int r) {
    omp_set_num_threads(threads_per_rank_);
    status[r] = shards_[r]->Forward(batch, *caches_[r], *comms_[r], r == 0 ? &out : nullptr);
    // A failed rank must not leave the others waiting in a collective.
    if (!status[r].ok()) comms_[r]->Abort();
  };
  std::vector<std::thread> threads;
  for (int r = 1; r < tp; ++r) threads.emplace_back(run_rank, r);
  run_rank(0);
  for (std::thread& t : threads) t.join();
  absl::Status first;  // the first real error, not the "aborted" echo of other ranks
  bool aborted = false;
  for (const absl::Status& s : status) {
    if (absl::IsAborted(s)) {
      aborted = true;
    } else if (!s.ok() && first.ok()) {
      first = s;
    }
  }
  if (first.ok() && aborted) first = status[0];
  if (!first.ok()) {
    // A full cache is refused by PrepareStep on every rank before anything changes; any
    // other failure may leave the ranks' caches out of step.
    failed_ = aborted || !absl::IsResourceExhausted(first);
    return first;
  }
  return out;
}

void Engine::Release(int64_t seq_id) {
  for (auto& cache : caches_) cache->Release(seq_id);
}

}  // namespace kvscope::engine

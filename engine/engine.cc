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
  EngineOptions resolved = options;
  if (resolved.local_ranks == 0) resolved.local_ranks = resolved.tp_size - resolved.first_rank;
  if (resolved.first_rank < 0 || resolved.local_ranks < 1 ||
      resolved.first_rank + resolved.local_ranks > resolved.tp_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "engine ranks [", resolved.first_rank, ", ", resolved.first_rank + resolved.local_ranks,
        ") are not inside the tensor-parallel group of ", resolved.tp_size));
  }
  if (!resolved.comm_factory && resolved.local_ranks != resolved.tp_size) {
    return absl::InvalidArgumentError(
        "an engine running only some of the ranks needs a comm_factory for them");
  }
  std::unique_ptr<Engine> engine(new Engine(std::move(weights), resolved));
  if (resolved.comm_factory) {
    for (int i = 0; i < resolved.local_ranks; ++i) {
      KVSCOPE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm,
                               resolved.comm_factory(resolved.first_rank + i));
      engine->comms_.push_back(std::move(comm));
    }
  } else {
    engine->group_ = std::make_unique<LocalCommGroup>(resolved.tp_size);
    for (int r = 0; r < resolved.tp_size; ++r) engine->comms_.push_back(engine->group_->ForRank(r));
  }
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
  threads_per_rank_ = std::max(1, cores / options_.local_ranks);
  // Every op, GEMMs included (kernels/cpu/linear.cc), parallelizes with its rank's OpenMP
  // team of threads_per_rank_ threads. Communicators are made by Create.
  for (int r = options_.first_rank; r < options_.first_rank + options_.local_ranks; ++r) {
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
  const int local = options_.local_ranks;
  std::vector<absl::Status> status(local);
  // `i` indexes the local ranks; global rank first_rank + i.
  auto run_rank = [&](int i) {
    omp_set_num_threads(threads_per_rank_);
    const bool first = options_.first_rank + i == 0;
    status[i] = shards_[i]->Forward(batch, *caches_[i], *comms_[i], first ? &out : nullptr);
    // A failed rank must not leave the others waiting in a collective.
    if (!status[i].ok()) comms_[i]->Abort();
  };
  std::vector<std::thread> threads;
  for (int i = 1; i < local; ++i) threads.emplace_back(run_rank, i);
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

void Engine::AbortCollectives() {
  for (auto& comm : comms_) comm->Abort();
}

}  // namespace kvscope::engine
